"""`patch-renderer`: full-resolution detail at a fraction of the cost (USD's training renderer).

Training: the whole frame is rendered at 1/global_downsample resolution and upsampled (bilinear)
to H×W, and one random patch_size² window is rendered at full resolution and pasted in, so a
512² image costs about a 128² render plus a 128² patch. Evaluation renders the full frame with
the base renderer. Per-sample outputs (weights, normals, ...) come from the patch render.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F

from lift3d.registry import find, register
from lift3d.renderers.base import BaseRenderer


@register("patch-renderer")
class PatchRenderer(BaseRenderer):
    @dataclass
    class Config(BaseRenderer.Config):
        patch_size: int = 128
        global_downsample: int = 4
        global_detach: bool = False  # stop gradients through the low-resolution full frame
        base_renderer_type: str = "nerf-volume-renderer"
        base_renderer: dict = field(default_factory=dict)

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.renderer") -> None:
        from lift3d.config import parse_structured

        base = find(cfg.base_renderer_type)
        base_path = f"{path}.base_renderer"
        base.validate_config(
            parse_structured(base.Config, cfg.base_renderer, base_path, f"renderer '{cfg.base_renderer_type}'"), base_path
        )

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        self.base_renderer = find(self.cfg.base_renderer_type)(
            self.cfg.base_renderer, geometry=geometry, material=material, background=background
        )

    def forward(
        self,
        rays_o: torch.Tensor,  # [B,H,W,3]
        rays_d: torch.Tensor,  # [B,H,W,3]
        light_positions: torch.Tensor,  # [B,3]
        bg_color: Optional[torch.Tensor] = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        B, H, W, _ = rays_o.shape
        p, s = self.cfg.patch_size, self.cfg.global_downsample
        if not self.training or (H <= p and W <= p):
            return self.base_renderer(rays_o, rays_d, light_positions, bg_color=bg_color, **kwargs)
        # low-resolution full frame: every s-th ray (pixel centres stay on the same grid)
        small = self.base_renderer(rays_o[:, s // 2 :: s, s // 2 :: s], rays_d[:, s // 2 :: s, s // 2 :: s],
                                   light_positions, bg_color=bg_color, **kwargs)
        y0 = int(torch.randint(0, H - p + 1, (1,)))
        x0 = int(torch.randint(0, W - p + 1, (1,)))
        patch = self.base_renderer(rays_o[:, y0 : y0 + p, x0 : x0 + p], rays_d[:, y0 : y0 + p, x0 : x0 + p],
                                   light_positions, bg_color=bg_color, **kwargs)
        out = {}
        for key, value in small.items():
            if value.dim() != 4 or key not in patch:
                continue
            full = F.interpolate(value.permute(0, 3, 1, 2), size=(H, W), mode="bilinear", align_corners=False)
            full = full.permute(0, 2, 3, 1)
            if self.cfg.global_detach:
                full = full.detach()
            full = full.clone()
            full[:, y0 : y0 + p, x0 : x0 + p] = patch[key]
            out[key] = full
        out.update({k: v for k, v in patch.items() if k not in out})  # per-sample outputs of the patch
        return out
