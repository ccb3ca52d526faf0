#!/usr/bin/env python
"""Toy-world evaluation: USD (lambda 0) against SDS (lambda 1) and VSD (ProlificDreamer) text-to-3D on
the shipped toy prior, scored against the true shapes.

    python benchmarks/toyworld.py --jobs 2             # 5 prompts × {USD, SDS, VSD, HiFA, init}, configs/demo/text-to-3d.yaml
    python benchmarks/toyworld.py --batch --jobs 2 --methods VSD SDS USD
    python benchmarks/toyworld.py --jobs 2 --prompts "a red cube" "a blue sphere" --steps 400
    python benchmarks/toyworld.py --batch              # the same runs through lift3d.batch on a local Ray cluster
    python benchmarks/toyworld.py --image --jobs 2     # image-to-3D: 5 objects × {Magic123, USD-image}

Image-to-3D (--image): each caption's object is rendered from the image demo's reference camera
(configs/demo/image-to-3d.yaml's data.default_*, load/images/make_toy_images.py) into
<out>/references/<caption>_rgba.png, and every image method fits that picture: USD-image is the image
demo (usd-image-guidance), Magic123 configs/demo/image-to-3d-magic123.yaml (the same demo with
magic123-system; its SD prior gets the caption as prompt). Scored as the text-to-3D runs.

Each run is `launch.py --config configs/demo/text-to-3d.yaml --train` (fit, then the test pass,
which writes the RGBA turntable with cameras) with `system.guidance.usd_lambda` set; VSD runs
configs/demo/text-to-3d-vsd.yaml instead (the same demo with stable-diffusion-vsd-guidance and its
camera-conditioned LoRA of the toy UNet; overrides and --steps apply alike); HiFA is SDS with HiFA's
annealed timestep (`system.guidance.sqrt_anneal`). The turntable
is scored by tools/toyworld/scoring.py: silhouette IoU against the true shape rendered at the
same cameras, and whether the result's colour is nearest the prompt's. A result passes with
IoU >= 0.7 and the right colour. Prints a Markdown table (benchmarks/RESULTS.md keeps it).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_PROMPTS = ["a red cube", "a blue sphere", "a green cone", "a yellow cylinder", "a purple torus"]


@dataclass(frozen=True)
class Method:
    """One benchmarked method: its config (None: --config) and overrides; steps fixes trainer.max_steps."""

    overrides: tuple[str, ...] = ()
    config: Optional[str] = None
    steps: Optional[int] = None
    image: bool = False  # image-to-3D: fits the caption's reference render (data.image_path)
    prompt_key: Optional[str] = "system.prompt_processor.prompt"  # None: the method takes no text

    def config_for(self, args) -> str:
        return self.config or args.config

    def run_overrides(self, args) -> list[str]:
        steps = self.steps or args.steps
        return [*self.overrides, *(["trainer.max_steps=" + str(steps)] if steps else [])]


# "init" scores the initial density blob after one step, the floor any silhouette IoU should be read against
METHODS = {
    "USD": Method(("system.guidance.usd_lambda=0.0",)),
    "SDS": Method(("system.guidance.usd_lambda=1.0",)),
    "VSD": Method(config="configs/demo/text-to-3d-vsd.yaml"),
    # SDS with HiFA's annealed timestep (lift3d/guidance/hifa.py): t falls from max_step_percent to
    # min_step_percent as sqrt(step / max_steps) instead of t ~ U; HiFA's image-space loss is not used
    "HiFA": Method(("system.guidance.usd_lambda=1.0", "system.guidance.sqrt_anneal=true",
                    "system.guidance.trainer_max_steps=${trainer.max_steps}")),
    "init": Method(("system.guidance.usd_lambda=0.0",), steps=1),
    # image-to-3D (--image)
    "Magic123": Method(config="configs/demo/image-to-3d-magic123.yaml", image=True),
    "USD-image": Method(config="configs/demo/image-to-3d.yaml", image=True, prompt_key=None),
}
TEXT_METHODS = [m for m in METHODS if not METHODS[m].image]
IMAGE_METHODS = [m for m in METHODS if METHODS[m].image]
IMAGE_CONFIG = "configs/demo/image-to-3d.yaml"  # whose data.default_* camera the reference images are taken from


def reference_image(prompt: str, args) -> Path:
    """<out>/references/<caption>_rgba.png: the caption's object from the image demo's reference camera."""
    from omegaconf import OmegaConf

    from load.images.make_toy_images import write_toy_image
    from tools.toyworld.shapes import parse_caption

    path = Path(args.out) / "references" / (prompt.replace(" ", "_") + "_rgba.png")
    if not path.exists():
        data = OmegaConf.load(REPO / IMAGE_CONFIG).data
        path.parent.mkdir(parents=True, exist_ok=True)
        write_toy_image(str(path), *parse_caption(prompt), data.default_elevation_deg,
                        data.default_azimuth_deg, data.default_camera_distance, data.default_fovy_deg, 128)
    return path.resolve()


def prompt_overrides(prompt: str, method: str, args) -> list[str]:
    """The overrides naming the run's object: its caption as prompt, and for image methods its picture."""
    spec = METHODS[method]
    text = [f"{spec.prompt_key}={prompt}"] if spec.prompt_key else []
    return [*text, *([f"data.image_path={reference_image(prompt, args)}"] if spec.image else [])]


def run_one(prompt: str, method: str, args) -> dict:
    from tools.toyworld.scoring import score_trial
    from tools.toyworld.shapes import parse_caption

    root = Path(args.out) / method
    spec = METHODS[method]
    tag = prompt.replace(" ", "_")
    cmd = [
        sys.executable, str(REPO / "launch.py"), "--config", str(REPO / spec.config_for(args)), "--train",
        *prompt_overrides(prompt, method, args), *spec.run_overrides(args),
        f"exp_root_dir={root}", "use_timestamp=false", f"seed={args.seed}", "trainer.enable_progress_bar=false",
        *args.overrides,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    start = time.perf_counter()
    log = root / f"{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {"prompt": prompt, "method": method, "error": f"exit {proc.returncode}, see {log}", "seconds": seconds}
    trial = next(root.glob(f"*/{tag}*"))  # <exp_root_dir>/<the config's name>/<tag>
    score = score_trial(trial, *parse_caption(prompt))
    return {"prompt": prompt, "method": method, "score": score, "seconds": seconds}


def run_batch(runs, args) -> list[dict]:
    """The runs as one lift3d.batch manifest (Ray, `--jobs` at once via num_cpus per job), scored by
    tools/toyworld/batch_scorer.py; outputs and the HTML report in <out>/batch/."""
    from types import SimpleNamespace

    from lift3d.batch.layout import JobPaths
    from lift3d.batch.manifest import parse_manifest, slug
    from lift3d.batch.runner import run_batch as run_on_ray

    jobs = []
    for prompt, method in runs:
        spec = METHODS[method]
        jobs.append({"name": f"{method}-{slug(prompt)}", "prompt": prompt, "config": spec.config_for(args),
                     "overrides": spec.run_overrides(args)})
    manifest = parse_manifest({"name": "batch", "defaults": {
        "config": args.config, "seed": args.seed, "overrides": list(args.overrides), "num_cpus": args.threads,
        "num_gpus": 0, "export": False, "retries": 0, "scorer": "tools.toyworld.batch_scorer:score"}, "jobs": jobs},
        "benchmarks/toyworld.py", REPO, out_dir=args.out)
    run_on_ray(manifest, local_cpus=args.jobs * args.threads)
    results = []
    for (prompt, method), job in zip(runs, manifest.jobs):
        done = JobPaths(manifest.batch_dir, job.id).done()
        if done is None or "toy_iou" not in done.get("scores", {}):
            results.append({"prompt": prompt, "method": method, "seconds": 0.0,
                            "error": f"not done, see {JobPaths(manifest.batch_dir, job.id).root}"})
            continue
        sc = done["scores"]
        score = SimpleNamespace(iou=sc["toy_iou"], colour_error=sc["toy_colour_error"],
                                predicted_colour=sc["toy_colour_seen"], passed=lambda ok=sc["toy_pass"]: ok)
        results.append({"prompt": prompt, "method": method, "score": score, "seconds": done["wall_s"]})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", nargs="+", default=DEFAULT_PROMPTS)
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS),
                        help=f"default: {' '.join(TEXT_METHODS)}; with --image {' '.join(IMAGE_METHODS)}")
    parser.add_argument("--image", action="store_true", help="image-to-3D methods on reference renders")
    parser.add_argument("--config", default="configs/demo/text-to-3d.yaml")
    parser.add_argument("--steps", type=int, default=None, help="trainer.max_steps (default: the config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    parser.add_argument("--out", default="outputs/toyworld")
    parser.add_argument("--batch", action="store_true", help="run through lift3d.batch (Ray) instead of threads")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = parser.parse_args()
    args.methods = args.methods or (IMAGE_METHODS if args.image else TEXT_METHODS)
    if args.batch and any(METHODS[m].image for m in args.methods):
        parser.error("image-to-3D methods run without --batch")
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    runs = [(p, m) for p in args.prompts for m in args.methods]  # prompt by prompt: a cut-short run compares whole prompts
    start = time.perf_counter()
    if args.batch:
        results = run_batch(runs, args)
    else:
        if any(METHODS[m].image for m in args.methods):  # each reference once, before two runs of a prompt race for it
            for prompt in args.prompts:
                reference_image(prompt, args)
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda pm: run_one(*pm, args), runs))
    configs = sorted({METHODS[m].config_for(args) for m in args.methods})
    print(f"\nconfig {', '.join(configs)}, steps {args.steps or 'config'}, seed {args.seed}, "
          f"{args.jobs} job(s) × {args.threads} thread(s){' on lift3d.batch (Ray)' if args.batch else ''}, "
          f"{time.perf_counter() - start:.0f} s in all\n")
    print("| prompt | method | silhouette IoU | colour error | colour seen | pass | seconds |")
    print("|---|---|---|---|---|---|---|")
    passed = {m: 0 for m in args.methods}
    results.sort(key=lambda r: (args.prompts.index(r["prompt"]), args.methods.index(r["method"])))
    for r in results:
        if "error" in r:
            print(f"| {r['prompt']} | {r['method']} | — | — | — | error: {r['error']} | {r['seconds']:.0f} |")
            continue
        s = r["score"]
        passed[r["method"]] += s.passed()
        print(f"| {r['prompt']} | {r['method']} | {s.iou:.3f} | {s.colour_error:.3f} | {s.predicted_colour} | "
              f"{'yes' if s.passed() else 'no'} | {r['seconds']:.0f} |")
    print()
    for m in args.methods:
        print(f"{m}: {passed[m]} of {len(args.prompts)} prompts pass (IoU >= 0.7 and the right colour)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
