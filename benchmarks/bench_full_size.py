#!/usr/bin/env python
"""Full-size stage benchmark: iterations per second, peak GPU memory, where the time goes, and the floor.

    python benchmarks/bench_full_size.py --device cuda                      # every stage, full size (GPU)
    python benchmarks/bench_full_size.py --device cuda --stage text-nerf --iters 50
    python benchmarks/bench_full_size.py --tiny                             # CPU smoke run: tiny models, 64² renders
    python benchmarks/bench_full_size.py --device cuda --dtype bf16 --channels-last --compile-unet default

Models: random-weight Stable Diffusion 2.1-base (UNet, VAE, OpenCLIP ViT-H text tower) and
Zero-1-to-3 XL shapes, built on the device from the published config values of
benchmarks/bench_guidance.py (no download; compute does not depend on weight values), written in
the diffusers layout and loaded by the same guidance / prompt-processor classes and
``from_pretrained`` calls as training. ``--tiny`` uses lift3d.models.tiny_factory instead.

Stages (USD's pipeline, docs/methods/usd.md §2-3). A stage runs USD's config (custom/usd/configs/
or configs/) when it exists and its guidance is registered (plugins are loaded as launch.py does),
from scratch (no geometry_convert_from; a DMTet stage starts from a sphere); otherwise the closest
existing config stands in (marked "stand-in") with the same renderer, resolution and model shapes:

  text-nerf       USD text-to-3D stage 1: hash-grid NeRF, patch renderer at 512² (128² frame
                  upsampled + a 128² full-resolution patch, 512 samples/ray), SD 2.1-base at 64² latents.
                  Stand-in: dreamfusion-sd.yaml with those settings (SDS, one CFG batch of 2).
  dmtet-geometry  USD stage 2: DMTet (128 grid) geometry only, rasterized at 512², SDS on the normal map.
                  Stand-in: magic3d-refine-sd.yaml, geometry only, sphere init, comp_normal.
  texture         USD stage 3: fixed DMTet mesh + hash-grid texture, 512² raster, SD guidance.
                  Stand-in: magic3d-refine-sd.yaml with fix_geometry, sphere init.
  image-nerf      USD image-to-3D: NeRF + patch renderer at 512², resized to 256² for Zero-1-to-3
                  (32² latents) [+ SD 2.1-base unconditional on the same latents in USD].
                  Stand-in: zero123.yaml with the patch renderer at 512² (zero123 SDS only).

Per stage, after a warm-up (occupancy-grid warm-up steps, Triton JIT, cuDNN autotuning):
  it/s        timed iterations / wall time (one sync at each end; nothing else synchronises)
  peak GB     torch.cuda.max_memory_allocated over the timed iterations (weights included)
  split       GPU time between CUDA events recorded at the phase boundaries of each iteration of
              the system's own training_step + backward + optimizer step (as Lightning runs it,
              without Lightning's loop): render = step update, render forward(s) and the render's
              backward; diffusion = the guidance call (VAE encode, UNet(s)) and its backward down
              to the render (an event recorded by a gradient hook on the guided image);
              optimizer = step + zero_grad.
  floor       FLOPs of the diffusion models in one training step (UNet(s), VAE encoder forward and
              backward; torch.utils.flop_counter.FlopCounterMode over a whole step, the entries of
              the frozen models) / the measured dense matmul throughput of the same GPU in the
              guidance's dtype; floor it/s = 1 / that. "x floor" = measured ms / floor ms.
Targets checked for text-nerf (issue 8): >= 30 it/s on one H100, <= 3x floor, <= 12 GB peak.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

TARGETS = {"text-nerf": {"it_s": 30.0, "x_floor": 3.0, "peak_gb": 12.0}}


# ---------------------------------------------------------------------------------------- models
def write_sd(folder: Path, device: torch.device, dtype: torch.dtype) -> Path:
    """Random-weight SD 2.1-base folder (unet, vae, text_encoder, tokenizer, scheduler)."""
    import json as _json

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from bench_guidance import OPENCLIP_H_TEXT, SD21_BASE_UNET, SD_VAE
    from lift3d.models.tiny_factory import SD_SCHEDULE, _write_tokenizer, _write_tokenizer_files

    torch.manual_seed(0)
    tokenizer = _write_tokenizer(folder / "tokenizer", pad_token="!")
    tokenizer.save_pretrained(folder / "tokenizer")
    if not (folder / "tokenizer" / "merges.txt").is_file():
        _write_tokenizer_files(folder / "tokenizer")
    with torch.device(device):  # initialise on the GPU: seconds instead of minutes
        modules = {
            "unet": UNet2DConditionModel(**SD21_BASE_UNET),
            "vae": AutoencoderKL(**SD_VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(
                **OPENCLIP_H_TEXT, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)),
        }
    for name, module in modules.items():
        module.to(dtype).save_pretrained(folder / name)
    del modules
    DDPMScheduler(**SD_SCHEDULE).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(_json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDPMScheduler"],
    }))
    return folder


def write_zero123(folder: Path, device: torch.device, dtype: torch.dtype) -> Path:
    """Random-weight Zero-1-to-3 XL folder (8-channel UNet, VAE, CLIP ViT-L/14 image tower, projection)."""
    import json as _json

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from bench_guidance import CLIP_L14_VISION, SD_VAE, ZERO123_XL_UNET
    from extern.zero123.pipeline import CCProjection, zero123_model_index
    from lift3d.models.tiny_factory import SD_SCHEDULE

    torch.manual_seed(1)
    with torch.device(device):
        modules = {
            "unet": UNet2DConditionModel(**ZERO123_XL_UNET),
            "vae": AutoencoderKL(**dict(SD_VAE, sample_size=256)),
            "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_L14_VISION)),
            "clip_camera_projection": CCProjection(embedding_dim=768, additional_embeddings=4),
        }
    for name, module in modules.items():
        module.to(dtype).save_pretrained(folder / name)
    del modules
    DDIMScheduler(**SD_SCHEDULE, set_alpha_to_one=False).save_pretrained(folder / "scheduler")
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                       image_mean=[0.48145466, 0.4578275, 0.40821073],
                       image_std=[0.26862954, 0.26130258, 0.27577711]).save_pretrained(folder / "feature_extractor")
    (folder / "model_index.json").write_text(_json.dumps(zero123_model_index()))
    return folder


class Models:
    """Model folders, written on first use."""

    def __init__(self, root: Path, device: torch.device, tiny: bool) -> None:
        self.root, self.device, self.tiny = root, device, tiny
        self._paths: dict[str, Path] = {}
        self.build_s = 0.0

    def path(self, kind: str) -> Path:
        written = self.root / (f"tiny-{kind}" if self.tiny else f"{kind}-random")
        if kind not in self._paths and (written / "model_index.json").exists():
            self._paths[kind] = written  # --models-dir: written by an earlier run (gpu_check's variants)
        if kind not in self._paths:
            start = time.perf_counter()
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
            if self.tiny:
                from lift3d.models.tiny_factory import make_tiny_sd, make_tiny_zero123

                make = make_tiny_sd if kind == "sd" else make_tiny_zero123
                self._paths[kind] = make(self.root / f"tiny-{kind}", seed=0)
            else:
                folder = self.root / f"{kind}-random"
                writer = write_sd if kind == "sd" else write_zero123
                self._paths[kind] = writer(folder, self.device, dtype)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # the initialisation copies are gone: return their memory
            self.build_s += time.perf_counter() - start
        return self._paths[kind]


# ---------------------------------------------------------------------------------------- stages
@dataclass
class Stage:
    name: str
    title: str
    usd_config: str  # configs/<this> once USD lands
    usd_guidance: tuple  # registered names that mean USD's guidance is available
    fallback_config: str
    fallback_overrides: Callable[[argparse.Namespace, "Models"], tuple]  # (overrides, replaced sections)
    models: tuple  # model kinds the stage loads ("sd", "zero123")
    common_overrides: Callable[[argparse.Namespace, "Models"], list] = field(default=lambda a, m: [])


def _res(args) -> int:
    return 64 if args.tiny else 512


def _patch_renderer(args) -> dict:
    """Replacement of system.renderer (a whole section: merging would keep the old keys)."""
    patch, down = (32, 4) if args.tiny else (128, 4)
    samples = 64 if args.tiny else 512
    return {"system.renderer_type": "patch-renderer",
            "system.renderer": {"radius": 2.0, "patch_size": patch, "global_downsample": down,
                                "base_renderer_type": "nerf-volume-renderer",
                                "base_renderer": {"radius": 2.0, "num_samples_per_ray": samples}}}


def _sd_paths(args, models) -> list:
    sd = models.path("sd")
    return [f"system.guidance.pretrained_model_name_or_path={sd}",
            f"system.prompt_processor.pretrained_model_name_or_path={sd}",
            f"system.prompt_processor.cache_dir={models.root / 'text-cache'}",
            "system.prompt_processor.prompt=a DSLR photo of a delicious hamburger"]


def _text_nerf(args, models) -> tuple:
    res = _res(args)
    return _sd_paths(args, models) + [
        f"data.width={res}", f"data.height={res}", "data.camera_distance_range=[1.0, 1.5]",
        "system.loss.lambda_sparsity=10.0", "system.loss.lambda_orient=0.0", "system.loss.lambda_opaque=0.0",
    ], _patch_renderer(args)


def _mesh_common(args, models) -> list:
    res = _res(args)
    grid = 32 if args.tiny else 128
    return _sd_paths(args, models) + [
        f"data.width={res}", f"data.height={res}",
        "system.geometry_convert_from=null", "system.geometry_convert_inherit_texture=false",
        f"system.geometry.isosurface_resolution={grid}",
        "system.geometry.shape_init=sphere", "system.geometry.shape_init_params=0.8",
    ]


def _dmtet_geometry(args, models) -> tuple:
    return _mesh_common(args, models) + [
        "system.geometry.geometry_only=true", "system.material_type=no-material",
        "system.background_type=solid-color-background", "system.guidance_input=comp_normal",
        "system.loss.lambda_normal_consistency=10000.0", "system.loss.lambda_laplacian_smoothness=10000.0",
        "system.optimizer.args.lr=0.005",
    ], {"system.material": {"n_output_dims": 0}, "system.background": {}}


def _texture(args, models) -> tuple:
    return _mesh_common(args, models) + ["system.geometry.fix_geometry=true",
                                         "system.loss.lambda_normal_consistency=0.0"], {}


def _image_nerf(args, models) -> tuple:
    res = _res(args)
    z = models.path("zero123")
    return [
        f"system.guidance.pretrained_model_name_or_path={z}",
        f"data.random_camera.width={res}", f"data.random_camera.height={res}",
        "data.random_camera.batch_size=1",
    ] + ([] if not args.tiny else ["system.guidance.resolution=64"]), _patch_renderer(args)


STAGES = {
    "text-nerf": Stage("text-nerf", "USD text-to-3D stage 1 (NeRF, patch renderer 512²)", "usd-text-to-3D-patch.yaml",
                       ("usd-text-guidance", "usd-guidance"), "dreamfusion-sd.yaml", _text_nerf, ("sd",)),
    "dmtet-geometry": Stage("dmtet-geometry", "USD stage 2: DMTet geometry, raster 512²", "usd-text-to-3D-geometry.yaml",
                            ("stable-diffusion-guidance",), "magic3d-refine-sd.yaml", _dmtet_geometry, ("sd",)),
    "texture": Stage("texture", "USD stage 3: texture on a fixed DMTet mesh, raster 512²", "usd-text-to-3D-texture.yaml",
                     ("usd-text-guidance", "usd-guidance"), "magic3d-refine-sd.yaml", _texture, ("sd",)),
    "image-nerf": Stage("image-nerf", "USD image-to-3D (NeRF, patch renderer 512² -> 256²)", "usd-patch.yaml",
                        ("usd-image-guidance", "usd-guidance"), "zero123.yaml", _image_nerf, ("zero123",)),
}


def _point_models_at(cfg, models: Models) -> None:
    """Every model path of the guidance / prompt processor -> the random-weight folders (by kind)."""
    from omegaconf import OmegaConf

    for section in ("guidance", "prompt_processor"):
        sub = cfg.system.get(section)
        if sub is None:
            continue
        for key in list(sub.keys()):
            if "model_name_or_path" in key or key.endswith("model_path"):
                value = str(sub[key]).lower()
                kind = "zero123" if ("zero123" in value or "zero-1-to-3" in value) else "sd"
                OmegaConf.update(cfg, f"system.{section}.{key}", str(models.path(kind)), merge=False)
        if "cache_dir" in sub:
            OmegaConf.update(cfg, f"system.{section}.cache_dir", str(models.root / "text-cache"), merge=False)


def _tiny_sizes(cfg, args) -> None:
    """--tiny on a USD config: 64² renders and a small patch renderer (structure unchanged)."""
    from omegaconf import OmegaConf

    for key in ("data.width", "data.height", "data.random_camera.width", "data.random_camera.height"):
        if OmegaConf.select(cfg, key) is not None:
            OmegaConf.update(cfg, key, 64, merge=False)
    if OmegaConf.select(cfg, "system.guidance.reference_resolution") is not None:
        OmegaConf.update(cfg, "system.guidance.reference_resolution", 64, merge=False)
    if OmegaConf.select(cfg, "system.geometry.isosurface_resolution") is not None:
        OmegaConf.update(cfg, "system.geometry.isosurface_resolution", 32, merge=False)
    if cfg.system.renderer_type == "patch-renderer":
        for key, value in _patch_renderer(args).items():
            OmegaConf.update(cfg, key, OmegaConf.create(value) if isinstance(value, dict) else value, merge=False)


def stage_config(stage: Stage, args, models: Models):
    """(config, description) for a stage: USD's config when it and its guidance exist, else the stand-in."""
    from omegaconf import OmegaConf

    from lift3d.config import load_config
    from lift3d.registry import is_registered

    usd = next((d / stage.usd_config for d in (REPO / "configs", REPO / "custom" / "usd" / "configs")
                if (d / stage.usd_config).is_file()), None)
    if usd is not None and not args.stand_in and any(is_registered(name) for name in stage.usd_guidance):
        raw = OmegaConf.load(usd)

        def missing(dotted: str) -> bool:  # a mandatory (???) value, given on the command line by users
            parent, key = dotted.rsplit(".", 1)
            node = OmegaConf.select(raw, parent)
            return OmegaConf.is_config(node) and key in node.keys() and OmegaConf.is_missing(node, key)

        overrides = []
        if missing("system.prompt_processor.prompt"):
            overrides.append("system.prompt_processor.prompt=a DSLR photo of a delicious hamburger")
        if missing("system.geometry_convert_from"):
            overrides.append("system.geometry_convert_from=null")  # from scratch here: same cost per step
        cfg = load_config(str(usd), cli_args=overrides)
        cfg.system.geometry_convert_from = None
        if cfg.system.geometry_type == "tetrahedra-sdf-grid" and not cfg.system.geometry.get("shape_init"):
            OmegaConf.update(cfg, "system.geometry.shape_init", "sphere", merge=False)  # a mesh to render
            OmegaConf.update(cfg, "system.geometry.shape_init_params", 0.8, merge=False)
        _point_models_at(cfg, models)
        if args.tiny:
            _tiny_sizes(cfg, args)
        return cfg, str(usd.relative_to(REPO))
    overrides, sections = stage.fallback_overrides(args, models)
    cfg = load_config(str(REPO / "configs" / stage.fallback_config), cli_args=overrides)
    for dotted, value in sections.items():  # whole sections replaced, not merged
        OmegaConf.update(cfg, dotted, OmegaConf.create(value) if isinstance(value, dict) else value, merge=False)
    return cfg, f"stand-in: {stage.fallback_config}"


# ---------------------------------------------------------------------------------------- timing
class PhaseClock:
    """Marks phase boundaries with CUDA events (no sync) or host clock readings (CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append((name, ev))
        else:
            self.marks.append((name, time.perf_counter()))

    def spans_ms(self) -> dict[str, float]:
        """Sum of the time from each mark to the next, keyed by the earlier mark's phase name."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for (name, a), (_, b) in zip(self.marks, self.marks[1:]):
            if name == "end":
                continue
            ms = a.elapsed_time(b) if self.cuda else (b - a) * 1000.0
            out[name] = out.get(name, 0.0) + ms
        return out


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul throughput (TFLOP/s) in `dtype`: median over repeats of n³ products."""
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20 if device.type == "cuda" else 3):
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            a @ b
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1000.0)
        else:
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e12


def to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def apply_guidance_options(guidance: Any, args) -> list:
    """--dtype / --channels-last / --attention-slicing / --compile-unet on a built guidance."""
    notes = []
    models = getattr(guidance, "models", None)
    if models is None:
        return notes
    if args.dtype in ("fp16", "bf16") and guidance.device.type == "cuda":
        dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
        if getattr(guidance, "weights_dtype", None) != dtype:
            models.to(guidance.device, dtype)
            guidance.weights_dtype = dtype
        notes.append(args.dtype)
    elif args.dtype == "fp32":
        models.to(guidance.device, torch.float32)
        guidance.weights_dtype = torch.float32
        notes.append("fp32")
    if args.channels_last or args.attention_slicing:
        models.apply_memory_options(args.attention_slicing, args.channels_last)
        notes += ["channels-last"] * args.channels_last + ["attention-slicing"] * args.attention_slicing
    if args.vae_fp32:
        vae = getattr(models, "vae", None)
        if vae is not None:
            vae.to(torch.float32)  # encoder+decoder in fp32, latents cast by the guidance
            notes.append("vae-fp32")
    return notes


def compile_unet(guidance: Any, mode: str) -> None:
    models = guidance.models
    unet = models.unet
    models.unet = torch.compile(unet, mode=None if mode == "default" else mode, dynamic=False)


class TimedGuidance:
    """Stands in for ``system.guidance``: marks the phase boundaries of the real training step.

    ``__call__`` marks the start of the diffusion phase and hooks the guided image, whose gradient
    becomes ready when the guidance's backward (VAE encoder) is done and the render's backward
    starts: there it marks the render phase again. Everything else is the wrapped guidance's.
    """

    def __init__(self, inner: Any) -> None:
        self.__dict__["inner"] = inner
        self.__dict__["mark"] = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inner"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            self.__dict__[name] = value
        else:
            setattr(self.__dict__["inner"], name, value)

    def do_update_step(self, epoch: int, global_step: int, _seen: Optional[set] = None) -> None:
        self.inner.do_update_step(epoch, global_step, _seen)

    def _image_grad_ready(self, grad: torch.Tensor) -> None:
        if self.mark is not None:
            self.mark("render")

    def __call__(self, image: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.mark is not None:
            self.mark("diffusion")
            if torch.is_tensor(image) and image.requires_grad:
                image.register_hook(self._image_grad_ready)
        return self.inner(image, *args, **kwargs)


def timed_guidance(inner: Any) -> TimedGuidance:
    """A TimedGuidance whose class also carries the wrapped guidance's class attributes (systems read
    some from the type, e.g. ``type(guidance).reference_view_losses``)."""
    shared: dict[str, Any] = {}
    for cls in type(inner).__mro__:  # plain class data only (no methods, properties or other descriptors)
        for k, v in vars(cls).items():
            if not k.startswith("__") and not hasattr(v, "__get__") and k not in shared:
                shared[k] = v
    shared.pop("inner", None)
    shared.pop("mark", None)
    return type(f"Timed{type(inner).__name__}", (TimedGuidance,), shared)(inner)


def diffusion_flops(system, step_fn) -> tuple[float, dict]:
    """FLOPs of the diffusion models in one training step (forward and backward).

    The whole step runs under FlopCounterMode; its module tracker files the render under the
    system's own class (the system's forward) and each frozen diffusion model -- called by the
    guidance, outside the system's forward -- under its own class name at the top level (UNet,
    VAE Encoder and quant conv, CLIP encoders, camera projection). The diffusion FLOPs are those
    top-level entries; losses computed outside any module ("Global" only) are left out.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step_fn()
    counts = counter.get_flop_counts()
    mine = type(system).__name__
    top = {k: float(sum(v.values())) for k, v in counts.items() if "." not in k and k not in ("Global", mine)}
    return sum(top.values()), top


def run_stage(stage: Stage, args, models: Models, device: torch.device, tflops: float) -> dict:
    import warnings

    from omegaconf import OmegaConf

    from lift3d.registry import find
    from lift3d.systems.optim import make_optimizer

    cfg, source = stage_config(stage, args, models)
    datamodule = find(cfg.data_type)(cfg.data)
    if hasattr(datamodule, "setup"):
        datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    system = find(cfg.system_type)(cfg.system).to(device)
    system.build_guidance()  # prompt processor (text encoder once, cached) + guidance, as on_fit_start
    guidance = system.guidance
    notes = apply_guidance_options(guidance, args)
    timed = timed_guidance(guidance)
    system.guidance = timed
    opt_cfg = OmegaConf.to_container(cfg.system.optimizer, resolve=True)
    if args.fused_adam and device.type == "cuda":
        opt_cfg["args"] = dict(opt_cfg.get("args", {}), fused=True)
        notes.append("fused-adam")
    optimizer = make_optimizer(system, opt_cfg)
    system.train()
    # training_step logs with self.log, which only warns without a Lightning trainer
    warnings.filterwarnings("ignore", message=".*self.log.*")
    warnings.filterwarnings("ignore", message=".*self.trainer.*")

    def train_step(i: int) -> None:
        """The system's own training_step (as Lightning runs it) and its backward."""
        batch = to_device(next(loader), device)
        system.do_update_step(0, i)
        loss = system.training_step(batch, i)
        if torch.is_tensor(loss) and loss.requires_grad:
            loss.backward()

    def step(i: int, clock: Optional[PhaseClock]) -> None:
        mark = clock.mark if clock is not None else None
        timed.mark = mark
        if mark:
            mark("render")
        train_step(i)
        if mark:
            mark("optimizer")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if mark:
            mark("end")

    # warm-up: the occupancy grid's first updates, JIT compilation, cuDNN autotuning
    for i in range(args.warmup):
        step(i, None)
    flops, per_module = diffusion_flops(system, lambda: train_step(args.warmup))
    optimizer.zero_grad(set_to_none=True)
    if args.compile_unet != "off" and hasattr(guidance, "models") and hasattr(guidance.models, "unet"):
        compile_unet(guidance, args.compile_unet)
        notes.append(f"compile-unet:{args.compile_unet}")
        for i in range(3):  # compile
            step(args.warmup + 1 + i, None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    clock = PhaseClock(device)
    first = args.warmup + 4
    start = time.perf_counter()
    for i in range(args.iters):
        step(first + i, clock)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    spans = clock.spans_ms()
    peak_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    ms_per_it = wall * 1000.0 / args.iters
    floor_ms = flops / (tflops * 1e12) * 1000.0 if tflops > 0 else float("nan")
    result = {
        "stage": stage.name, "title": stage.title, "source": source, "options": notes,
        "it_s": 1000.0 / ms_per_it, "ms_per_it": ms_per_it, "peak_gb": peak_gb,
        "split_ms": {k: v / args.iters for k, v in spans.items()},
        "guidance_tflop": flops / 1e12, "flops_by_module_tflop": {k: v / 1e12 for k, v in per_module.items()},
        "floor_ms": floor_ms, "floor_it_s": 1000.0 / floor_ms if floor_ms == floor_ms else float("nan"),
        "x_floor": ms_per_it / floor_ms if floor_ms == floor_ms else float("nan"),
    }
    del system, guidance, timed, optimizer
    if hasattr(datamodule, "teardown"):
        datamodule.teardown("fit")
    from lift3d.models.frozen import free_memory

    free_memory()
    return result


# ---------------------------------------------------------------------------------------- report
def print_report(results: list[dict], device: torch.device, tflops: float, dtype_name: str, args, build_s: float) -> None:
    from lift3d.ops.fast_path import describe

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    kind = "tiny random models (smoke run: the figures mean nothing)" if args.tiny else "full-size random-weight models"
    print()
    print(f"full-size stage benchmark on {name}; torch {torch.__version__}; {describe()}")
    print(f"{kind}; models written in {build_s:.1f} s; matmul {dtype_name}: {tflops:.3g} TFLOP/s measured; "
          f"{args.iters} timed iterations after {args.warmup} warm-up")
    head = (f"{'stage':15s} {'it/s':>7s} {'ms/it':>8s} {'peak GB':>8s} {'render':>7s} {'diffus.':>7s} {'optim.':>7s} "
            f"{'TFLOP/it':>9s} {'floor ms':>9s} {'x floor':>8s}  source / options")
    print(head)
    for r in results:
        if "error" in r:
            print(f"{r['stage']:15s} n/a: {r['error']}")
            continue
        s = r["split_ms"]
        peak = f"{r['peak_gb']:8.2f}" if r["peak_gb"] == r["peak_gb"] else f"{'-':>8s}"
        print(f"{r['stage']:15s} {r['it_s']:7.2f} {r['ms_per_it']:8.1f} {peak} {s.get('render', 0):7.1f} "
              f"{s.get('diffusion', 0):7.1f} {s.get('optimizer', 0):7.1f} {r['guidance_tflop']:9.3f} {r['floor_ms']:9.2f} "
              f"{r['x_floor']:8.1f}  {r['source']}{' [' + ', '.join(r['options']) + ']' if r['options'] else ''}")
    print("render / diffus. / optim.: GPU ms per iteration between phase events (CPU: host ms); "
          "floor: guidance FLOPs / measured matmul rate")
    for r in results:
        if "error" in r:
            continue
        top = {k: v for k, v in r["flops_by_module_tflop"].items() if "." not in k and k != "Global"}
        parts = ", ".join(f"{k} {v * 1e3:.4g}" for k, v in sorted(top.items(), key=lambda kv: -kv[1]) if v > 0)
        print(f"GFLOP per step in the diffusion models (fwd+bwd), {r['stage']}: {parts}; "
              f"total {r['guidance_tflop'] * 1e3:.4g}")
    for r in results:
        target = TARGETS.get(r["stage"])
        if not target or "error" in r or device.type != "cuda":
            continue
        checks = [
            f"it/s {r['it_s']:.1f} >= {target['it_s']:.0f}: {'PASS' if r['it_s'] >= target['it_s'] else 'FAIL'}",
            f"x floor {r['x_floor']:.2f} <= {target['x_floor']:.0f}: {'PASS' if r['x_floor'] <= target['x_floor'] else 'FAIL'}",
            f"peak {r['peak_gb']:.2f} GB <= {target['peak_gb']:.0f}: {'PASS' if r['peak_gb'] <= target['peak_gb'] else 'FAIL'}",
        ]
        print(f"targets {r['stage']}: " + "; ".join(checks))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", default="all", help=f"all or a comma-separated subset of {', '.join(STAGES)}")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--tiny", action="store_true", help="tiny random models and 64² renders (CPU smoke run)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 30; tiny: 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default 20; tiny: 1)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"],
                   help="diffusion weights (auto: the guidance's default, fp16 on GPU)")
    p.add_argument("--channels-last", action="store_true", help="UNet/VAE in channels_last memory format")
    p.add_argument("--attention-slicing", action="store_true", help="diffusers attention slicing (saves memory)")
    p.add_argument("--vae-fp32", action="store_true", help="keep the VAE in fp32")
    p.add_argument("--compile-unet", default="off", choices=["off", "default", "reduce-overhead", "max-autotune"],
                   help="torch.compile the UNet (reduce-overhead uses CUDA graphs)")
    p.add_argument("--fused-adam", action="store_true", help="Adam(fused=True) on CUDA")
    p.add_argument("--no-triton", action="store_true", help="LIFT3D_DISABLE_TRITON=1: the PyTorch reference kernels")
    p.add_argument("--stand-in", action="store_true", help="use the stand-in configs even where USD's exist")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--models-dir", default=None,
                   help="keep the random-weight model folders here and reuse them when present (default: a temporary folder)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.no_triton:
        os.environ["LIFT3D_DISABLE_TRITON"] = "1"
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and not args.tiny:
        print("full-size models on the CPU would take hours per iteration: use --tiny for a CPU smoke run")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    args.iters = args.iters or (2 if args.tiny else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 20)
    names = list(STAGES) if args.stage == "all" else [s.strip() for s in args.stage.split(",") if s.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        print(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    dtype_name = {"bf16": "bf16", "fp32": "fp32"}.get(args.dtype, "fp16") if device.type == "cuda" else "fp32"
    mm_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    from lift3d.plugins import load_plugins

    load_plugins()  # custom/usd registers USD's guidances and systems
    tflops = matmul_tflops(device, mm_dtype)
    results = []
    with tempfile.TemporaryDirectory(prefix="lift3d-fullsize-") as tmp:
        models_root = Path(args.models_dir) if args.models_dir else Path(tmp)
        models = Models(models_root, device, args.tiny)
        for name in names:
            stage = STAGES[name]
            print(f"stage {name}: {stage.title} ...", flush=True)
            try:
                results.append(run_stage(stage, args, models, device, tflops))
            except Exception as exc:  # a stage whose components are not there yet must not stop the others
                traceback.print_exc()
                first_line = (str(exc).splitlines() or [""])[0][:160]
                results.append({"stage": name, "error": f"{type(exc).__name__}: {first_line}"})
        build_s = models.build_s
    print_report(results, device, tflops, dtype_name, args, build_s)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "matmul_tflops": tflops, "results": results},
                                              indent=2, default=str))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
