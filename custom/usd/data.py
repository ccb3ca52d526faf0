"""`usd-image-datamodule`: `single-image-datamodule` plus USD's test turntable (docs/methods/usd.md §2).

Everything of `single-image-datamodule` is unchanged — it already takes the reference camera
(`default_elevation_deg`, `default_azimuth_deg`, `default_camera_distance`, `default_fovy_deg`)
from config and serves batches of any size (`batch_size` reference views, and
`random_camera.batch_size` random views, each with its own camera relative to the reference).
The one addition is the test pass of the original: `n_test_views` views at azimuth 360 k / n with a
random elevation per view, uniform in `test_elevation_range` (seeded by `test_elevation_seed`,
fixed per view index, so the views do not depend on the test batch size). With
`system.save_rgba_dataset` those views become a multi-view RGBA dataset with camera poses.
`test_elevation_range: null` gives the fixed-elevation turntable of `single-image-datamodule`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from lift3d.config import parse_structured
from lift3d.data.cameras import spherical_to_cartesian
from lift3d.data.random_camera import RandomCameraEvalDataset, camera_batch
from lift3d.data.single_image import SingleImageDataModule, SingleImageDataModuleConfig, SingleImageIterableDataset
from lift3d.registry import register
from lift3d.utils.config_checks import check_range

COMPONENT = "data module 'usd-image-datamodule'"
OWN_KEYS = ("test_elevation_range", "test_elevation_seed")


@dataclass
class USDImageDataModuleConfig(SingleImageDataModuleConfig):
    test_elevation_range: Optional[List[float]] = None  # degrees, e.g. [-10, 45]; null: random_camera.eval_elevation_deg
    test_elevation_seed: int = 0


def single_image_config(cfg: Any) -> Any:
    """The `single-image-datamodule` part of a usd-image-datamodule config (own keys removed)."""
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg or {})
    return parse_structured(SingleImageDataModuleConfig, {k: v for k, v in plain.items() if k not in OWN_KEYS},
                            path="data", component=COMPONENT)


class RandomElevationTurntable(RandomCameraEvalDataset):
    """View k: azimuth 360 k / n (wrapped to [-180, 180)), elevation uniform in `elevation_range`
    (drawn once per index from `seed`), distance / fovy / size as the parent's eval_* values."""

    def __init__(self, cfg: Any, split: str, elevation_range: List[float], seed: int, path: str = "data.random_camera") -> None:
        super().__init__(cfg, split, path=path)
        lo, hi = float(elevation_range[0]), float(elevation_range[1])
        generator = torch.Generator().manual_seed(int(seed))
        self.elevations = lo + (hi - lo) * torch.rand(self.n_views, generator=generator)  # [n] degrees

    def collate(self, indices: List[int]) -> Dict[str, Any]:
        index = torch.as_tensor(indices, dtype=torch.long)  # [B]
        B, cfg = index.shape[0], self.cfg
        elevation = self.elevations[index]
        azimuth = self.azimuth_deg(index)
        distances = torch.full((B,), float(cfg.eval_camera_distance))
        fovy = torch.deg2rad(torch.full((B,), float(cfg.eval_fovy_deg)))
        positions = spherical_to_cartesian(elevation, azimuth, distances)
        batch = camera_batch(
            positions, fovy, int(cfg.eval_height), int(cfg.eval_width), positions.clone(),
            elevation, azimuth, distances, near=cfg.near, far=cfg.far, rays_d_normalize=cfg.rays_d_normalize,
        )
        batch["index"] = index
        return batch


@register("usd-image-datamodule")
class USDImageDataModule(SingleImageDataModule):
    Config = USDImageDataModuleConfig
    COMPONENT = COMPONENT

    def __init__(self, cfg: Any = None) -> None:
        pl.LightningDataModule.__init__(self)
        self.cfg = parse_structured(self.Config, cfg, path="data", component=self.COMPONENT)
        self.validate_config(self.cfg)
        base = single_image_config(self.cfg)
        self.train_dataset = SingleImageIterableDataset(base)
        self.val_dataset = RandomCameraEvalDataset(base.random_camera, "val", path="data.random_camera")
        if self.cfg.test_elevation_range is None:
            self.test_dataset = RandomCameraEvalDataset(base.random_camera, "test", path="data.random_camera")
        else:
            self.test_dataset = RandomElevationTurntable(
                base.random_camera, "test", list(self.cfg.test_elevation_range), self.cfg.test_elevation_seed
            )

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "data") -> None:
        cfg = parse_structured(cls.Config, cfg, path=path, component=COMPONENT)
        if cfg.test_elevation_range is not None:
            check_range(cfg, "test_elevation_range", path, lo=-90, hi=90, example="[-10, 45]")
        SingleImageDataModule.validate_config(single_image_config(cfg), path)


__all__ = ["RandomElevationTurntable", "USDImageDataModule", "USDImageDataModuleConfig"]
