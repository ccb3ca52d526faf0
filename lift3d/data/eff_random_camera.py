"""`eff-random-camera-datamodule`: random cameras whose training batches render only a subset of pixels
(threestudio's "efficient" DreamFusion, `dreamfusion-sd-eff.yaml`, with `efficient-dreamfusion-system`).

Everything of `random-camera-datamodule` holds (poses, lights, progressive resolution, turntables),
plus `sample_height` / `sample_width` (an int, or a list with one entry per resolution stage, like
height / width). A training batch describes a height x width image of which only an
sample_height x sample_width lattice of pixels is rendered:

- a window of 3/4 of the image per side, at an offset drawn per batch, uniform in [0, height/4] rows and
  [0, width/4] columns (the same window for every camera of the batch);
- lattice row k = offset_row + round(k (3 height / 4) / (sample_height - 1)) (clamped to the image),
  columns likewise: the first and last samples sit on the window's edges;
- rays_o, rays_d [B, sample_height, sample_width, 3] are the full image's rays at those pixels;
  `efficiency_rows` [sample_height], `efficiency_cols` [sample_width] (long) are the pixels and
  `efficiency_window` [4] = (row0, col0, rows, cols) of the window; height / width stay the full size.

`efficient-dreamfusion-system` (lift3d.systems.aliases) scores the guidance on the full-size image made
by bilinear interpolation of the rendered lattice over the window, zero outside it — the upsampling of
threestudio's eff_dreamfusion.py `unmask` (grid_sample, align_corners, zero padding).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from lift3d.config import parse_structured
from lift3d.data.random_camera import (
    RandomCameraDataModule,
    RandomCameraDataModuleConfig,
    RandomCameraIterableDataset,
    resolution_stages,
)
from lift3d.registry import register
from lift3d.utils.config_checks import fail

COMPONENT = "data module 'eff-random-camera-datamodule'"


@dataclass
class EffRandomCameraDataModuleConfig(RandomCameraDataModuleConfig):
    height: Any = 128
    width: Any = 128
    sample_height: Any = 64  # int, or a list switched at resolution_milestones
    sample_width: Any = 64


def lattice(size: int, samples: int, offset: int) -> torch.Tensor:
    """`samples` pixel indices [samples] spanning a window of 3/4 of `size` from `offset`."""
    span = 3 * size / 4
    k = torch.arange(samples, dtype=torch.float64)
    return (offset + torch.round(k * span / max(samples - 1, 1))).long().clamp(0, size - 1)


class EffRandomCameraIterableDataset(RandomCameraIterableDataset):
    def __init__(self, cfg: Any, path: str = "data", default_seed: Optional[int] = None) -> None:
        stages, _ = resolution_stages(cfg, path, keys=("height", "width", "batch_size", "sample_height", "sample_width"))
        self.sample_heights, self.sample_widths = stages["sample_height"], stages["sample_width"]
        super().__init__(cfg, path, default_seed)

    def _set_stage(self, stage: int) -> None:
        super()._set_stage(stage)
        self.sample_height: int = self.sample_heights[min(stage, len(self.sample_heights) - 1)]
        self.sample_width: int = self.sample_widths[min(stage, len(self.sample_widths) - 1)]

    def sample(self, batch_size: Optional[int] = None) -> Dict[str, Any]:
        batch = super().sample(batch_size)  # the full image's rays [B, H, W, 3]
        H, W, g = self.height, self.width, self.generator
        row0 = int(torch.randint(0, H // 4 + 1, (), generator=g))
        col0 = int(torch.randint(0, W // 4 + 1, (), generator=g))
        rows, cols = lattice(H, self.sample_height, row0), lattice(W, self.sample_width, col0)
        for key in ("rays_o", "rays_d"):
            batch[key] = batch[key][:, rows][:, :, cols].contiguous()  # [B, sH, sW, 3]
        batch.update(efficiency_rows=rows, efficiency_cols=cols, sample_height=self.sample_height,
                     sample_width=self.sample_width,
                     efficiency_window=torch.tensor([row0, col0, 3 * H / 4, 3 * W / 4], dtype=torch.float32))
        return batch


@register("eff-random-camera-datamodule")
class EffRandomCameraDataModule(RandomCameraDataModule):
    Config = EffRandomCameraDataModuleConfig
    COMPONENT = COMPONENT

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.train_dataset = EffRandomCameraIterableDataset(self.cfg)

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "data") -> None:
        cfg = parse_structured(cls.Config, cfg, path=path, component=COMPONENT)
        super().validate_config(cfg, path)
        stages, _ = resolution_stages(cfg, path, keys=("height", "width", "batch_size", "sample_height", "sample_width"))
        n_stages = max(len(v) for v in stages.values())
        for full, sampled in (("height", "sample_height"), ("width", "sample_width")):
            for i in range(n_stages):
                size, samples = stages[full][min(i, len(stages[full]) - 1)], stages[sampled][min(i, len(stages[sampled]) - 1)]
                if samples < 2 or samples > size:
                    fail(f"{path}.{sampled}", f"= {samples} does not fit {path}.{full} = {size}",
                         f"give 2 to {size} pixels (threestudio's dreamfusion-sd-eff: 64 of 128)")


__all__ = ["EffRandomCameraDataModule", "EffRandomCameraDataModuleConfig", "EffRandomCameraIterableDataset", "lattice"]
