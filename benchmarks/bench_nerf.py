#!/usr/bin/env python
"""NeRF stage benchmark: seconds per training iteration and the known-answer score.

Part 1 times the training step in-process (render → reference-mesh loss → backward → Adam), after
a warm-up that fills the occupancy grid, at each resolution.
Part 2 (--full) trains configs/reconstruct-nerf.yaml through launch.py at each resolution and
scores the result on held-out turntable views (mask IoU, PSNR), with the wall time it took.

    python benchmarks/bench_nerf.py                    # part 1, CPU
    python benchmarks/bench_nerf.py --full --steps 600 # parts 1 and 2
    python benchmarks/bench_nerf.py --device cuda      # on a GPU
    python benchmarks/bench_nerf.py --compare 3        # reference kernels vs default path, interleaved

--compare N (issue 20): before/after on the same machine in one run. Each measurement is a fresh
subprocess; the per-level PyTorch reference kernels (LIFT3D_REFERENCE_KERNELS=1, the code before
the CPU speed-up) and the default path alternate N times per resolution, so a load change on a
shared machine hits both alike. Prints every run with the 1-minute load average, then the medians
and their ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
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


def _one_run(resolution: int, reference: bool, warmup: int, iters: int, threads: int) -> float:
    """s/iteration of one fresh process (reference kernels or the default path), CPU."""
    env = dict(os.environ, LIFT3D_REFERENCE_KERNELS="1" if reference else "0")
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--device", "cpu", "--resolutions", str(resolution),
         "--warmup", str(warmup), "--iters", str(iters)] + (["--threads", str(threads)] if threads else []),
        cwd=REPO, env=env, check=True, capture_output=True, text=True,
    ).stdout
    row = [line for line in out.splitlines() if line.startswith(f"| {resolution}²")][-1]
    return float(row.split("|")[2])


def compare(resolutions: list[int], rounds: int, warmup: int, iters: int, threads: int) -> None:
    print(f"before = LIFT3D_REFERENCE_KERNELS=1 (per-level reference), after = default path; "
          f"{warmup} warm-up + {iters} timed iterations per run, {rounds} interleaved rounds, "
          f"{threads or torch.get_num_threads()} torch threads")
    print("| resolution | round | path | s/iteration | load average (1 min) |")
    print("|---|---|---|---|---|")
    summary = []
    for res in resolutions:
        times: dict[bool, list[float]] = {True: [], False: []}
        for r in range(rounds):
            order = (True, False) if r % 2 == 0 else (False, True)  # alternate which goes first
            for reference in order:
                sec = _one_run(res, reference, warmup, iters, threads)
                times[reference].append(sec)
                label = "before" if reference else "after"
                print(f"| {res}² | {r + 1} | {label} | {sec:.3f} | {os.getloadavg()[0]:.2f} |", flush=True)
        before, after = statistics.median(times[True]), statistics.median(times[False])
        summary.append((res, before, after))
    print("\n| resolution | before s/it (median) | after s/it (median) | speed-up |")
    print("|---|---|---|---|")
    for res, before, after in summary:
        print(f"| {res}² | {before:.3f} | {after:.3f} | {before / after:.2f}× |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--full", action="store_true", help="also train through launch.py and score")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--compare", type=int, default=0, metavar="ROUNDS",
                        help="CPU: reference kernels vs default path, ROUNDS interleaved fresh processes each")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare:
        compare(args.resolutions, args.compare, args.warmup, args.iters, args.threads)
        return

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
