#!/usr/bin/env python
"""Mesh-stage benchmarks: rasterization, marching tetrahedra, DMTet stage iteration time.

    python benchmarks/bench_mesh.py [--device cpu|cuda] [--quick]

Prints a table:
- rasterize (coverage + depth test) and the full render (rasterize + interpolate + antialias) of a
  UV sphere at 512² for ~10k and ~100k triangles, in ms;
- marching tetrahedra of a sphere SDF on generated grids (64 and 128: 1.6 M and 12.6 M tets), in ms;
- DMTet stage (tetrahedra-sdf-grid + mesh-rasterizer + reference-mesh guidance + normal
  consistency, Adam), seconds per iteration at reconstruct-dmtet.yaml's size (grid 64, 2 × 96²) and
  at Magic3D refine's (grid 128, 512²); plus peak memory on CUDA.
`--quick` skips the largest cases.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, repeat=3, warmup=1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def sphere_mesh(n_faces: int, device):
    import trimesh

    n = max(4, int(round(math.sqrt(n_faces / 4.0))))  # uv_sphere(count=[n, n]) has ≈ 4 n² faces
    s = trimesh.creation.uv_sphere(radius=0.5, count=[n, n])
    return (torch.tensor(s.vertices, dtype=torch.float32, device=device),
            torch.tensor(s.faces, dtype=torch.long, device=device))


def camera(size: int, device, elevation=20.0, azimuth=30.0):
    from lift3d.data.cameras import spherical_to_cartesian
    from lift3d.data.random_camera import camera_batch

    e, a, d = (torch.tensor([float(x)]) for x in (elevation, azimuth, 2.0))
    pos = spherical_to_cartesian(e, a, d)
    b = camera_batch(pos, torch.tensor([math.radians(45.0)]), size, size, pos.clone(), e, a, d)
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}


def bench_rasterize(device, sizes):
    from lift3d.ops.rasterize import edge_topology, rasterize, render_mesh_attributes

    rows = []
    mvp = camera(512, device)["mvp_mtx"]
    for n_faces in sizes:
        v, f = sphere_mesh(n_faces, device)
        clip = torch.einsum("bij,vj->bvi", mvp, torch.cat([v, torch.ones_like(v[:, :1])], -1))
        topo = edge_topology(f)
        t_r = timeit(lambda: rasterize(clip, f, (512, 512)), device)
        t_full = timeit(lambda: render_mesh_attributes(v, f, mvp, 512, 512, attrs={"n": v}, topology=topo), device)
        rows.append((f"rasterize 512² ({f.shape[0] / 1000:.0f}k tris)", t_r * 1e3, "ms"))
        rows.append((f"render 512² rast+interp+AA ({f.shape[0] / 1000:.0f}k tris)", t_full * 1e3, "ms"))
    return rows


def bench_marching_tets(device, resolutions):
    from lift3d.ops.marching_tets import marching_tets
    from lift3d.ops.tet_grid import make_tet_grid

    rows = []
    for res in resolutions:
        verts, tets = make_tet_grid(res, scale=2.0, device=device)
        sdf = verts.norm(dim=-1) - 0.5
        t = timeit(lambda: marching_tets(verts, sdf, tets), device, repeat=2)
        v, faces = marching_tets(verts, sdf, tets)
        rows.append((f"marching tets grid {res} ({tets.shape[0] / 1e6:.1f}M tets → {faces.shape[0] / 1000:.0f}k tris)", t * 1e3, "ms"))
        del verts, tets, sdf
    return rows


def dmtet_system(res: int, device):
    from omegaconf import OmegaConf

    from lift3d.registry import find

    cfg = OmegaConf.create({
        "geometry_type": "tetrahedra-sdf-grid",
        "geometry": {"isosurface_resolution": res, "shape_init": "mesh:load/shapes/capsule_bicolor.ply",
                     "pos_encoding_config": {"otype": "HashGrid", "n_levels": 12, "n_features_per_level": 2,
                                             "log2_hashmap_size": 16, "base_resolution": 16, "per_level_scale": 1.3}},
        "material_type": "no-material",
        "renderer_type": "mesh-rasterizer",
        "guidance_type": "reference-mesh-guidance",
        "guidance": {"mesh_path": "load/shapes/capsule_bicolor.ply"},
        "loss": {"lambda_mesh_mask": 1.0, "lambda_mesh_rgb": 0.2, "lambda_normal_consistency": 0.05},
        "optimizer": {"name": "Adam", "args": {"betas": [0.9, 0.99], "eps": 1e-15},
                      "params": {"geometry.sdf": {"lr": 0.002}, "geometry.deformation": {"lr": 0.01},
                                 "geometry.encoding": {"lr": 0.01}, "geometry.feature_network": {"lr": 0.001}}},
    })
    system = find("lift3d-system")(cfg).to(device)
    system.geometry.initialize_shape()
    system.build_guidance()
    return system


def bench_dmtet_stage(device, cases, iters=5):
    import logging

    from lift3d.systems.regularizers import compute_regularizers

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    rows = []
    for res, size, batch_size in cases:
        system = dmtet_system(res, device)
        system.train()
        optimizer = system.configure_optimizers()
        views = [camera(size, device, elevation=10.0 * k, azimuth=50.0 * k) for k in range(batch_size)]
        batch = {k: (torch.cat([v[k] for v in views]) if torch.is_tensor(views[0][k]) else views[0][k]) for k in views[0]}
        lambdas = system.lambdas()

        def step():
            out = system(batch)
            terms = dict(system.guidance(out["comp_rgb"], batch=batch, render_out=out))
            terms.update(compute_regularizers(out, lambdas))
            loss = sum(lambdas.get(k[len("loss_"):], 0.0) * v for k, v in terms.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = timeit(step, device, repeat=iters)
        peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda" else ""
        rows.append((f"DMTet stage iteration (grid {res}, {batch_size} × {size}²{peak})", t, "s/it"))
        del system, optimizer
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="skip the largest cases")
    args = parser.parse_args()
    device = torch.device(args.device)
    os.chdir(ROOT)
    rows = []
    rows += bench_rasterize(device, [10_000] if args.quick else [10_000, 100_000])
    rows += bench_marching_tets(device, [64] if args.quick else [64, 128])
    cases = [(64, 96, 2)] if args.quick else [(64, 96, 2), (128, 512, 1)]
    rows += bench_dmtet_stage(device, cases)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nlift3d mesh-stage benchmark — {name}, torch {torch.__version__}")
    width = max(len(r[0]) for r in rows)
    print(f"{'case':<{width}}  {'time':>10}")
    for label, value, unit in rows:
        print(f"{label:<{width}}  {value:>10.3f} {unit}")


if __name__ == "__main__":
    main()
