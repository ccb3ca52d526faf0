"""The view-distillation pipeline's config (custom/usd/configs/usd-view-distillation.yaml) and the
values it takes from the USD image-to-3D run (docs/methods/usd.md §4).

Loading is strict, as every lift3d config: the YAML and `key=value` overrides are checked against
`ViewDistillationConfig` before any work starts; an unknown key is a ConfigError naming it, its
section and the valid keys. `resolve_inputs` then fills the nulls from the run's saved config
(`<run>/configs/parsed.yaml`: data.image_path, data.default_elevation_deg / default_azimuth_deg /
default_camera_distance, system.guidance.pretrained_model_name_or_path / sd_model_name_or_path /
zero123_guidance_type) and checks the run directory, the test-pass dataset, the input image, the
models and the NeuS config — every problem a clear error before the first step runs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from lift3d.config import check_keys, check_mandatory, parse_overrides, parse_structured
from lift3d.data.image_io import read_rgba
from lift3d.errors import ConfigError
from lift3d.models.frozen import SD_TEXT_FILES, resolve_model
from lift3d.models.stable_diffusion import StableDiffusion
from lift3d.models.zero123 import Zero123
from lift3d.utils.paths import REPO_ROOT
from lift3d.utils.rgba_dataset import test_pass_datasets

DEFAULT_SD = "stabilityai/stable-diffusion-2-1-base"
DEFAULT_ZERO123 = "bennyguo/zero123-xl-diffusers"
DEFAULT_CONFIG = REPO_ROOT / "custom/usd/configs/usd-view-distillation.yaml"


@dataclass
class ReferenceConfig:
    elevation_deg: Optional[float] = None  # null: data.default_elevation_deg of the run
    azimuth_deg: Optional[float] = None
    camera_distance: Optional[float] = None


@dataclass
class ModelsConfig:
    sd: Optional[str] = None  # null: the run's system.guidance.sd_model_name_or_path (else SD 2.1-base)
    zero123: Optional[str] = None  # null: the run's system.guidance.pretrained_model_name_or_path
    zero123_guidance_type: Optional[str] = None  # null: the run's (zero123-guidance | stable-zero123-guidance)
    half_precision_weights: str = "auto"  # sampling; LoRA training is always float32


@dataclass
class NovelViewsConfig:
    num_views: int = 16
    elevations_deg: Optional[list] = None  # null: the reference elevation; a list is cycled over the views
    camera_distance: Optional[float] = None  # null: the reference distance
    num_steps: int = 50
    guidance_scale: float = 3.0
    resolution: Optional[int] = None  # null: Zero-1-to-3's native 256
    batch_size: int = 4


@dataclass
class ClassImagesConfig:
    num_images: int = 200
    num_steps: int = 50
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    batch_size: int = 4


@dataclass
class LoraTrainingConfig:
    rank: int = 4
    alpha: Optional[float] = None  # null: = rank (scale 1)
    target_modules: list = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    learning_rate: float = 2.0e-4
    weight_decay: float = 1.0e-2
    steps_a: int = 600
    steps_b: int = 5
    batch_size: int = 1  # instances per step; as many prior images
    prior_loss_weight: float = 1.0
    resolution: Optional[int] = None  # null: SD's native 512


@dataclass
class RefineConfig:
    noise_timestep: int = 200
    num_steps: int = 10
    guidance_scale: float = 6.5
    negative_prompt: str = ""
    resolution: Optional[int] = None  # null: SD's native 512
    batch_size: int = 4


@dataclass
class NeuSConfig:
    enabled: bool = True
    config: str = "configs/neus-multiview.yaml"
    overrides: list = field(default_factory=list)  # launch.py key=value overrides of the --train call
    export_overrides: list = field(default_factory=list)  # ... of the --export call
    timeout_s: Optional[int] = None


@dataclass
class ViewDistillationConfig:
    run: str = "???"  # the USD image-to-3D trial folder
    out_dir: Optional[str] = None  # null: <run>/view-distillation
    dataset: Optional[str] = None  # null: the newest <run>/save/it*-test-rgba (with transforms.json)
    image_path: Optional[str] = None  # null: data.image_path of the run
    seed: int = 0
    progress: bool = True
    class_name: str = "object"
    token_v: str = "sks"  # [V]
    token_s: str = "ohwx"  # [S]
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    novel_views: NovelViewsConfig = field(default_factory=NovelViewsConfig)
    class_images: ClassImagesConfig = field(default_factory=ClassImagesConfig)
    lora: LoraTrainingConfig = field(default_factory=LoraTrainingConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    neus: NeuSConfig = field(default_factory=NeuSConfig)


COMPONENT = "the view-distillation config (custom/usd/view_distillation/config.py)"


def load_config(path: str | Path, overrides: list[str] = ()) -> DictConfig:
    """YAML + key=value overrides -> a typed config; unknown keys and bad values are ConfigErrors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: '{path}'. Pass --config {DEFAULT_CONFIG.relative_to(REPO_ROOT)}.")
    try:
        raw = OmegaConf.merge(OmegaConf.load(path), parse_overrides(list(overrides)))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot read config '{path}': {exc}") from None
    check_keys(ViewDistillationConfig, raw, "", COMPONENT)
    check_mandatory(raw)
    cfg = parse_structured(ViewDistillationConfig, raw, "", COMPONENT)
    check_values(cfg)
    return cfg


def check_values(cfg: Any) -> None:
    def positive(key: str, value: Any, minimum: int = 1) -> None:
        if value is None or value < minimum:
            raise ConfigError(f"{key} = {value}: must be >= {minimum}.")

    positive("novel_views.num_views", cfg.novel_views.num_views)
    positive("novel_views.num_steps", cfg.novel_views.num_steps)
    positive("class_images.num_images", cfg.class_images.num_images)
    positive("class_images.num_steps", cfg.class_images.num_steps)
    positive("lora.rank", cfg.lora.rank)
    positive("lora.steps_a", cfg.lora.steps_a, 0)
    positive("lora.steps_b", cfg.lora.steps_b, 0)
    positive("lora.batch_size", cfg.lora.batch_size)
    positive("refine.num_steps", cfg.refine.num_steps, 0)
    for key in ("novel_views.batch_size", "class_images.batch_size", "refine.batch_size"):
        positive(key, OmegaConf.select(cfg, key))
    if not 0 <= cfg.refine.noise_timestep <= 999:
        raise ConfigError(f"refine.noise_timestep = {cfg.refine.noise_timestep}: give a timestep in [0, 999] (≈ 200).")
    for key in ("novel_views.resolution", "lora.resolution", "refine.resolution"):
        value = OmegaConf.select(cfg, key)
        if value is not None and (value < 8 or value % 8):
            raise ConfigError(f"{key} = {value}: use a multiple of 8 or null.")
    if not cfg.lora.target_modules:
        raise ConfigError("lora.target_modules is empty: use [to_q, to_k, to_v, to_out.0].")
    if cfg.novel_views.elevations_deg is not None and len(cfg.novel_views.elevations_deg) == 0:
        raise ConfigError("novel_views.elevations_deg is empty: give a list of degrees or null.")
    for key in ("neus.overrides", "neus.export_overrides"):
        for item in OmegaConf.select(cfg, key):
            if "=" not in str(item):
                raise ConfigError(f"{key}: '{item}' is not a key=value override of launch.py.")


# ---------------------------------------------------------------------------------- the run's inputs
@dataclass
class Inputs:
    """Everything the steps read, resolved and checked."""

    run: Path
    out_dir: Path
    dataset: Path  # folder with transforms.json + images
    num_frames: int
    image_path: Path
    elevation_deg: float
    azimuth_deg: float
    camera_distance: float
    sd: str  # loadable paths / ids
    zero123: str
    zero123_guidance_type: str
    neus_config: Optional[Path]


def find_dataset(run: Path, dataset: Optional[str]) -> Path:
    if dataset:
        folder = Path(dataset)
        if not (folder / "transforms.json").is_file():
            raise ConfigError(f"dataset={dataset}: no transforms.json there. Give a folder written by a USD test "
                              f"pass (<run>/save/it<N>-test-rgba) or dataset=null to find it in the run.")
        return folder
    found = test_pass_datasets(run)
    if not found:
        raise ConfigError(
            f"run={run}: no test-pass dataset (save/it<N>-test-rgba/transforms.json) in the run directory. "
            f"Run the USD test pass first (it writes the turntable views with system.save_rgba_dataset=true, "
            f"the default of usd-system): python launch.py --config {run}/configs/parsed.yaml --test "
            f"resume={run}/ckpts/last.ckpt — or pass dataset=<folder with transforms.json + images/>."
        )
    return found[-1]


def check_dataset(folder: Path) -> int:
    """Number of frames of transforms.json; ConfigError when it is unreadable or images are missing."""
    try:
        meta = json.loads((folder / "transforms.json").read_text())
        frames = meta["frames"]
    except Exception as exc:
        raise ConfigError(f"{folder}/transforms.json is not a readable multi-view dataset ({exc}). "
                          f"Rerun the USD test pass to rewrite it.") from None
    missing = [f.get("file_path") for f in frames if not (folder / str(f.get("file_path"))).is_file()]
    if not frames or missing:
        raise ConfigError(f"{folder}/transforms.json: {'no frames' if not frames else f'missing images {missing[:3]}'}. "
                          f"Rerun the USD test pass to rewrite the dataset.")
    return len(frames)


def _resolve_path(value: str) -> Path:
    p = Path(value).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    return p


def resolve_inputs(cfg: Any) -> Inputs:
    """Fill the config's nulls from the run and check every input (see the module docstring)."""
    run = Path(cfg.run).expanduser()
    if not run.is_dir():
        raise ConfigError(f"run={cfg.run}: not a directory. Pass the trial folder of a USD image-to-3D run, "
                          f"e.g. run=outputs/usd-patch/<trial>.")
    parsed_path = run / "configs/parsed.yaml"
    parsed = OmegaConf.load(parsed_path) if parsed_path.is_file() else OmegaConf.create({})

    def from_run(value: Any, key: str, fallback: Any = None, what: str = "") -> Any:
        if value is not None:
            return value
        found = OmegaConf.select(parsed, key, default=None)
        if found is not None:
            return found
        if fallback is not None:
            return fallback
        raise ConfigError(f"{what or key}: not given and not found in {parsed_path} ({key}). "
                          f"Set it on the command line, e.g. {what}=<value>.")

    dataset = find_dataset(run, cfg.dataset)
    num_frames = check_dataset(dataset)
    image = _resolve_path(str(from_run(cfg.image_path, "data.image_path", what="image_path")))
    read_rgba(str(image), key="image_path")  # missing / not RGBA -> ConfigError with the fix
    elevation = float(from_run(cfg.reference.elevation_deg, "data.default_elevation_deg", what="reference.elevation_deg"))
    azimuth = float(from_run(cfg.reference.azimuth_deg, "data.default_azimuth_deg", what="reference.azimuth_deg"))
    distance = float(from_run(cfg.reference.camera_distance, "data.default_camera_distance",
                              what="reference.camera_distance"))
    sd_name = str(from_run(cfg.models.sd, "system.guidance.sd_model_name_or_path", DEFAULT_SD))
    zero123_name = str(from_run(cfg.models.zero123, "system.guidance.pretrained_model_name_or_path", DEFAULT_ZERO123))
    zero123_type = str(from_run(cfg.models.zero123_guidance_type, "system.guidance.zero123_guidance_type",
                                "zero123-guidance"))
    sd = StableDiffusion.resolve(sd_name, "Stable Diffusion for models.sd")
    resolve_model(sd_name, "Stable Diffusion text encoder for models.sd", SD_TEXT_FILES)
    zero123 = Zero123.resolve(zero123_name, "Zero-1-to-3 for models.zero123")
    neus_config = None
    if cfg.neus.enabled:
        neus_config = _resolve_path(cfg.neus.config)
        if not neus_config.is_file():
            raise ConfigError(f"neus.config={cfg.neus.config}: the NeuS reconstruction config does not exist. "
                              f"Point neus.config at a multi-view NeuS config, or set neus.enabled=false to stop "
                              f"after the refined dataset.")
    out_dir = Path(cfg.out_dir).expanduser() if cfg.out_dir else run / "view-distillation"
    return Inputs(run=run, out_dir=out_dir, dataset=dataset, num_frames=num_frames, image_path=image,
                  elevation_deg=elevation, azimuth_deg=azimuth, camera_distance=distance, sd=sd, zero123=zero123,
                  zero123_guidance_type=zero123_type, neus_config=neus_config)


__all__ = ["DEFAULT_CONFIG", "Inputs", "ViewDistillationConfig", "find_dataset", "load_config", "resolve_inputs"]
