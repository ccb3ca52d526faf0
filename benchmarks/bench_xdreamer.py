#!/usr/bin/env python
"""Step time and memory of X-Dreamer's guidance (CG-LoRA, AMA) against plain SDS.

    python benchmarks/bench_xdreamer.py                                # CPU, tiny random SD (seconds)
    python benchmarks/bench_xdreamer.py --full-size --device cuda      # GPU, full-size random-weight SD 2.1-base
    python benchmarks/bench_xdreamer.py --full-size --dry-run          # only count CG-LoRA parameters (meta device)

One "step" is one guidance call on a render plus the backward pass of the loss the system would
take, the way `lift3d-system` trains:
  sds              stable-diffusion-guidance: loss_sds (no autograd through the UNet)
  cg-lora          xdreamer-guidance before ama_start_step: CG-LoRA in the UNet's forward, loss_sds
  cg-lora+ama      xdreamer-guidance with AMA: UNet forward with autograd, 7 (tiny: 3) EOS maps,
                   loss_sds + 0.1 loss_ama back-propagated into CG-LoRA, the camera encoder, the
                   latents (VAE encoder) and the mask
  cg-lora+ama, mask only   the same with ama_grad_to_latents=false (no gradient through the latents)
Renders are 512² (full size: 64² latents) or 64² (tiny: 8² latents); batch size --batch.
Timing: the configurations run interleaved (round-robin), so a busy machine slows them alike.
Memory: peak CUDA memory per configuration on GPU; on CPU each configuration runs once more in its
own process and the peak RSS of that process is reported. Full-size models are written once (SD 2.1-base
configuration with random weights, fp16 on GPU; compute does not depend on weight values).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.bench_guidance import OPENCLIP_H_TEXT, SD21_BASE_UNET, SD_VAE  # noqa: E402
from benchmarks.bench_guidance import peak_memory_mb as _peak_memory_mb  # noqa: E402


def peak_memory_mb(device) -> float:
    """Peak CUDA memory, or on CPU this process's peak RSS (VmHWM: unlike ru_maxrss it does not carry
    the parent's peak across fork + exec)."""
    if device.type == "cpu":
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
    return _peak_memory_mb(device)

# name -> (guidance, config overrides of xdreamer-guidance applied before the step)
CONFIGS = {
    "sds": ("stable-diffusion-guidance", {}),
    "cg-lora": ("xdreamer-guidance", {"ama_start_step": None}),
    "cg-lora+ama": ("xdreamer-guidance", {"ama_start_step": 0, "ama_grad_to_latents": True}),
    "cg-lora+ama, mask only": ("xdreamer-guidance", {"ama_start_step": 0, "ama_grad_to_latents": False}),
}


def write_full_size_sd(root: Path, dtype) -> Path:
    """Random-weight SD 2.1-base (UNet, VAE, OpenCLIP-H text tower, small tokenizer, DDPM) in the diffusers layout."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lift3d.models.tiny_factory import SD_SCHEDULE, _write_tokenizer, _write_tokenizer_files

    out = root / "sd21-base-random"
    if (out / "model_index.json").is_file():
        return out
    torch.manual_seed(0)
    tokenizer = _write_tokenizer(out / "tokenizer", pad_token="!")
    tokenizer.save_pretrained(out / "tokenizer")
    if not (out / "tokenizer" / "merges.txt").is_file():
        _write_tokenizer_files(out / "tokenizer")
    text = CLIPTextConfig(**dict(OPENCLIP_H_TEXT, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id))
    for name, module in (("unet", UNet2DConditionModel(**SD21_BASE_UNET)), ("vae", AutoencoderKL(**SD_VAE)),
                         ("text_encoder", CLIPTextModel(text))):
        module.to(dtype).save_pretrained(out / name)
        del module
    DDPMScheduler(**SD_SCHEDULE).save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDPMScheduler"],
    }))
    return out


class Bench:
    """Both guidances built once (one plain SD, one xdreamer whose AMA switches are set per configuration),
    plus a render, a soft disc mask and cameras; `step(name)` runs one training step of a configuration."""

    def __init__(self, sd_path: Path, render: int, batch: int, device_name: str, cache_dir: Path, names: list[str]) -> None:
        import torch

        from lift3d.plugins import load_plugins
        from lift3d.registry import find

        load_plugins()
        self.device = device = torch.device(device_name)
        torch.manual_seed(0)
        self.prompt_utils = find("stable-diffusion-prompt-processor")({
            "prompt": "a DSLR photo of a hamburger", "pretrained_model_name_or_path": str(sd_path),
            "cache_dir": str(cache_dir), "overhead_threshold": 90.0})()
        kinds = {CONFIGS[n][0] for n in names}
        self.guidances = {kind: find(kind)({"pretrained_model_name_or_path": str(sd_path), "guidance_scale": 100.0}).to(device)
                          for kind in sorted(kinds)}
        self.cams = {
            "elevation": torch.linspace(0, 30, batch, device=device), "azimuth": torch.linspace(-90, 90, batch, device=device),
            "camera_distances": torch.full((batch,), 3.0, device=device),
            "camera_positions": torch.randn(batch, 3, device=device), "fovy": torch.full((batch,), 0.6, device=device),
        }
        self.image = torch.rand(batch, render, render, 3, device=device, requires_grad=True)
        lin = torch.linspace(-1, 1, render, device=device)
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        mask = torch.sigmoid(20 * (0.5 - (xx**2 + yy**2).sqrt()))[None, ..., None].expand(batch, -1, -1, -1).contiguous()
        self.mask = mask.requires_grad_(True)
        xd = self.guidances.get("xdreamer-guidance")
        self.lora = xd.trainable_modules() if xd is not None else None

    def step(self, name: str) -> None:
        kind, overrides = CONFIGS[name]
        guidance = self.guidances[kind]
        for key, value in overrides.items():
            setattr(guidance.cfg, key, value)
        params = [self.image, self.mask] + (list(self.lora.parameters()) if self.lora is not None else [])
        for p in params:
            p.grad = None
        out = guidance(self.image, self.cams, prompt_utils=self.prompt_utils,
                       render_out={"opacity": self.mask, "comp_normal": self.image})
        (out["loss_sds"] + 0.1 * out.get("loss_ama", 0.0)).backward()


def measure(bench: "Bench", names: list[str], iters: int, warmup: int) -> dict[str, dict]:
    """Per configuration: median / min ms and peak memory, the configurations interleaved round-robin
    (so that a busy machine slows them alike)."""
    import time

    import torch

    device = bench.device
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks = {n: 0.0 for n in names}
    for it in range(warmup + iters):
        for name in names:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            bench.step(name)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if it >= warmup:
                times[name].append((time.perf_counter() - start) * 1000)
                peaks[name] = max(peaks[name], peak_memory_mb(device))
    return {n: {"config": n, "median_ms": statistics.median(times[n]), "min_ms": min(times[n]), "peak_mb": peaks[n]}
            for n in names}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="full-size random-weight SD 2.1-base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--render", type=int, default=None, help="render side (default 512 full size, 64 tiny)")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--model-dir", default=None, help="where to write/reuse the models (default: a temp dir)")
    parser.add_argument("--dry-run", action="store_true", help="full size: count CG-LoRA parameters only")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one configuration, JSON out (CPU memory)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))))
    if args.dry_run:
        from diffusers import UNet2DConditionModel

        from custom.xdreamer.attention_capture import last_cross_attention_per_block
        from custom.xdreamer.cg_lora import CGLoRA

        with torch.device("meta"):
            unet = UNet2DConditionModel(**SD21_BASE_UNET)
        lora = CGLoRA.for_unet(unet)
        print(f"SD 2.1-base CG-LoRA: {sum(p.numel() for p in lora.adapter_parameters()):,} adapter parameters "
              f"({len(lora.adapters)} cross-attentions x 4 projections), camera encoder "
              f"{sum(p.numel() for p in lora.camera_encoder.parameters()):,}; AMA maps: {len(last_cross_attention_per_block(unet))}")
        return 0

    render = args.render or (512 if args.full_size else 64)
    iters = args.iters or (5 if args.full_size else 10)
    model_dir = Path(args.model_dir) if args.model_dir else Path(tempfile.mkdtemp(prefix="lift3d-bench-"))
    model_dir.mkdir(parents=True, exist_ok=True)
    if args.full_size:
        sd_path = write_full_size_sd(model_dir, torch.float16 if args.device.startswith("cuda") else torch.float32)
    else:
        from lift3d.models.tiny_factory import make_tiny_sd

        sd_path = model_dir / "tiny-sd"
        if not (sd_path / "model_index.json").is_file():
            make_tiny_sd(sd_path, seed=0)
    cache = model_dir / "text-cache"

    names = list(CONFIGS)
    if args.only:  # one configuration in this process: its peak RSS is that configuration's (CPU memory)
        bench = Bench(sd_path, render, args.batch, args.device, cache, [args.only])
        print(json.dumps(measure(bench, [args.only], 1, args.warmup)[args.only]))
        return 0
    peaks = {}
    if args.device == "cpu":  # process peak RSS cannot be reset: one fresh process per configuration, run
        for name in names:    # while this process is still small
            cmd = [sys.executable, __file__, "--only", name, "--device", "cpu", "--batch", str(args.batch),
                   "--render", str(render), "--warmup", "1", "--model-dir", str(model_dir)]
            if args.full_size:
                cmd.append("--full-size")
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            peaks[name] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]
    bench = Bench(sd_path, render, args.batch, args.device, cache, names)
    results = measure(bench, names, iters, args.warmup)
    for name, peak in peaks.items():
        results[name]["peak_mb"] = peak
    lora_params = sum(p.numel() for p in bench.lora.parameters())
    n_maps = len(bench.guidances["xdreamer-guidance"].store.layers)
    rows = [results[n] for n in names]
    base = rows[0]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    size = "full-size SD 2.1-base (random weights)" if args.full_size else "tiny SD"
    print(f"X-Dreamer guidance step (call + backward), {size}, render {render}², batch {args.batch}, {device}")
    print(f"{'configuration':<26} {'median ms':>10} {'min ms':>9} {'x sds':>7} {'peak MB':>9} {'+MB':>8}")
    for r in rows:
        print(f"{r['config']:<26} {r['median_ms']:>10.1f} {r['min_ms']:>9.1f} {r['median_ms'] / base['median_ms']:>7.2f} "
              f"{r['peak_mb']:>9.0f} {r['peak_mb'] - base['peak_mb']:>8.0f}")
    print(f"CG-LoRA + camera encoder parameters: {lora_params:,}; AMA maps per step: {n_maps}; "
          f"configurations interleaved, {iters} timed steps each after {args.warmup} warm-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
