#!/usr/bin/env python
"""Kernel throughput: the Triton fast path vs the PyTorch reference, through the public entry points.

    python benchmarks/bench_kernels.py                  # CUDA when available: full sizes (the real figures)
    python benchmarks/bench_kernels.py --smoke          # tiny sizes; on CPU via TRITON_INTERPRET=1 (a smoke run:
                                                        # interpreter times say nothing about GPU speed)

Each row times one operation both ways on the same device and the same inputs -- the reference
forced with LIFT3D_DISABLE_TRITON=1, the fast path as users get it (lift3d.ops.fast_path) -- and
checks that the two agree (max relative error; exact equality for ray-marching samples and
rasterizer output). GPU times are medians over CUDA-event-timed repeats after a warm-up (which
includes Triton's JIT compilation); CPU times are medians of wall-clock repeats.

Full sizes (what a 512² patch-renderer NeRF step and a 512² mesh step do):
  hash grid   threestudio's default grid (16 levels x 2 features, 2^19 table), 2^18 points
              (forward; forward + backward to the table; forward + backward to table and points)
  compositing 32768 rays x 64 samples: weights fwd+bwd, and accumulate (rgb) fwd+bwd
  marching    32768 rays through a 32³ occupancy grid (the renderer's default) holding a sphere,
              512 steps across the box diagonal
  rasterize   a 160k-triangle sphere at 512², batch 1 and 4
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CPU: runs the kernels in Triton's interpreter)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per row (default 50 GPU, 1 CPU)")
    p.add_argument("--only", default="", help="comma-separated subset: hashgrid,composite,march,rasterize")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and (ARGS.device == "cpu" or (ARGS.device is None and ARGS.smoke)):
    # the interpreter must be chosen before triton is imported
    import torch as _torch

    if ARGS.device == "cpu" or not _torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["LIFT3D_TRITON_ON_CPU"] = "1"

import torch  # noqa: E402


@contextlib.contextmanager
def reference_only():
    old = os.environ.get("LIFT3D_DISABLE_TRITON")
    os.environ["LIFT3D_DISABLE_TRITON"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LIFT3D_DISABLE_TRITON", None)
        else:
            os.environ["LIFT3D_DISABLE_TRITON"] = old


def time_ms(fn, device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ----------------------------------------------------------------------------------- scenes
def hashgrid_case(device, smoke: bool):
    from lift3d.networks.hashgrid import HashGridEncoding

    if smoke:
        enc = HashGridEncoding(3, n_levels=4, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4,
                               per_level_scale=2.0)
        n = 256
    else:
        enc = HashGridEncoding(3)  # threestudio's default: 16 levels, 2^19, base 16, max res 4096
        n = 1 << 18
    enc = enc.to(device)
    with torch.no_grad():
        enc.params.uniform_(-1.0, 1.0)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(n, 3, generator=g).to(device)
    grad = torch.randn(n, enc.n_output_dims, generator=g).to(device)
    size = f"{n} pts, {enc.n_levels}x{enc.n_features_per_level}, 2^{enc.log2_hashmap_size}"

    def fwd():
        with torch.no_grad():
            return enc(x)

    def fwd_bwd():
        enc.params.grad = None
        enc(x).backward(grad)
        return enc.params.grad

    xg = x.clone().requires_grad_(True)

    def fwd_bwd_x():
        enc.params.grad = None
        xg.grad = None
        enc(xg).backward(grad)
        return torch.cat([enc.params.grad, xg.grad.reshape(-1)])

    return [("hashgrid fwd", size, fwd), ("hashgrid fwd+bwd (table)", size, fwd_bwd),
            ("hashgrid fwd+bwd (table, x)", size, fwd_bwd_x)]


def composite_case(device, smoke: bool):
    from lift3d.ops.volume_rendering import accumulate_along_rays, render_weight_from_density

    n_rays, per_ray = (48, 40) if smoke else (32768, 64)
    g = torch.Generator(device="cpu").manual_seed(1)
    counts = torch.randint(0, 2 * per_ray, (n_rays,), generator=g)
    ray = torch.repeat_interleave(torch.arange(n_rays), counts).to(device)
    S = ray.numel()
    ts = torch.rand(S, generator=g).to(device)
    te = ts + 0.01
    sig = (torch.rand(S, generator=g) * 20).to(device).requires_grad_(True)
    rgb = torch.rand(S, 3, generator=g).to(device).requires_grad_(True)
    cot = torch.randn(S, generator=g).to(device)
    cot_rgb = torch.randn(n_rays, 3, generator=g).to(device)
    size = f"{n_rays} rays, {S} samples"

    def weights():
        sig.grad = None
        w, _, _ = render_weight_from_density(ts, te, sig, ray, n_rays)
        w.backward(cot)
        return torch.cat([w.detach(), sig.grad])

    w0 = torch.rand(S, generator=g).to(device).requires_grad_(True)

    def accumulate():
        w0.grad = None
        rgb.grad = None
        out = accumulate_along_rays(w0, rgb, ray, n_rays)
        out.backward(cot_rgb)
        return torch.cat([out.detach().reshape(-1), w0.grad, rgb.grad.reshape(-1)])

    return [("composite weights fwd+bwd", size, weights), ("accumulate rgb fwd+bwd", size, accumulate)]


def march_case(device, smoke: bool):
    from lift3d.ops.occupancy_grid import OccupancyGrid
    from lift3d.ops.ray_marching import march_rays

    radius = 2.0
    n_side = 8 if smoke else 128
    res = 8 if smoke else 32
    grid = OccupancyGrid([-radius] * 3 + [radius] * 3, resolution=res).to(device)
    centers = grid.cell_centers().reshape(-1, 3)
    grid.binary.copy_((centers.norm(dim=-1) < 1.0).reshape(grid.binary.shape))
    # two 128² views (the patch renderer's low-res frame and patch), camera at distance 3.5
    ys, xs = torch.meshgrid(torch.linspace(-0.5, 0.5, n_side), torch.linspace(-0.5, 0.5, n_side), indexing="ij")
    d = torch.stack([xs, ys, -torch.ones_like(xs)], -1).reshape(-1, 3)
    d = torch.cat([d, d * torch.tensor([0.5, 0.5, 1.0])])
    o = torch.tensor([0.0, 0.0, 3.5]).expand_as(d).contiguous()
    o, d = o.to(device), d.to(device)
    step = 1.732 * 2 * radius / 512
    size = f"{o.shape[0]} rays, {res}³ grid"

    def march():
        gen = torch.Generator(device=device).manual_seed(0)
        return march_rays(o, d, grid.aabb, 0.0, 1e10, step, occupancy_grid=grid, stratified=True, generator=gen)

    return [("march_rays (occupancy grid)", size, march)]


def sphere_mesh(n_lat: int, n_lon: int):
    theta = torch.linspace(0, math.pi, n_lat + 1)[1:-1]
    phi = torch.linspace(0, 2 * math.pi, n_lon + 1)[:-1]
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    v = torch.stack([t.sin() * p.cos(), t.cos(), t.sin() * p.sin()], -1).reshape(-1, 3)
    v = torch.cat([v, torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])])
    faces = []
    idx = lambda i, j: i * n_lon + (j % n_lon)  # noqa: E731
    for i in range(n_lat - 2):
        for j in range(n_lon):
            faces.append([idx(i, j), idx(i + 1, j), idx(i + 1, j + 1)])
            faces.append([idx(i, j), idx(i + 1, j + 1), idx(i, j + 1)])
    top, bottom = v.shape[0] - 2, v.shape[0] - 1
    for j in range(n_lon):
        faces.append([top, idx(0, j + 1), idx(0, j)])
        faces.append([bottom, idx(n_lat - 2, j), idx(n_lat - 2, j + 1)])
    return v, torch.tensor(faces)


def rasterize_case(device, smoke: bool):
    from lift3d.ops.rasterize import rasterize

    n_lat, n_lon, H = (12, 16, 48) if smoke else (202, 400, 512)
    v, f = sphere_mesh(n_lat, n_lon)
    cases = []
    for B in ((1,) if smoke else (1, 4)):
        g = torch.Generator(device="cpu").manual_seed(B)
        vb = v[None] * 0.9 + torch.randn(B, 1, 3, generator=g) * 0.1
        f_ = 1.0 / math.tan(math.radians(25))
        pos = torch.stack([vb[..., 0] * f_, vb[..., 1] * f_, (vb[..., 2] - 3.0) * -1.02 - 0.2, -(vb[..., 2] - 3.0)], -1)
        pos, faces = pos.to(device), f.to(device)
        size = f"{f.shape[0]} tris, B={B}, {H}²"
        cases.append((f"rasterize B={B}", size, lambda pos=pos, faces=faces: rasterize(pos, faces, (H, H))))
    return cases


CASES = {"hashgrid": hashgrid_case, "composite": composite_case, "march": march_case, "rasterize": rasterize_case}


def main(args) -> int:
    from lift3d.ops.fast_path import describe, use_triton

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and not args.smoke:
        print("note: CPU without --smoke runs the interpreter at full size (hours); use --smoke on CPU")
        return 2
    if not use_triton(torch.zeros(1, device=device)):
        print(f"the fast path is off for {device} ({describe()}); nothing to compare")
        return 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    repeats = args.repeats or (50 if device.type == "cuda" else 1)
    warmup = 5 if device.type == "cuda" else 0
    only = [s for s in args.only.split(",") if s] or list(CASES)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter: smoke run)"
    print(f"kernel benchmark on {name}; torch {torch.__version__}; {describe()}")
    rows = []
    for key in only:
        for label, size, fn in CASES[key](device, args.smoke):
            fast_out = fn()
            with reference_only():
                ref_out = fn()
                ref_ms = time_ms(fn, device, repeats, warmup)
            fast_ms = time_ms(fn, device, repeats, warmup)
            if isinstance(ref_out, tuple) or (torch.is_tensor(ref_out) and not ref_out.is_floating_point()):
                check = "exact" if all(torch.equal(a, b) for a, b in zip(fast_out, ref_out)) else "MISMATCH"
            elif label.startswith("rasterize"):
                check = "exact" if torch.equal(fast_out, ref_out) else "MISMATCH"
            else:
                check = f"rel {rel_err(fast_out, ref_out):.1e}"
            rows.append((label, size, ref_ms, fast_ms, ref_ms / fast_ms, check))
            print(f"  done: {label}", flush=True)
    print()
    print(f"{'operation':30s} {'size':34s} {'reference ms':>13s} {'triton ms':>10s} {'speedup':>8s}  check")
    for label, size, ref_ms, fast_ms, speedup, check in rows:
        print(f"{label:30s} {size:34s} {ref_ms:13.3f} {fast_ms:10.3f} {speedup:7.1f}x  {check}")
    if device.type == "cpu":
        print("(CPU interpreter: the times only show the script runs; real figures need a CUDA GPU)")
    return 1 if any(r[-1] == "MISMATCH" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
