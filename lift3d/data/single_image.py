"""`single-image-datamodule`: the reference view of image-to-3D plus random cameras.

Training batch (B = `batch_size`; the reference view repeated B times):
  the camera keys of `random_camera.CAMERA_BATCH_KEYS` for the reference camera (light at the
  camera), plus rgb [B, H, W, 3] in [0, 1] (straight colour as stored in the image),
  alpha [B, H, W, 1] (the image's continuous alpha in [0, 1]: composite the rgb with it,
  `image_io.composite(rgb, alpha, bg)` = rgb * alpha + bg * (1 - alpha), as threestudio does) and
  mask [B, H, W, 1] (1 where alpha > 0.5, else 0: the target of mask losses), and, when
  `use_random_camera`, batch["random_camera"]: a batch of `RandomCameraIterableDataset`
  configured by `data.random_camera` (its own resolution, batch size and milestones).
With `requires_depth` / `requires_normal` (threestudio's keys and file names), the estimates next
to the image are loaded too: for `<name>_rgba.png`, `<name>_depth.png` -> ref_depth [B, H, W, 1] and
`<name>_normal.png` -> ref_normal [B, H, W, 3], pixel values / 255 (any bit depth divided by 255, as
threestudio); the normal's channels in the order threestudio's OpenCV reader gives them (B, G, R of the
stored file), so a file written by its preprocessing (cv2.imwrite of the estimator's x, y, z) reads
back as x, y, z. Resized to the reference resolution (area averaging when shrinking, bilinear when
enlarging). They feed the losses lambda_depth / lambda_depth_rel / lambda_normal
(lift3d.systems.reference_geometry).
Validation / test / predict: the turntables of `random-camera-datamodule`, configured by
`data.random_camera.eval_*` / `n_val_views` / `n_test_views`.

Reference camera defaults (elevation 0°, azimuth 0° = the +x axis, distance 1.2, fovy 60°) are
generic, threestudio's dataclass defaults except its azimuth -180. Methods set their own: USD
uses distance 1.5 and fovy 39.6° (docs/methods/usd.md §2); threestudio's Zero-1-to-3 configs
use distance 3.8 and fovy 20°. Keep `random_camera.camera_distance_range`/`fovy_range` and the
`eval_*` values consistent with the reference camera (e.g. `${data.default_camera_distance}`).

The image is checked (exists, decodes, has a transparent background) by `validate_config`,
which runs when the experiment config is validated and when the data module is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from lift3d.config import parse_structured
from lift3d.data.cameras import spherical_to_cartesian
from lift3d.data.image_io import binary_mask, load_rgb_alpha, read_rgba
from lift3d.data.random_camera import (
    RandomCameraDataModule,
    RandomCameraDataModuleConfig,
    RandomCameraEvalDataset,
    RandomCameraIterableDataset,
    _stage_index,
    camera_batch,
    eval_dataloader,
    resolution_stages,
    resolve_seed,
    train_dataloader,
)
from lift3d.errors import ConfigError
from lift3d.registry import register
from lift3d.utils.config_checks import check_scalar, fail
from lift3d.utils.base import Updateable
from lift3d.data.seeded_stream import SeededBatchStream


@dataclass
class SingleImageDataModuleConfig:
    # int, or a list switched at resolution_milestones
    height: Any = 96
    width: Any = 96
    resolution_milestones: List[int] = field(default_factory=list)
    default_elevation_deg: float = 0.0
    default_azimuth_deg: float = 0.0
    default_camera_distance: float = 1.2
    default_fovy_deg: float = 60.0
    image_path: str = ""  # RGBA image of the object on a transparent background (required)
    use_random_camera: bool = True
    random_camera: RandomCameraDataModuleConfig = field(default_factory=RandomCameraDataModuleConfig)
    rays_noise_scale: float = 0.0  # std of Gaussian noise on reference rays, fresh every batch
    rays_d_normalize: bool = True
    batch_size: int = 1
    # threestudio's depth/normal estimates next to the image (<name>_depth.png / <name>_normal.png)
    requires_depth: bool = False
    requires_normal: bool = False
    near: float = 0.01  # projection planes of the reference camera
    far: float = 100.0
    seed: Optional[int] = None  # null: torch.initial_seed() (set by the experiment seed)


COMPONENT = "data module 'single-image-datamodule'"


def _as_config(cfg: Any, path: str) -> Any:
    if isinstance(cfg, DictConfig) and issubclass(OmegaConf.get_type(cfg) or object, SingleImageDataModuleConfig):
        return cfg  # parsed already (also a subclass's config, e.g. single-image2-datamodule's)
    return parse_structured(SingleImageDataModuleConfig, cfg, path=path, component=COMPONENT)


class SingleImageIterableDataset(SeededBatchStream):
    """Endless stream of reference-view batches (+ random cameras); `sample()` makes one."""

    def __init__(self, cfg: Any, path: str = "data") -> None:
        super().__init__()
        self.cfg = _as_config(cfg, path)
        self.path = path
        stages, self.resolution_milestones = resolution_stages(self.cfg, path, keys=("height", "width"))
        self.heights, self.widths = stages["height"], stages["width"]
        self.batch_size = int(self.cfg.batch_size)
        self.generator = torch.Generator().manual_seed(resolve_seed(self.cfg.seed))
        self.random_camera: Optional[RandomCameraIterableDataset] = None
        if self.cfg.use_random_camera:
            # seeded with random_camera.seed, else data.seed (+1 so that the random cameras do
            # not replay the ray-noise stream), else torch.initial_seed() + 1
            self.random_camera = RandomCameraIterableDataset(
                self.cfg.random_camera, path=f"{path}.random_camera",
                default_seed=resolve_seed(self.cfg.seed, offset=1),
            )
        # reference camera [1, ...]
        self.elevation = torch.tensor([float(self.cfg.default_elevation_deg)])
        self.azimuth = torch.tensor([float(self.cfg.default_azimuth_deg)])
        self.camera_distance = torch.tensor([float(self.cfg.default_camera_distance)])
        self.fovy = torch.deg2rad(torch.tensor([float(self.cfg.default_fovy_deg)]))
        self.camera_position = spherical_to_cartesian(self.elevation, self.azimuth, self.camera_distance)
        # images per resolution stage, loaded now so that a bad file fails before training
        self._images: Dict[Tuple[int, int], Tuple[Tensor, Tensor]] = {}
        self._estimates: Dict[Tuple[str, int, int], Tensor] = {}  # (kind, H, W) -> [H, W, C]
        for h, w in zip(self.heights, self.widths):
            if (h, w) not in self._images:
                self._images[(h, w)] = load_rgb_alpha(self.cfg.image_path, h, w, key=f"{path}.image_path")
            for kind in estimate_kinds(self.cfg):
                self._estimates[(kind, h, w)] = load_estimate(self.cfg.image_path, kind, h, w, path)
        self._set_stage(0)

    def _set_stage(self, stage: int) -> None:
        self.stage = stage
        self.height: int = self.heights[stage]
        self.width: int = self.widths[stage]
        self.rgb, self.alpha = self._images[(self.height, self.width)]  # [H, W, 3], [H, W, 1]
        self.mask = binary_mask(self.alpha)  # [H, W, 1]
        self._reference = self._reference_batch(1, noise=False)

    def update_step(self, epoch: int, global_step: int) -> None:
        self._set_stage(_stage_index(self.resolution_milestones, global_step))
        if self.random_camera is not None:  # idempotent; also reached by do_update_step
            self.random_camera.update_step(epoch, global_step)

    def _reference_batch(self, B: int, noise: bool) -> Dict[str, Any]:
        rep = lambda t: t.repeat(B, *([1] * (t.dim() - 1)))  # noqa: E731
        return camera_batch(
            rep(self.camera_position), rep(self.fovy), self.height, self.width,
            rep(self.camera_position), rep(self.elevation), rep(self.azimuth),
            rep(self.camera_distance), near=self.cfg.near, far=self.cfg.far,
            rays_d_normalize=self.cfg.rays_d_normalize,
            rays_noise_scale=float(self.cfg.rays_noise_scale) if noise else 0.0,
            generator=self.generator,
        )

    def sample(self) -> Dict[str, Any]:
        """One training batch (see the module docstring)."""
        B = self.batch_size
        if self.cfg.rays_noise_scale > 0:
            batch = self._reference_batch(B, noise=True)
        else:
            batch = {
                k: v.repeat(B, *([1] * (v.dim() - 1))) if isinstance(v, Tensor) else v
                for k, v in self._reference.items()
            }
        batch["rgb"] = self.rgb[None].repeat(B, 1, 1, 1)
        batch["alpha"] = self.alpha[None].repeat(B, 1, 1, 1)
        batch["mask"] = self.mask[None].repeat(B, 1, 1, 1)
        for kind in estimate_kinds(self.cfg):  # ref_depth [B,H,W,1], ref_normal [B,H,W,3]
            batch[f"ref_{kind}"] = self._estimates[(kind, self.height, self.width)][None].repeat(B, 1, 1, 1)
        if self.random_camera is not None:
            batch["random_camera"] = self.random_camera.sample()
        return batch

    # SeededBatchStream: iteration and the checkpointed state (one entry per batch not yet trained on)
    def stream_state(self) -> Dict[str, Any]:
        state = {"generator": self.generator.get_state()}
        if self.random_camera is not None:
            state["random_camera"] = self.random_camera.stream_state()
        return state

    def load_stream_state(self, state: Dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
        if self.random_camera is not None and "random_camera" in state:
            self.random_camera.load_stream_state(state["random_camera"])


# ---------------------------------------------------------------------------------- depth / normal estimates
_ESTIMATE_CHANNELS = {"depth": 1, "normal": 3}


def estimate_kinds(cfg: Any) -> List[str]:
    """The estimates the config asks for: "depth" (requires_depth), "normal" (requires_normal)."""
    return [k for k in ("depth", "normal") if bool(cfg[f"requires_{k}"])]


def estimate_path(image_path: str, kind: str) -> str:
    """threestudio's file name: <name>_rgba.png -> <name>_<kind>.png."""
    if not str(image_path).endswith("_rgba.png"):
        return ""
    return str(image_path)[: -len("_rgba.png")] + f"_{kind}.png"


def read_estimate(image_path: str, kind: str, path: str = "data") -> np.ndarray:
    """The stored estimate as float32 [H, W, C] (file values, channels as OpenCV reads them: the
    normal's B, G, R), or ConfigError naming the file and the switch."""
    from PIL import Image, UnidentifiedImageError

    file = estimate_path(image_path, kind)
    switch = f"{path}.requires_{kind}"
    if not file:
        raise ConfigError(f"{switch}=true: the {kind} estimate is looked up as <name>_{kind}.png next to "
                          f"<name>_rgba.png, but {path}.image_path='{image_path}' does not end in _rgba.png. "
                          f"Rename the files that way or set {switch}=false.")
    if not Path(file).is_file():
        raise ConfigError(f"{switch}=true but the {kind} estimate '{file}' does not exist: put it next to "
                          f"{path}.image_path (threestudio's preprocessing writes it) or set {switch}=false.")
    try:
        with Image.open(file) as im:
            im.load()
            arr = np.asarray(im).astype(np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the {kind} estimate '{file}' ({type(exc).__name__}: {exc}): "
                          f"re-export it as a PNG or set {switch}=false.") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if kind == "depth":
        return arr[..., :1]  # a grey image (first channel if stored as colour)
    if arr.shape[-1] < 3:
        raise ConfigError(f"the normal estimate '{file}' has {arr.shape[-1]} channel(s): it needs 3 (RGB). "
                          f"Re-export it or set {switch}=false.")
    return arr[..., 2::-1].copy()  # OpenCV's channel order (B, G, R), as threestudio reads it


def load_estimate(image_path: str, kind: str, height: int, width: int, path: str = "data") -> Tensor:
    """The estimate resized to [height, width, C], values / 255 (see the module docstring)."""
    arr = torch.from_numpy(read_estimate(image_path, kind, path) / 255.0).permute(2, 0, 1)[None]  # [1,C,h,w]
    if tuple(arr.shape[-2:]) != (height, width):
        shrinking = height <= arr.shape[-2] and width <= arr.shape[-1]
        arr = torch.nn.functional.interpolate(arr, size=(height, width), mode="area" if shrinking else "bilinear",
                                              **({} if shrinking else {"align_corners": False}))
    return arr[0].permute(1, 2, 0).contiguous().float()


@register("single-image-datamodule")
class SingleImageDataModule(pl.LightningDataModule):
    """Reference view of an RGBA image + random cameras (train); turntables (val/test/predict)."""

    Config = SingleImageDataModuleConfig
    COMPONENT = COMPONENT
    train_dataset_class = SingleImageIterableDataset  # single-image2-datamodule adds a second camera stream

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, path="data", component=self.COMPONENT)
        self.validate_config(self.cfg)
        self.train_dataset = self.train_dataset_class(self.cfg)
        self.val_dataset = RandomCameraEvalDataset(self.cfg.random_camera, "val", path="data.random_camera")
        self.test_dataset = RandomCameraEvalDataset(self.cfg.random_camera, "test", path="data.random_camera")

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "data") -> None:
        """Raise ConfigError for an inconsistent config or an unusable image (see image_io)."""
        cfg = _as_config(cfg, path)
        resolution_stages(cfg, path, keys=("height", "width"))
        if cfg.batch_size < 1:
            fail(f"{path}.batch_size", f"= {cfg.batch_size} must be >= 1", "use a positive integer")
        check_scalar(cfg, "default_elevation_deg", path, lo=-90, hi=90)
        check_scalar(cfg, "default_camera_distance", path, lo=0, lo_open=True)
        check_scalar(cfg, "default_fovy_deg", path, lo=0, hi=180, lo_open=True, hi_open=True)
        check_scalar(cfg, "default_azimuth_deg", path)
        check_scalar(cfg, "rays_noise_scale", path, lo=0)
        near = check_scalar(cfg, "near", path, lo=0, lo_open=True)
        if not float(cfg.far) > near:
            fail(f"{path}.far", f"= {cfg.far} is not greater than {path}.near = {near}",
                  "set far > near, e.g. near: 0.01, far: 100")
        RandomCameraDataModule.validate_config(cfg.random_camera, path=f"{path}.random_camera")
        read_rgba(cfg.image_path, key=f"{path}.image_path")
        for kind in estimate_kinds(cfg):
            read_estimate(cfg.image_path, kind, path)

    def setup(self, stage: Optional[str] = None) -> None:
        pass  # everything is built in __init__, so `train_dataset` always exists

    def train_dataloader(self) -> DataLoader:
        return train_dataloader(self.train_dataset)

    def val_dataloader(self) -> DataLoader:
        return eval_dataloader(self.val_dataset, self.cfg.random_camera.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return eval_dataloader(self.test_dataset, self.cfg.random_camera.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return eval_dataloader(self.test_dataset, self.cfg.random_camera.eval_batch_size)

    def state_dict(self) -> Dict[str, Any]:
        return {"train_dataset": self.train_dataset.state_dict()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.train_dataset.load_state_dict(state_dict.get("train_dataset", {}))
