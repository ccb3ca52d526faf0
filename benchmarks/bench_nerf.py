#!/usr/bin/env python
"""NeRF stage benchmark: seconds per training iteration and the known-answer score.

Part 1 times the training step in-process (render → reference-mesh loss → backward → Adam), after
a warm-up that fills the occupancy grid, at each resolution.
Part 2 (--full) trains configs/reconstruct-nerf.yaml through launch.py at each resolution and
scores the result on held-out turntable views (mask IoU, PSNR), with the wall time it took.

    python benchmarks/bench_nerf.py                    # part 1, CPU
    python benchmarks/bench_nerf.py --full --steps 600 # parts 1 and 2
    python benchmarks/bench_nerf.py --device cuda      # on a GPU
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lift3d.config import load_config  # noqa: E402
from lift3d.registry import find  # noqa: E402


def time_iterations(resolution: int, device: str, warmup: int, iters: int) -> tuple[float, float]:
    cfg = load_config(str(REPO / "configs/reconstruct-nerf.yaml"),
                      cli_args=[f"data.width={resolution}", f"data.height={resolution}"])
    datamodule = find(cfg.data_type)(cfg.data)
    system = find(cfg.system_type)(cfg.system).to(device)
    system.build_guidance()
    system.guidance.to(device)
    optimizer = torch.optim.Adam(system.parameters(), lr=1e-3)
    batches = iter(datamodule.train_dataloader())
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(warmup + iters):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in next(batches).items()}
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        system.renderer.do_update_step(0, step)
        out = system(batch)
        losses = system.guidance(out["comp_rgb"], batch=batch, render_out=out)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return sum(times) / len(times), peak


def train_and_score(resolution: int, steps: int) -> dict:
    from lift3d.evaluation import evaluate_against_reference

    root = Path(tempfile.mkdtemp(prefix="bench_nerf_"))
    start = time.time()
    subprocess.run(
        [sys.executable, str(REPO / "launch.py"), "--config", "configs/reconstruct-nerf.yaml", "--train",
         f"exp_root_dir={root}", f"data.width={resolution}", f"data.height={resolution}",
         f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "data.n_test_views=30",
         "trainer.enable_progress_bar=false"],
        cwd=REPO, check=True, capture_output=True,
    )
    elapsed = time.time() - start
    trial = next((root / "reconstruct-nerf").iterdir())
    scores = evaluate_against_reference(trial, n_views=8, resolution=resolution, elevation_deg=5.0)
    return {"wall_s": elapsed, **scores}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--full", action="store_true", help="also train through launch.py and score")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()

    print(f"device: {args.device}, torch threads: {torch.get_num_threads()}")
    print("| resolution | s/iteration | it/s | peak GPU GiB |")
    print("|---|---|---|---|")
    for res in args.resolutions:
        sec, peak = time_iterations(res, args.device, args.warmup, args.iters)
        print(f"| {res}² | {sec:.3f} | {1 / sec:.2f} | {peak:.2f} |", flush=True)
    if args.full:
        print(f"\nreconstruct-nerf through launch.py, {args.steps} steps, held-out views at elevation 5°:")
        print("| resolution | wall time (train + 30-frame test) | mask IoU | PSNR dB |")
        print("|---|---|---|---|")
        for res in args.resolutions:
            r = train_and_score(res, args.steps)
            print(f"| {res}² | {r['wall_s']:.0f} s | {r['mask_iou']:.3f} | {r['psnr']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
