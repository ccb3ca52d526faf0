"""threestudio's system names for methods that `lift3d-system` already covers (docs/DESIGN.md: systems
that differ by one term are one system with a switch).

- `dreamfusion-system`: text-to-3D, render a random view -> `stable-diffusion-guidance` SDS (+ the
  shared regularizers). Defaults: implicit-volume, diffuse-with-point-light-material,
  neural-environment-map-background, nerf-volume-renderer, the SD prompt processor and guidance.
- `zero123-system`: image-to-3D; with `single-image-datamodule` the reference view gets RGB and
  mask losses (lambda_rgb, lambda_mask) and the random views `zero123-guidance` SDS. Defaults:
  implicit-volume, no-material, white solid-color background, nerf-volume-renderer, zero123-guidance.

- `magic3d-system`: Magic3D's coarse NeRF and refine mesh stages (defaults as dreamfusion-system;
  the refine stage's geometry/renderer come from its config and `geometry_convert_from`).
- `fantasia3d-system`: Fantasia3D's geometry stage (implicit-sdf/tetrahedra-sdf-grid rendered by
  the mesh rasterizer, SD guidance on normals) and appearance stage.

All are `Lift3DSystem` with other config defaults only; nothing else differs.
"""
from __future__ import annotations

from dataclasses import dataclass

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


__all__ = ["DreamFusionSystem", "Zero123System", "Magic3DSystem", "Fantasia3DSystem"]
