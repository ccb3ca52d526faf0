#!/usr/bin/env python
"""Seconds per USD guidance step: lift3d's call pattern against the original code's.

    python benchmarks/bench_usd.py                               # CPU, tiny random models
    python benchmarks/bench_usd.py --full-size --device cuda     # GPU, full-size random-weight SD 2.1-base + zero123-XL

A step is `usd-image-guidance` on a batch of B random-view renders (forward + backward into the
renders; rendering itself is not timed), with or without the reference-view delta term (B_r
reference renders). Two call patterns (docs/methods/usd.md §1):
  lift3d    only the predictions that are used: Zero-1-to-3 conditional (one UNet call, batch B) and
            SD unconditional on the same z_t (one call, batch B), the reference term's two SD
            unconditional predictions batched into that SD call when the latent sizes agree
            (tiny models; full size with reference_resolution 256), else one more SD call;
  original  every model with classifier-free guidance, half of it thrown away (the same models,
            the same guidance, only its `predictions` swapped): Zero-1-to-3 cond +
            uncond (batch 2B), SD cond + uncond (batch 2B); the reference term as two SD CFG calls
            (render, input; batch 2 B_r each). The reference-term pattern of the original is our
            reading of it; the novel-view rows are the spec's statement.
Both produce the same loss_usd (lambda = 0) — the original's extra predictions are discarded.
Tiny: 64² renders -> 8² latents everywhere. Full size: renders 256² -> zero123 32² latents; the
reference view at 512² -> SD 64² latents (the spec) or at 256² -> 32² (one SD call).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.bench_guidance import peak_memory_mb, time_calls, write_full_size  # noqa: E402

IMAGE = str(REPO / "load/images/blocks_rgba.png")


def original_predictions(guidance):
    """The original code's predictions for `guidance` (a usd-image-guidance): everything with CFG."""
    import torch

    def sd_cfg(z, t):  # SD cond + uncond in one call; the conditional half is discarded
        emb = guidance.uncond_embedding.expand(z.shape[0], -1, -1)
        eps = guidance.sd.predict_noise(torch.cat([z, z]), torch.cat([t, t]), torch.cat([emb, emb]))
        return eps.chunk(2)[1]

    def predictions(z_t, t, camera, extra_sd=None):
        eps_cond, _ = guidance.zero123.noise_predictions(z_t, t, camera, with_uncond=True)  # zero123 CFG, uncond discarded
        eps_uncond = sd_cfg(z_t, t)
        extra = None
        if extra_sd is not None:  # render and input in separate SD CFG calls
            z, tt = extra_sd
            extra = torch.cat([sd_cfg(part, tpart) for part, tpart in zip(z.chunk(2), tt.chunk(2))])
        return eps_cond, eps_uncond, extra

    return predictions


class CallCounter:
    def __init__(self, unet):
        self.batches = []
        self.handle = unet.register_forward_pre_hook(lambda m, a, k: self.batches.append(int(a[0].shape[0])), with_kwargs=True)


def bench(z123_path, sd_path, render, ref_render, ref_resolution, batch, ref_batch, iters, warmup, device, cache_dir):
    """One guidance (one set of models); the two call patterns swap its `predictions` and are timed
    interleaved (lift3d, original, lift3d, ...) so that machine noise hits both alike."""
    import statistics

    import torch

    from lift3d.registry import find

    cams = {"elevation": torch.linspace(0, 30, batch, device=device), "azimuth": torch.linspace(-90, 90, batch, device=device),
            "camera_distances": torch.full((batch,), 1.5, device=device)}
    guidance = find("usd-image-guidance")({
        "pretrained_model_name_or_path": str(z123_path), "sd_model_name_or_path": str(sd_path),
        "cond_image_path": IMAGE, "cond_elevation_deg": 15.0, "cond_azimuth_deg": 45.0, "cond_camera_distance": 1.5,
        "reference_resolution": ref_resolution, "cache_dir": str(cache_dir)}).to(device)
    patterns = {"lift3d": type(guidance).predictions.__get__(guidance), "original": original_predictions(guidance)}
    image = torch.rand(batch, render, render, 3, device=device, requires_grad=True)
    ref = torch.rand(ref_batch, ref_render, ref_render, 3, device=device, requires_grad=True)
    target = torch.rand(ref_batch, ref_render, ref_render, 3, device=device)

    def step(pattern, with_ref):
        guidance.predictions = patterns[pattern]
        image.grad = ref.grad = None
        out = guidance(image, cams, **({"reference_out": {"comp_rgb": ref}, "reference_image": target} if with_ref else {}))
        (out["loss_usd"] + (out["loss_usd_ref"] if with_ref else 0.0)).backward()

    rows = []
    for with_ref in (False, True):
        calls, times = {}, {p: [] for p in patterns}
        for pattern in patterns:
            counters = (CallCounter(guidance.zero123.pipe.unet), CallCounter(guidance.sd.unet))
            step(pattern, with_ref)
            calls[pattern] = [c.batches for c in counters]
            for c in counters:
                c.handle.remove()
            for _ in range(warmup):
                step(pattern, with_ref)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(iters):
            for pattern in patterns:
                times[pattern].append(time_calls(lambda: step(pattern, with_ref), 1, 0, device)[0] / 1000)
        for pattern in patterns:
            what = f"{pattern:8s} {'novel view + reference term' if with_ref else 'novel view only':28s}"
            rows.append((what, statistics.median(times[pattern]), min(times[pattern]), *calls[pattern], peak_memory_mb(device)))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="full-size random-weight SD 2.1-base / zero123-XL (GPU)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--batch", type=int, default=1, help="random views B")
    parser.add_argument("--ref-batch", type=int, default=1, help="reference views B_r")
    parser.add_argument("--reference-resolution", type=int, default=None,
                        help="SD VAE input of the reference term (full size: 512 = the spec, 256 = one SD call)")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory(prefix="lift3d-bench-usd-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        if args.full_size:
            sd_path, z_path = write_full_size(root, torch.float16 if device.type == "cuda" else torch.float32)
            render, ref_render, ref_res, iters = 256, 512, args.reference_resolution or 512, args.iters or 10
            kind = "full-size random-weight SD 2.1-base + zero123-XL"
        else:
            from lift3d.models.tiny_factory import make_tiny_sd, make_tiny_zero123

            sd_path, z_path = make_tiny_sd(root / "tiny-sd"), make_tiny_zero123(root / "tiny-zero123")
            render, ref_render, ref_res, iters = 64, 64, args.reference_resolution, args.iters or 20
            kind = "tiny random models (lift3d.models.tiny_factory)"
        build_s = time.perf_counter() - start
        rows = bench(z_path, sd_path, render, ref_render, ref_res, args.batch, args.ref_batch, iters, args.warmup,
                     device, root / "cache")

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"USD guidance step: {kind}; device {name}; torch {torch.__version__}; B={args.batch}, B_r={args.ref_batch}, "
          f"render {render}², reference {ref_render}² -> SD at {ref_res or 'native'}²; models written in {build_s:.1f} s")
    print(f"{'pattern  what':46s} {'s/step':>8s} {'best s':>8s} {'zero123 UNet batches':>21s} {'SD UNet batches':>16s} {'peak MB':>8s}")
    for what, med, best, zc, sc, mem in rows:
        print(f"{what:46s} {med:8.4f} {best:8.4f} {str(zc):>21s} {str(sc):>16s} {mem:8.0f}")
    lift = {r[0].split(None, 1)[1]: r[1] for r in rows if r[0].startswith("lift3d")}
    orig = {r[0].split(None, 1)[1]: r[1] for r in rows if r[0].startswith("original")}
    for key in lift:
        print(f"speed-up of lift3d's pattern, {key.strip()}: {orig[key] / lift[key]:.2f}x")
    print("s/step: median over the timed steps of forward + backward into the renders; peak MB: CUDA max allocated, "
          "or the process's peak RSS on CPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
