"""USD view distillation after an image-to-3D run, as one resumable pipeline (docs/methods/usd.md §4).

Steps (each a folder under `out_dir`, default `<run>/view-distillation/`, written atomically with a
done marker, see steps.py; a rerun skips finished steps):

  novel_views   rectified Zero-1-to-3 views of the input image (§4.3)  images/NNNN.png, cameras.json
  class_images  SD class images "photo of a <class>" (§4.2)             images/NNNN.png
  lora_a        DreamBooth-LoRA (a): input + novel views "[V]" vs class images    pytorch_lora_weights.safetensors, losses.csv
  lora_b        DreamBooth-LoRA (b), from (a): input "[S] [V]" vs novel views "[V]"   (same files)
  refine        SDEdit of every turntable render with the (b) model (§4.4)   images/NNNN.png, transforms.json
  neus          `python launch.py --config <neus.config> --train data.dataroot=<refine> ...`, then
                `--export`; the exported mesh is copied to neus/export/ (§4.5)

Every input is checked before the first step (config.resolve_inputs). Models are loaded by the
step that needs them and freed after it. `summary.json` in out_dir lists what this invocation did.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import OmegaConf

from lift3d.errors import Lift3DError
from lift3d.models.frozen import free_memory
from lift3d.utils.paths import REPO_ROOT
from lift3d.utils.saving import save_image

from .config import Inputs, resolve_inputs
from .steps import StepRunner, folder_digest, write_json_atomic

STEPS = ("novel_views", "class_images", "lora_a", "lora_b", "refine", "neus")


class StepFailed(Lift3DError):
    """A pipeline step failed (e.g. the NeuS subprocess); rerunning the command retries that step."""


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _section(cfg: Any, key: str) -> dict:
    return OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True)


def _progress(cfg: Any, desc: str) -> Callable:
    from tqdm.auto import tqdm

    return functools.partial(tqdm, desc=desc, disable=not cfg.progress, leave=False)


def novel_view_cameras(cfg: Any, inputs: Inputs) -> dict[str, list[float]]:
    """Absolute cameras (degrees) of the Zero-1-to-3 views: azimuth offsets 360 k / (N + 1), k = 1..N,
    from the reference; elevations cycled from novel_views.elevations_deg (null: the reference's)."""
    n = int(cfg.novel_views.num_views)
    elevations = list(cfg.novel_views.elevations_deg or [inputs.elevation_deg])
    distance = cfg.novel_views.camera_distance if cfg.novel_views.camera_distance is not None else inputs.camera_distance
    return {
        "elevation_deg": [float(elevations[k % len(elevations)]) for k in range(n)],
        "azimuth_deg": [float(inputs.azimuth_deg + 360.0 * (k + 1) / (n + 1)) for k in range(n)],
        "camera_distance": [float(distance)] * n,
    }


def image_paths(folder: Path) -> list[Path]:
    return sorted((Path(folder) / "images").glob("*.png"))


# ---------------------------------------------------------------------------------- the steps
def step_novel_views(cfg: Any, inputs: Inputs, out: Path) -> dict:
    from .rectified_sampler import RectifiedZero123Sampler

    nv = cfg.novel_views
    sampler = RectifiedZero123Sampler(
        inputs.zero123, inputs.sd, str(inputs.image_path), inputs.elevation_deg, inputs.azimuth_deg,
        inputs.camera_distance, guidance_scale=nv.guidance_scale, zero123_guidance_type=inputs.zero123_guidance_type,
        resolution=nv.resolution, half_precision_weights=cfg.models.half_precision_weights,
        cache_dir=str(inputs.out_dir / "text_embeddings"),
    )
    cams = novel_view_cameras(cfg, inputs)
    relative = sampler.relative_cameras(cams["elevation_deg"], cams["azimuth_deg"], cams["camera_distance"])  # [N,4]
    images = sampler.sample(relative, num_steps=nv.num_steps, seed=cfg.seed, batch_size=nv.batch_size,
                            progress=_progress(cfg, "novel views (batches)"))
    for i, image in enumerate(images):
        save_image(out / f"images/{i:04d}.png", image)
    (out / "cameras.json").write_text(json.dumps({**cams, "relative_T": relative.cpu().tolist()}, indent=1))
    del sampler
    free_memory()
    return {"num_views": len(images)}


def step_class_images(cfg: Any, inputs: Inputs, out: Path, prompts: Any) -> dict:
    from .class_images import write_class_images
    from .sd_models import load_stable_diffusion, text_embeddings

    ci = cfg.class_images
    emb = text_embeddings(inputs.sd, [prompts.class_prompt, ci.negative_prompt])  # [2,77,D]
    sd = load_stable_diffusion(inputs.sd, ci.guidance_scale, cfg.models.half_precision_weights, cfg.lora.resolution)
    paths = write_class_images(sd, emb[:1], emb[1:], out / "images", ci.num_images, ci.num_steps, cfg.seed,
                               ci.batch_size, progress=_progress(cfg, "class images (batches)"))
    del sd
    free_memory()
    return {"num_images": len(paths), "prompt": prompts.class_prompt}


def step_lora(cfg: Any, inputs: Inputs, out: Path, instance_images: list[Path], instance_prompt: str,
              prior_images: list[Path], prior_prompt: str, steps: int, start_from: Optional[Path], name: str) -> dict:
    from .dreambooth_lora import TrainingSet, add_lora, encode_image_files, load_lora, lora_parameters, save_lora, train_lora
    from .sd_models import load_stable_diffusion, text_embeddings

    lc = cfg.lora
    emb = text_embeddings(inputs.sd, [instance_prompt, prior_prompt])
    sd = load_stable_diffusion(inputs.sd, half_precision_weights="false", resolution=lc.resolution)
    if start_from is None:
        params = add_lora(sd.unet, lc.rank, lc.alpha, list(lc.target_modules))
    else:
        load_lora(sd.unet, start_from)
        params = lora_parameters(sd.unet)
    instances = TrainingSet(encode_image_files(sd, instance_images), emb[:1])
    prior = TrainingSet(encode_image_files(sd, prior_images), emb[1:])
    losses = train_lora(sd, params, instances, prior, steps, out / "losses.csv", lc.learning_rate, lc.weight_decay,
                        lc.batch_size, lc.prior_loss_weight, seed=cfg.seed, progress=_progress(cfg, f"LoRA {name}"))
    save_lora(sd.unet, out)
    del sd, params
    free_memory()
    return {"steps": len(losses), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "instances": len(instance_images), "prior": len(prior_images),
            "instance_prompt": instance_prompt, "prior_prompt": prior_prompt}


def step_refine(cfg: Any, inputs: Inputs, out: Path, lora: Path, prompts: Any) -> dict:
    from .dreambooth_lora import load_lora
    from .sd_models import load_stable_diffusion, text_embeddings
    from .sdedit import refine_dataset

    rc = cfg.refine
    emb = text_embeddings(inputs.sd, [prompts.specialised, rc.negative_prompt])
    sd = load_stable_diffusion(inputs.sd, rc.guidance_scale, cfg.models.half_precision_weights, rc.resolution)
    load_lora(sd.unet, lora)
    n = refine_dataset(sd, inputs.dataset, out, emb[:1], emb[1:], rc.noise_timestep, rc.num_steps, cfg.seed,
                       rc.batch_size, progress=_progress(cfg, "SDEdit (batches)"))
    del sd
    free_memory()
    return {"num_frames": n, "prompt": prompts.specialised}


def _launch(args: list[str], timeout: Optional[int], what: str) -> None:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, str(REPO_ROOT / "launch.py"), *args]
    print(f"[view-distillation] {what}: {' '.join(cmd)}", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"{what} ran past neus.timeout_s={timeout}: raise it or lower the NeuS steps "
                         f"(neus.overrides=[trainer.max_steps=...]); rerun to retry this step.") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-3000:]
        raise StepFailed(f"{what} failed (exit code {proc.returncode}); rerun the command to retry this step "
                         f"(finished steps are kept). Its output ends with:\n{tail}")


def step_neus(cfg: Any, inputs: Inputs, out: Path, refined: Path) -> dict:
    """Trains NeuS on the refined dataset in out/runs/, exports, copies the export to out/export/."""
    runs = out / "runs"
    _launch(["--config", str(inputs.neus_config), "--train", f"data.dataroot={refined.resolve()}",
             f"exp_root_dir={runs.resolve()}", "use_timestamp=false", "tag=view-distillation",
             *[str(o) for o in cfg.neus.overrides]], cfg.neus.timeout_s, "NeuS reconstruction")
    ckpts = sorted(runs.glob("*/*/ckpts/last.ckpt"))
    if len(ckpts) != 1:
        raise StepFailed(f"NeuS reconstruction: expected one trial with ckpts/last.ckpt under {runs}, found {len(ckpts)}.")
    trial = ckpts[0].parent.parent
    _launch(["--config", str(trial / "configs/parsed.yaml"), "--export", f"resume={ckpts[0].resolve()}",
             *[str(o) for o in cfg.neus.export_overrides]], cfg.neus.timeout_s, "NeuS export")
    exports = sorted((trial / "save").glob("it*-export"), key=lambda p: int(p.name[2:].split("-")[0]))
    if not exports or not any(exports[-1].iterdir()):
        raise StepFailed(f"NeuS export wrote nothing under {trial / 'save'} (it<N>-export).")
    shutil.copytree(exports[-1], out / "export")
    meshes = sorted(p.name for p in (out / "export").iterdir() if p.suffix in (".obj", ".glb", ".ply"))
    return {"trial": str(trial.relative_to(out)), "mesh": meshes}


# ---------------------------------------------------------------------------------- the driver
def run_pipeline(cfg: Any, log: Callable[[str], None] = print) -> dict:
    """Runs (or resumes) every step; returns the summary (also written to out_dir/summary.json)."""
    from .sd_models import DreamBoothPrompts

    inputs = resolve_inputs(cfg)  # every check before any work
    prompts = DreamBoothPrompts(cfg.class_name, cfg.token_v, cfg.token_s)
    runner = StepRunner(inputs.out_dir, log, seed=int(cfg.seed))
    models = {"sd": inputs.sd, "zero123": inputs.zero123, "half_precision_weights": cfg.models.half_precision_weights}
    image = {"image_path": str(inputs.image_path), "image_sha256": _file_digest(inputs.image_path)}
    log(f"[view-distillation] run {inputs.run}: {inputs.num_frames} views in {inputs.dataset}; out {inputs.out_dir}")

    novel = runner.run("novel_views", {
        **_section(cfg, "novel_views"), **image, "models": models, "seed": cfg.seed,
        "zero123_guidance_type": inputs.zero123_guidance_type,
        "reference": [inputs.elevation_deg, inputs.azimuth_deg, inputs.camera_distance],
    }, lambda out: step_novel_views(cfg, inputs, out))
    classes = runner.run("class_images", {
        **_section(cfg, "class_images"), "prompt": prompts.class_prompt, "models": models, "seed": cfg.seed,
        "resolution": cfg.lora.resolution,
    }, lambda out: step_class_images(cfg, inputs, out, prompts))
    lora_settings = {k: v for k, v in _section(cfg, "lora").items() if k not in ("steps_a", "steps_b")}
    lora_settings.update(image, sd=inputs.sd, seed=cfg.seed)
    lora_a = runner.run("lora_a", {**lora_settings, "steps": cfg.lora.steps_a,
                                   "prompts": [prompts.instance, prompts.class_prompt]},
                        lambda out: step_lora(cfg, inputs, out, [inputs.image_path, *image_paths(novel)],
                                              prompts.instance, image_paths(classes), prompts.class_prompt,
                                              cfg.lora.steps_a, None, "a"),
                        depends=("novel_views", "class_images"))
    lora_b = runner.run("lora_b", {**lora_settings, "steps": cfg.lora.steps_b,
                                   "prompts": [prompts.specialised, prompts.instance]},
                        lambda out: step_lora(cfg, inputs, out, [inputs.image_path], prompts.specialised,
                                              image_paths(novel), prompts.instance, cfg.lora.steps_b, lora_a, "b"),
                        depends=("lora_a", "novel_views"))
    refined = runner.run("refine", {
        **_section(cfg, "refine"), "prompt": prompts.specialised, "models": models, "seed": cfg.seed,
        "dataset": str(inputs.dataset.resolve()), "dataset_digest": folder_digest(inputs.dataset),
    }, lambda out: step_refine(cfg, inputs, out, lora_b, prompts), depends=("lora_b",))
    neus = None
    if cfg.neus.enabled:
        neus = runner.run("neus", {**_section(cfg, "neus"), "config_sha256": _file_digest(inputs.neus_config)},
                          lambda out: step_neus(cfg, inputs, out, refined), depends=("refine",))

    summary = {
        "run": str(inputs.run), "out_dir": str(inputs.out_dir), "statuses": runner.statuses,
        "seconds": {k: round(v, 3) for k, v in runner.seconds.items()},
        "refined_dataset": str(refined), "lora": str(lora_b / "pytorch_lora_weights.safetensors"),
        "mesh": [str(neus / "export" / m) for m in runner.read_marker("neus")["info"]["mesh"]] if neus else [],
    }
    write_json_atomic(inputs.out_dir / "summary.json", summary)
    log(f"[view-distillation] refined dataset: {refined}")
    if summary["mesh"]:
        log(f"[view-distillation] mesh: {summary['mesh'][0]}")
    return summary


__all__ = ["STEPS", "StepFailed", "novel_view_cameras", "run_pipeline"]
