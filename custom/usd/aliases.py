"""The USD repository's registered names (YoujiaZhang/USD, a copy of threestudio), as aliases of
lift3d's USD components with that repository's defaults, so that its four configs run unchanged
(docs/compat.md, docs/methods/usd.md):

- `usd-text-to-3d-system`: `usd-text-system` + the original's `stage` / `lambda_vsd` keys (original_keys.py).
  (`usd-system`, the image-to-3D system, has the same name in both and takes the same keys: systems.py.)
- `usd-text-to-3D_guidance`: `usd-text-guidance` (USD's text guidance; identical defaults).
- `usd-guidance`: `usd-image-guidance` with the original's key layout: `pretrained_model_name_or_path`
  is Stable Diffusion there, the Zero-1-to-3 model (hard-coded in the original as
  ../threestudio/models/zero123-xl-diffusers) is `zero123_model_name_or_path`, the input image is
  `image_path`, and the reference camera is the original's fixed one (elevation 15°, azimuth 90°,
  distance 1.5).
- `usd-random-camera-datamodule`: `usd-image-datamodule` with the original's flat random-camera keys;
  the reference view is the original's hard-coded camera (elevation 15°, azimuth 90°, distance 1.5,
  fovy 0.6911 rad = 39.5978°) at the random views' size, one per batch; the test pass is its 120
  views at azimuth 360k/120 and a random elevation in [-10°, 45°]; the input image is taken from
  `system.guidance.image_path` when `data.image_path` is not given (lift3d.compat.link_keys).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
from omegaconf import OmegaConf

from lift3d.compat import link_keys
from lift3d.config import parse_structured
from lift3d.data.random_camera import RandomCameraDataModuleConfig
from lift3d.registry import register

from .data import USDImageDataModule, USDImageDataModuleConfig
from .image_guidance import USDImageGuidance
from .original_keys import OriginalSystemKeys, OriginalUSDSystem
from .systems import USDTextSystem
from .text_guidance import USDTextGuidance

# the original's reference camera (threestudio/data/usd_data.py: pose_spherical(0, -15, 1.5), fovy 0.6911 rad)
REFERENCE_ELEVATION_DEG, REFERENCE_AZIMUTH_DEG, REFERENCE_DISTANCE = 15.0, 90.0, 1.5
REFERENCE_FOVY_DEG = 39.597755335771296


@register("usd-text-to-3d-system")
class USDTextTo3DSystem(OriginalUSDSystem, USDTextSystem):
    @dataclass
    class Config(OriginalSystemKeys, USDTextSystem.Config):
        pass


@register("usd-text-to-3D_guidance")
class USDTextTo3DGuidance(USDTextGuidance):
    pass


@register("usd-guidance")
class USDRepoImageGuidance(USDImageGuidance):
    @dataclass
    class Config(USDImageGuidance.Config):
        pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"  # the original's: Stable Diffusion
        zero123_model_name_or_path: str = "bennyguo/zero123-xl-diffusers"
        sd_model_name_or_path: Optional[str] = None  # null: the original layout above (set once translated)
        image_path: str = ""  # the input image (the original's key)
        cond_elevation_deg: float = REFERENCE_ELEVATION_DEG
        cond_azimuth_deg: float = REFERENCE_AZIMUTH_DEG
        cond_camera_distance: float = REFERENCE_DISTANCE
        # the original's switches, accepted (lift3d's frozen-model layer decides precision and attention)
        enable_memory_efficient_attention: bool = False
        enable_sequential_cpu_offload: bool = False
        enable_attention_slicing: bool = False
        enable_channels_last_format: bool = False
        half_precision_weights: bool = True
        view_dependent_prompting: bool = True
        camera_condition_type: str = "extrinsics"

    @classmethod
    def lift3d_layout(cls, cfg: Any) -> Any:
        """`cfg` with usd-image-guidance's meaning of the model keys and the image (idempotent)."""
        cfg = parse_structured(cls.Config, cfg, "system.guidance", "guidance 'usd-guidance'")
        if cfg.sd_model_name_or_path is None:
            cfg.sd_model_name_or_path = cfg.pretrained_model_name_or_path
            cfg.pretrained_model_name_or_path = cfg.zero123_model_name_or_path
        if not cfg.cond_image_path:
            cfg.cond_image_path = cfg.image_path
        return cfg

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        super().validate_config(cls.lift3d_layout(cfg), path)

    def configure(self) -> None:
        self.cfg = self.lift3d_layout(self.cfg)
        super().configure()


@dataclass
class USDRandomCameraDataModuleConfig(RandomCameraDataModuleConfig):
    image_path: str = ""  # null in the original (its guidance holds it): linked to system.guidance.image_path
    default_elevation_deg: float = REFERENCE_ELEVATION_DEG
    default_azimuth_deg: float = REFERENCE_AZIMUTH_DEG
    default_camera_distance: float = REFERENCE_DISTANCE
    default_fovy_deg: float = REFERENCE_FOVY_DEG
    test_elevation_range: Optional[List[float]] = field(default_factory=lambda: [-10.0, 45.0])
    test_elevation_seed: int = 0


_REFERENCE_KEYS = ("image_path", "default_elevation_deg", "default_azimuth_deg", "default_camera_distance",
                   "default_fovy_deg", "test_elevation_range", "test_elevation_seed")


def usd_image_config(cfg: Any, path: str = "data") -> Any:
    """The usd-image-datamodule config of a usd-random-camera-datamodule section: the random-camera
    keys under random_camera, the reference view at the (first) training size, batch 1."""
    flat = parse_structured(USDRandomCameraDataModuleConfig, cfg, path, "data module 'usd-random-camera-datamodule'")
    plain = OmegaConf.to_container(flat, resolve=True)
    random_camera = {f.name: plain[f.name] for f in fields(RandomCameraDataModuleConfig)}
    first = lambda v: v[0] if isinstance(v, list) else v  # noqa: E731
    nested = {k: plain[k] for k in _REFERENCE_KEYS}
    nested.update(height=first(plain["height"]), width=first(plain["width"]), batch_size=1, random_camera=random_camera)
    return parse_structured(USDImageDataModuleConfig, nested, path, "data module 'usd-random-camera-datamodule'")


@register("usd-random-camera-datamodule")
class USDRandomCameraDataModule(pl.LightningDataModule):
    Config = USDRandomCameraDataModuleConfig

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, "data", "data module 'usd-random-camera-datamodule'")
        self.inner = USDImageDataModule(usd_image_config(self.cfg))
        self.train_dataset = self.inner.train_dataset  # the system updates and advances it (resolution stages)
        self.val_dataset, self.test_dataset = self.inner.val_dataset, self.inner.test_dataset

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "data") -> None:
        USDImageDataModule.validate_config(usd_image_config(cfg, path), path)

    def setup(self, stage: Optional[str] = None) -> None:
        self.inner.setup(stage)

    def train_dataloader(self):
        return self.inner.train_dataloader()

    def val_dataloader(self):
        return self.inner.val_dataloader()

    def test_dataloader(self):
        return self.inner.test_dataloader()

    def predict_dataloader(self):
        return self.inner.predict_dataloader()

    def state_dict(self) -> Dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict)


link_keys("usd-random-camera-datamodule", {"data.image_path": "system.guidance.image_path"})

__all__ = ["USDRandomCameraDataModule", "USDRepoImageGuidance", "USDTextTo3DGuidance", "USDTextTo3DSystem",
           "usd_image_config"]
