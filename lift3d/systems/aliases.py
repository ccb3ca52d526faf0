"""threestudio's system names for methods that `lift3d-system` already covers (docs/DESIGN.md: systems
that differ by one term are one system with a switch).

- `dreamfusion-system`: text-to-3D, render a random view -> `stable-diffusion-guidance` SDS (+ the
  shared regularizers). Defaults: implicit-volume, diffuse-with-point-light-material,
  neural-environment-map-background, nerf-volume-renderer, the SD prompt processor and guidance.
- `zero123-system`: image-to-3D; with `single-image-datamodule` the reference view gets RGB and
  mask losses (lambda_rgb, lambda_mask) and the random views `zero123-guidance` SDS. Defaults:
  implicit-volume, no-material, white solid-color background, nerf-volume-renderer, zero123-guidance.

- `efficient-dreamfusion-system`: dreamfusion-system on `eff-random-camera-datamodule` batches (a pixel
  lattice is rendered; the guidance scores it upsampled to the full image, `unmask`).
- `magic3d-system`: Magic3D's coarse NeRF and refine mesh stages (defaults as dreamfusion-system;
  the refine stage's geometry/renderer come from its config and `geometry_convert_from`).
- `fantasia3d-system`: Fantasia3D's geometry stage (implicit-sdf/tetrahedra-sdf-grid rendered by
  the mesh rasterizer, SD guidance on normals) and appearance stage, with threestudio's two keys:
  `texture: false` (geometry): for the first `latent_steps` steps the guidance scores the
  4-channel image [comp_normal * 2 - 1, opacity] read directly as SD latents (`rgb_as_latents`,
  resized to the latent size, no VAE: Fantasia3D's coarse phase, arXiv 2303.13873 §3.2), then the
  normal map comp_normal through the VAE; `texture: true` (appearance): the guidance scores comp_rgb.
  `guidance_input` is not used by this system.

All are `Lift3DSystem` with other config defaults (and, for fantasia3d-system, which render the
guidance sees); nothing else differs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.registry import register
from lift3d.systems.lift3d_system import Lift3DSystem


@register("dreamfusion-system")
class DreamFusionSystem(Lift3DSystem):
    @dataclass
    class Config(Lift3DSystem.Config):
        geometry_type: str = "implicit-volume"
        material_type: str = "diffuse-with-point-light-material"
        background_type: str = "neural-environment-map-background"
        renderer_type: str = "nerf-volume-renderer"
        prompt_processor_type: str = "stable-diffusion-prompt-processor"
        guidance_type: str = "stable-diffusion-guidance"


def unmask(render: Tensor, window: Tensor, height: int, width: int) -> Tensor:
    """The full [B,height,width,C] image of a render [B,h,w,C] of a pixel lattice spanning `window` =
    (row0, col0, rows, cols): bilinear between the lattice's pixels, zero outside the window
    (threestudio's eff_dreamfusion.py `unmask`: grid_sample with align_corners and zero padding)."""
    row0, col0, rows, cols = (float(v) for v in window)
    ys = (torch.arange(height, dtype=render.dtype, device=render.device) - row0) / rows * 2 - 1  # [H]
    xs = (torch.arange(width, dtype=render.dtype, device=render.device) - col0) / cols * 2 - 1  # [W]
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [H,W,2] as (x, y)
    grid = grid.expand(render.shape[0], height, width, 2)
    full = F.grid_sample(render.permute(0, 3, 1, 2), grid, mode="bilinear", align_corners=True)  # [B,C,H,W]
    return full.permute(0, 2, 3, 1)


@register("efficient-dreamfusion-system")
class EfficientDreamFusionSystem(DreamFusionSystem):
    """dreamfusion-system on `eff-random-camera-datamodule` batches: the renderer shades the pixel
    lattice only, the guidance scores the full-size image made from it by `unmask`; the regularizers
    see the lattice's render (as threestudio's efficient-dreamfusion-system)."""

    def guidance_image(self, out: dict[str, Tensor], view: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        image, kwargs = super().guidance_image(out, view)
        if "efficiency_window" not in view:
            raise ConfigError("efficient-dreamfusion-system renders a pixel lattice: use data_type "
                              "eff-random-camera-datamodule (it gives sample_height / sample_width).")
        return unmask(image, view["efficiency_window"], int(view["height"]), int(view["width"])), kwargs


@register("zero123-system")
class Zero123System(Lift3DSystem):
    @dataclass
    class Config(Lift3DSystem.Config):
        geometry_type: str = "implicit-volume"
        material_type: str = "no-material"
        background_type: str = "solid-color-background"
        renderer_type: str = "nerf-volume-renderer"
        prompt_processor_type: str = "dummy-prompt-processor"
        guidance_type: str = "zero123-guidance"


@register("magic3d-system")
class Magic3DSystem(DreamFusionSystem):
    pass


@register("fantasia3d-system")
class Fantasia3DSystem(Lift3DSystem):
    @dataclass
    class Config(Lift3DSystem.Config):
        geometry_type: str = "implicit-sdf"
        material_type: str = "no-material"
        background_type: str = "solid-color-background"
        renderer_type: str = "mesh-rasterizer"
        prompt_processor_type: str = "stable-diffusion-prompt-processor"
        guidance_type: str = "stable-diffusion-guidance"
        latent_steps: int = 1000  # geometry stage: steps with [normal, mask] as the latent
        texture: bool = False  # appearance stage: the guidance scores comp_rgb

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True,
                        exp_root_dir: str = "outputs") -> Any:
        parsed = super().validate_config(cfg, path, resumed, fitting, exp_root_dir)
        if parsed.latent_steps < 0:
            raise ConfigError(f"{path}.latent_steps = {parsed.latent_steps} is negative: give 0 or more steps.")
        return parsed

    def guidance_image(self, out: dict[str, Tensor], view: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        if self.cfg.texture:
            return out["comp_rgb"], {}
        if self.true_global_step < self.cfg.latent_steps:
            # [B,H,W,4]: normals in [-1, 1] and the silhouette, scored as SD latents
            return torch.cat([out["comp_normal"] * 2.0 - 1.0, out["opacity"]], dim=-1), {"rgb_as_latents": True}
        return out["comp_normal"], {}


__all__ = ["DreamFusionSystem", "EfficientDreamFusionSystem", "Fantasia3DSystem", "Magic3DSystem", "Zero123System",
           "unmask"]
