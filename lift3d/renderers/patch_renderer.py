"""`patch-renderer`: full-resolution detail at a fraction of the cost (USD's training renderer).

Training: the whole frame is rendered at 1/global_downsample resolution and upsampled (bilinear)
to H×W, and one random patch_size² window is rendered at full resolution and pasted in, so a
512² image costs about a 128² render plus a 128² patch. Evaluation renders the full frame with
the base renderer. Per-sample outputs (weights, normals, ...) come from the patch render.

The base renderer is `base_renderer_type` configured by `base_renderer`. As in threestudio's patch
renderer (whose Config carries the NeRF renderer's keys and hands its own section, less the patch keys,
to the base renderer; configs/prolificdreamer-patch.yaml), the base renderer's keys may also be given
beside the patch keys: `radius`, `num_samples_per_ray`, `randomized`, `eval_chunk_size`, `grid_prune`,
`return_comp_normal`, `return_normal_perturb` (BASE_KEYS) fill the `base_renderer` section; a key given
in both places with different values is a ConfigError.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F

from lift3d.errors import ConfigError
from lift3d.registry import find, register
from lift3d.renderers.base import BaseRenderer

# base-renderer keys accepted beside the patch keys (threestudio's patch renderer Config)
BASE_KEYS = ("radius", "num_samples_per_ray", "randomized", "eval_chunk_size", "grid_prune", "return_comp_normal",
             "return_normal_perturb")


def base_renderer_section(cfg: Any, path: str = "system.renderer") -> dict:
    """`base_renderer` with the BASE_KEYS given beside the patch keys (null: not given) filled in."""
    from omegaconf import OmegaConf

    section = OmegaConf.to_container(cfg.base_renderer, resolve=True) if OmegaConf.is_config(cfg.base_renderer) \
        else dict(cfg.base_renderer or {})
    for key in BASE_KEYS:
        value = cfg.get(key)
        if value is None:
            continue
        if key in section and section[key] != value:
            raise ConfigError(f"{path}.{key} = {value} and {path}.base_renderer.{key} = {section[key]} disagree: "
                              f"give the base renderer's {key} in one place.")
        section[key] = value
    return section


@register("patch-renderer")
class PatchRenderer(BaseRenderer):
    @dataclass
    class Config(BaseRenderer.Config):
        patch_size: int = 128
        global_downsample: int = 4
        global_detach: bool = False  # stop gradients through the low-resolution full frame
        base_renderer_type: str = "nerf-volume-renderer"
        base_renderer: dict = field(default_factory=dict)
        # the base renderer's keys given here (module docstring); null: not given
        radius: Optional[float] = None
        num_samples_per_ray: Optional[int] = None
        randomized: Optional[bool] = None
        eval_chunk_size: Optional[int] = None
        grid_prune: Optional[bool] = None
        return_comp_normal: Optional[bool] = None
        return_normal_perturb: Optional[bool] = None

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.renderer") -> None:
        from lift3d.config import parse_structured

        base = find(cfg.base_renderer_type)
        base_path = f"{path}.base_renderer"
        section = base_renderer_section(cfg, path)
        base.validate_config(parse_structured(base.Config, section, base_path, f"renderer '{cfg.base_renderer_type}'"),
                             base_path)

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        self.base_renderer = find(self.cfg.base_renderer_type)(
            base_renderer_section(self.cfg), geometry=geometry, material=material, background=background
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
