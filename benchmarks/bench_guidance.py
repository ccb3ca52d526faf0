#!/usr/bin/env python
"""Milliseconds per guidance call (forward + backward into the render) and peak memory.

    python benchmarks/bench_guidance.py                         # CPU, tiny random models (seconds)
    python benchmarks/bench_guidance.py --full-size --device cuda   # GPU, full-size random-weight models
    python benchmarks/bench_guidance.py --full-size --dry-run   # only build the full-size configs, count parameters

Tiny models come from lift3d.models.tiny_factory. `--full-size` builds Stable Diffusion 2.1-base
(UNet, VAE, OpenCLIP ViT-H text tower) and Zero-1-to-3 XL (8-channel SD 1.x UNet, VAE, CLIP
ViT-L/14 image tower, camera projection) from their published config values with random weights
(no download; compute does not depend on weight values, docs/DESIGN.md "Models and weights"), writes
them in the diffusers folder layout (fp16 on GPU) and loads them through the same guidance classes
and `from_pretrained` calls as training. Each guidance is timed on renders of the size training
feeds it (SD: 512² -> 64² latents; Zero-1-to-3: 256² -> 32² latents; tiny: 64² -> 8²).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# ------------------------------------------------------------------ full-size configs (published values)
SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    norm_num_groups=32, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
)
ZERO123_XL_UNET = dict(SD21_BASE_UNET, sample_size=32, in_channels=8, cross_attention_dim=768,
                       attention_head_dim=8, use_linear_projection=False)
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, act_fn="silu",
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215,
)
OPENCLIP_H_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                       num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512)
CLIP_L14_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
# parameter counts of the released models, to check the configs above (millions)
EXPECTED_PARAMS_M = {"sd.unet": 865.9, "sd.vae": 83.65, "sd.text_encoder": 340.4,
                     "zero123.unet": 859.5, "zero123.vae": 83.65, "zero123.image_encoder": 304.0,
                     "zero123.clip_camera_projection": 0.593}


def full_size_modules(meta: bool = False) -> dict:
    """name -> nn.Module of every full-size component (on the meta device when `meta`: no memory)."""
    import contextlib

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    from extern.zero123.pipeline import CCProjection

    ctx = torch.device("meta") if meta else contextlib.nullcontext()
    with ctx:
        return {
            "sd.unet": UNet2DConditionModel(**SD21_BASE_UNET),
            "sd.vae": AutoencoderKL(**SD_VAE),
            "sd.text_encoder": CLIPTextModel(CLIPTextConfig(**OPENCLIP_H_TEXT)),
            "zero123.unet": UNet2DConditionModel(**ZERO123_XL_UNET),
            "zero123.vae": AutoencoderKL(**dict(SD_VAE, sample_size=256)),
            "zero123.image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_L14_VISION)),
            "zero123.clip_camera_projection": CCProjection(embedding_dim=768, additional_embeddings=4),
        }


def parameter_counts(meta: bool = True) -> dict[str, int]:
    return {name: sum(p.numel() for p in m.parameters()) for name, m in full_size_modules(meta=meta).items()}


def write_full_size(root: Path, dtype) -> tuple[Path, Path]:
    """Random-weight SD 2.1-base and zero123-XL folders in the diffusers layout; returns (sd, zero123)."""
    import json

    import torch
    from diffusers import DDIMScheduler, DDPMScheduler
    from transformers import CLIPImageProcessor

    from extern.zero123.pipeline import zero123_model_index
    from lift3d.models.tiny_factory import SD_SCHEDULE, _write_tokenizer, _write_tokenizer_files

    torch.manual_seed(0)
    modules = full_size_modules(meta=False)
    sd, z123 = root / "sd21-base-random", root / "zero123-xl-random"
    for name, module in modules.items():
        folder = (sd if name.startswith("sd.") else z123) / name.split(".", 1)[1]
        (module.to(dtype) if dtype != torch.float32 else module).save_pretrained(folder)
    del modules
    tokenizer = _write_tokenizer(sd / "tokenizer", pad_token="!")  # the small hand-made vocab
    tokenizer.save_pretrained(sd / "tokenizer")  # tokenizer_config.json (model_max_length 77)
    if not (sd / "tokenizer" / "merges.txt").is_file():
        _write_tokenizer_files(sd / "tokenizer")
    cfg_path = sd / "text_encoder" / "config.json"  # token ids of the small hand-made vocab
    cfg = json.loads(cfg_path.read_text())
    cfg.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    cfg_path.write_text(json.dumps(cfg))
    DDPMScheduler(**SD_SCHEDULE).save_pretrained(sd / "scheduler")
    (sd / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDPMScheduler"],
    }))
    DDIMScheduler(**SD_SCHEDULE, set_alpha_to_one=False).save_pretrained(z123 / "scheduler")
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                       image_mean=[0.48145466, 0.4578275, 0.40821073],
                       image_std=[0.26862954, 0.26130258, 0.27577711]).save_pretrained(z123 / "feature_extractor")
    (z123 / "model_index.json").write_text(json.dumps(zero123_model_index()))
    return sd, z123


# ------------------------------------------------------------------ timing
def peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB -> MB (process peak RSS)


def time_calls(fn, iters: int, warmup: int, device) -> tuple[float, float]:
    """(median ms, min ms) of fn() over `iters` calls after `warmup` calls."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def bench(sd_path: Path, z123_path: Path, render_sd: int, render_z123: int, batch: int, iters: int, warmup: int,
          device, cache_dir: Path) -> list[tuple]:
    import torch

    from lift3d.registry import find

    rows = []
    cams = {"elevation": torch.linspace(0, 30, batch, device=device), "azimuth": torch.linspace(-90, 90, batch, device=device),
            "camera_distances": torch.full((batch,), 1.5, device=device)}

    start = time.perf_counter()
    processor = find("stable-diffusion-prompt-processor")({
        "prompt": "a DSLR photo of a hamburger", "pretrained_model_name_or_path": str(sd_path), "cache_dir": str(cache_dir)})
    rows.append(("prompt processor, encode 6 prompts (cold cache)", (time.perf_counter() - start) * 1000, None, None))
    prompt_utils = processor()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sd = find("stable-diffusion-guidance")({"pretrained_model_name_or_path": str(sd_path), "guidance_scale": 100.0}).to(device)
    image = torch.rand(batch, render_sd, render_sd, 3, device=device, requires_grad=True)

    def sd_call():
        image.grad = None
        sd(image, cams, prompt_utils=prompt_utils)["loss_sds"].backward()

    med, best = time_calls(sd_call, iters, warmup, device)
    rows.append((f"stable-diffusion-guidance, render {render_sd}² -> latents {sd.latent_resolution}², B={batch}", med, best, peak_memory_mb(device)))
    del sd

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    z = find("zero123-guidance")({"pretrained_model_name_or_path": str(z123_path),
                                  "cond_image_path": str(REPO / "load/images/capsule_rgba.png")}).to(device)
    image = torch.rand(batch, render_z123, render_z123, 3, device=device, requires_grad=True)

    def z_call():
        image.grad = None
        z(image, cams)["loss_sds"].backward()

    med, best = time_calls(z_call, iters, warmup, device)
    rows.append((f"zero123-guidance, render {render_z123}² -> latents {z.latent_resolution}², B={batch}", med, best, peak_memory_mb(device)))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="full-size random-weight SD 2.1-base / zero123-XL (GPU)")
    parser.add_argument("--dry-run", action="store_true", help="with --full-size: build the configs on the meta device only")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models are fastest on 1)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.full_size and args.dry_run:
        start = time.perf_counter()
        counts = parameter_counts(meta=True)
        print(f"full-size configs built on the meta device in {time.perf_counter() - start:.1f} s (no weights)")
        print(f"{'component':34s} {'params (M)':>11s} {'released (M)':>13s} {'fp16 MB':>9s}")
        for name, n in counts.items():
            print(f"{name:34s} {n / 1e6:11.2f} {EXPECTED_PARAMS_M[name]:13.2f} {n * 2 / 2**20:9.0f}")
        return 0

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory(prefix="lift3d-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        if args.full_size:
            sd_path, z_path = write_full_size(root, torch.float16 if device.type == "cuda" else torch.float32)
            render_sd, render_z, iters = 512, 256, args.iters or 10
            kind = "full-size random-weight SD 2.1-base / zero123-XL"
        else:
            from lift3d.models.tiny_factory import make_tiny_sd, make_tiny_zero123

            sd_path, z_path = make_tiny_sd(root / "tiny-sd"), make_tiny_zero123(root / "tiny-zero123")
            render_sd, render_z, iters = 64, 64, args.iters or 20
            kind = "tiny random models (lift3d.models.tiny_factory)"
        build_s = time.perf_counter() - start
        rows = bench(sd_path, z_path, render_sd, render_z, args.batch, iters, args.warmup, device, root / "cache")

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"guidance benchmark: {kind}; device {name}; torch {torch.__version__}; models written in {build_s:.1f} s")
    print(f"{'what':66s} {'ms/call':>9s} {'best ms':>9s} {'peak MB':>9s}")
    for what, med, best, mem in rows:
        fmt = lambda v, f: f"{v:{f}}" if v is not None else "-"  # noqa: E731
        print(f"{what:66s} {fmt(med, '9.1f'):>9s} {fmt(best, '9.1f'):>9s} {fmt(mem, '9.0f'):>9s}")
    print("ms/call: median of forward + backward into the render (loss_sds.backward()); "
          "peak MB: CUDA max allocated, or the process's peak RSS on CPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
