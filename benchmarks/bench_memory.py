"""Memory of the shipped configs (issue #24): lift3d's pre-flight estimate next to the measured peak.

    python benchmarks/bench_memory.py                      # every shipped config's estimate + the measured five
    python benchmarks/bench_memory.py --estimates-only     # the estimate table alone (seconds)
    python benchmarks/bench_memory.py --measure usd-patch --eval-sizes 128 256 512   # usd-patch at several eval sizes
    python benchmarks/bench_memory.py --eval-view 128 256 512 [--budget N]  # usd-patch's evaluation view alone

Measured: one training step, one validation view and one test view through launch.py at the config's
own sizes, with tiny random diffusion models (lift3d.models.tiny_factory, the same classes and folder
layout as the real ones) — everything else as shipped. Each measurement runs in a subprocess of its
own and reports that process's peak resident set (VmHWM from /proc/self/status, the kernel's
high-water mark; ru_maxrss as a cross-check), so runs do not share an allocator. With a GPU,
`torch.cuda.max_memory_allocated` is reported too (benchmarks/gpu_check.sh). Stages that convert a
previous stage's geometry get a small, unmeasured precursor run first.

Runs take minutes each on 2 CPU cores; run one benchmark at a time (each measurement holds the
memory it measures).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ONE_STEP = ["trainer.max_steps=1", "trainer.val_check_interval=1", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "checkpoint.every_n_train_steps=1", "trainer.enable_progress_bar=false",
            "use_timestamp=false"]
SMALL_NERF = ["system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=12"]

# config name -> (config path, needs: "sd" | "sd+zero123", precursor stages [(config, overrides)])
MEASURED = {
    "usd-patch": ("custom/usd/configs/usd-patch.yaml", "sd+zero123", []),
    "usd-text-to-3D-patch": ("custom/usd/configs/usd-text-to-3D-patch.yaml", "sd", []),
    "usd-text-to-3D-texture": ("custom/usd/configs/usd-text-to-3D-texture.yaml", "sd", [
        ("custom/usd/configs/usd-text-to-3D-patch.yaml", [*SMALL_NERF, "data.width=32", "data.height=32",
         "data.eval_width=32", "data.eval_height=32", "system.renderer.base_renderer.num_samples_per_ray=32",
         "system.renderer.patch_size=16"]),
        ("custom/usd/configs/usd-text-to-3D-geometry.yaml", ["data.width=32", "data.height=32", "data.eval_width=32",
         "data.eval_height=32", "system.geometry.convert_threshold=5.0"]),
    ]),
    "xdreamer-geometry": ("custom/xdreamer/configs/xdreamer-geometry.yaml", "sd", []),
    "magic3d-refine-sd": ("configs/magic3d-refine-sd.yaml", "sd", [
        ("configs/magic3d-coarse-sd.yaml", [*SMALL_NERF, "data.width=32", "data.height=32", "data.eval_width=32",
         "data.eval_height=32", "system.renderer.num_samples_per_ray=32"]),
    ]),
}


def shipped_configs() -> list[Path]:
    found = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "custom").glob("*/configs/*.yaml"))
    return [p for p in found if "view-distillation" not in p.name]  # not a launch.py experiment


def model_overrides(needs: str, models: dict, work: Path) -> list[str]:
    out = [f"system.prompt_processor.pretrained_model_name_or_path={models['sd']}",
           f"system.prompt_processor.cache_dir={work / 'cache'}", "system.prompt_processor.prompt=a red car"]
    if needs == "sd+zero123":  # image-to-3D: no prompt processor model
        out = [f"system.guidance.pretrained_model_name_or_path={models['zero123']}",
               f"system.guidance.sd_model_name_or_path={models['sd']}", f"system.guidance.cache_dir={work / 'cache'}"]
    else:
        out.append(f"system.guidance.pretrained_model_name_or_path={models['sd']}")
    return out


def peak_rss_mb() -> tuple[float, float]:
    status = Path("/proc/self/status").read_text()
    hwm = float(status.split("VmHWM:")[1].split()[0]) / 1024.0
    return hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_one(argv: list[str]) -> dict:
    """Runs launch.py's main in this (fresh) process; its peak RSS is the measurement."""
    import launch

    rc = launch.main(argv)
    hwm, maxrss = peak_rss_mb()
    out = {"rc": rc, "peak_rss_mb": hwm, "ru_maxrss_mb": maxrss}
    import torch

    if torch.cuda.is_available():
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_subprocess(argv: list[str], timeout: int = 3600) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, __file__, "--measure-one", json.dumps(argv)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("MEASURED ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"launch.py {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("MEASURED "):])
    est = [l for l in (proc.stdout + proc.stderr).splitlines() if "memory estimate" in l]
    result["estimate_line"] = est[0] if est else ""
    return result


def eval_view_one(size: int, budget: int) -> dict:
    """usd-patch's geometry (blob init) + patch renderer as shipped, one size² evaluation view from
    the reference camera (distance 1.5, elevation 15°); budget > 0 replaces eval_max_samples."""
    import math

    import torch

    from lift3d.config import load_config
    from lift3d.data.cameras import get_ray_directions, get_rays, look_at_c2w, spherical_to_cartesian
    from lift3d.registry import find

    torch.set_num_threads(1)
    s = load_config(str(REPO / "custom/usd/configs/usd-patch.yaml")).system
    geo = find(s.geometry_type)(s.geometry)
    mat, bg = find(s.material_type)(s.get("material", {})), find(s.background_type)(s.background)
    rcfg = dict(s.renderer)
    rcfg["base_renderer"] = dict(rcfg["base_renderer"], **({"eval_max_samples": budget} if budget > 0 else {}))
    renderer = find(s.renderer_type)(rcfg, geometry=geo, material=mat, background=bg)
    for module in (geo, mat, bg, renderer):
        module.eval()
    pos = spherical_to_cartesian(torch.tensor([15.0]), torch.tensor([45.0]), torch.tensor([1.5]))
    dirs = get_ray_directions(size, size, 0.5 * size / math.tan(math.radians(39.6) / 2))
    rays_o, rays_d = get_rays(dirs, look_at_c2w(pos))
    before, _ = peak_rss_mb()
    with torch.no_grad():
        out = renderer(rays_o=rays_o, rays_d=rays_d, light_positions=pos)
    peak, _ = peak_rss_mb()
    return {"size": size, "budget": budget, "before_mb": before, "peak_rss_mb": peak,
            "opacity_mean": float(out["opacity"].mean())}


def make_models(work: Path) -> dict:
    from lift3d.models.tiny_factory import make_tiny_sd, make_tiny_zero123

    return {"sd": make_tiny_sd(work / "tiny-sd", seed=0), "zero123": make_tiny_zero123(work / "tiny-zero123", seed=0)}


def measure(name: str, models: dict, work: Path, extra: list[str] = ()) -> dict:
    config, needs, precursors = MEASURED[name]
    root = work / "out"
    convert = []
    for i, (pre_config, pre_overrides) in enumerate(precursors):
        pre_root = work / f"pre-{name}-{i}"
        argv = ["--config", pre_config, "--train", f"exp_root_dir={pre_root}", *ONE_STEP,
                *model_overrides(needs, models, work), *pre_overrides, *convert, "memory_check=false"]
        run_subprocess(argv)
        trial = next(p for p in (pre_root).glob("*/*") if (p / "ckpts/last.ckpt").is_file())
        convert = [f"system.geometry_convert_from={trial / 'ckpts/last.ckpt'}"]
    argv = ["--config", config, "--train", f"exp_root_dir={root}", *ONE_STEP, *model_overrides(needs, models, work),
            *convert, *extra]
    if precursors:  # a few-step precursor's density blob peaks near 10, below threestudio's 25
        argv.append("system.geometry.convert_threshold=5.0")
    return run_subprocess(argv)


def estimate_row(config: Path, extra: list[str] = ()) -> dict:
    from lift3d.config import load_config
    from lift3d.errors import ConfigError
    from lift3d.memory_check import estimate

    overrides = ["system.prompt_processor.prompt=a red car", *extra]
    for _ in range(8):  # a user-given ??? value (dataset folder, image) that other keys interpolate: a placeholder
        try:
            cfg = load_config(str(config), cli_args=overrides, allow_missing=True)
            break
        except ConfigError as exc:
            missing = re.search(r"Missing mandatory value: ([\w.]+)", str(exc))
            if missing is None:
                raise
            overrides.append(f"{missing.group(1)}=<{missing.group(1)}>")
    est = estimate(cfg, device="cpu")
    return {"config": str(config.relative_to(REPO)), **est.as_mb()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure-one", help=argparse.SUPPRESS)
    parser.add_argument("--eval-view-one", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--eval-view", nargs="*", type=int, default=None,
                        help="usd-patch's evaluation view alone at these sizes (one subprocess each)")
    parser.add_argument("--budget", type=int, default=0, help="--eval-view: eval_max_samples (0: the default)")
    parser.add_argument("--estimates-only", action="store_true")
    parser.add_argument("--measure", nargs="*", default=None, help="configs to measure (default: the five)")
    parser.add_argument("--extra", nargs="*", default=[],
                        help="key=value overrides for every measured run (calibration at other sizes)")
    parser.add_argument("--eval-sizes", nargs="*", type=int, default=None,
                        help="usd-patch only: eval sizes (data.random_camera.eval_width/height) to measure")
    args = parser.parse_args(argv)
    if args.measure_one:
        result = measure_one(json.loads(args.measure_one))
        print("MEASURED " + json.dumps(result), flush=True)
        return 0
    if args.eval_view_one:
        print("MEASURED " + json.dumps(eval_view_one(*args.eval_view_one)), flush=True)
        return 0
    if args.eval_view:
        print("| eval size | eval_max_samples | RSS before the view MB | peak RSS MB |")
        print("|---|---|---|---|")
        for size in args.eval_view:
            proc = subprocess.run([sys.executable, __file__, "--eval-view-one", str(size), str(args.budget)], cwd=REPO,
                                  capture_output=True, text=True, timeout=3600)
            line = [l for l in proc.stdout.splitlines() if l.startswith("MEASURED ")]
            if not line:
                print(f"| {size}² | failed: {proc.stderr[-300:]} | | |")
                continue
            r = json.loads(line[-1][len("MEASURED "):])
            print(f"| {size}² | {args.budget or 'default'} | {r['before_mb']:.0f} | {r['peak_rss_mb']:.0f} |", flush=True)
        return 0

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"## Estimates (every shipped config at its own sizes; device {device})\n")
    print("| config | train step MB | eval view MB | weights MB | peak estimate MB |")
    print("|---|---|---|---|---|")
    for config in shipped_configs():
        try:
            row = estimate_row(config)
        except Exception as exc:  # noqa: BLE001 - a table row, not a crash
            print(f"| {config.relative_to(REPO)} | error: {str(exc).splitlines()[0][:80]} | | | |")
            continue
        print(f"| {row['config']} | {row['train_step_mb']:.0f} | {row['eval_view_mb']:.0f} | {row['weights_mb']:.0f} "
              f"| {row['peak_mb']:.0f} |")
    if args.estimates_only:
        return 0

    names = args.measure if args.measure else list(MEASURED)
    print("\n## Measured (tiny models; one step + one validation view + one test view)\n")
    print("| config | eval size | estimate MB | peak RSS MB | estimate / measured |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        models = make_models(work)
        for name in names:
            sizes = args.eval_sizes if (args.eval_sizes and name == "usd-patch") else [None]
            for size in sizes:
                extra = list(args.extra) + ([] if size is None else [f"data.random_camera.eval_width={size}",
                                                                      f"data.random_camera.eval_height={size}"])
                run_dir = work / f"{name}-{size}"
                result = measure(name, models, run_dir, extra)
                est = float(result["estimate_line"].split("peak ")[1].split(" MB")[0]) if "peak " in result["estimate_line"] else float("nan")
                peak = result["peak_rss_mb"]
                label = "own" if size is None else f"{size}²"
                cuda = f" (CUDA {result['cuda_max_allocated_mb']:.0f} MB)" if "cuda_max_allocated_mb" in result else ""
                print(f"| {name} | {label} | {est:.0f} | {peak:.0f}{cuda} | {est / peak:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
