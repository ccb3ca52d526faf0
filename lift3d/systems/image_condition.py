"""threestudio's other image-to-3D systems, as `lift3d-system` with their defaults (docs/methods/magic123.md
§"The zero123 family"):

- `image-condition-dreamfusion-system`: a text prior (stable-diffusion-guidance with its prompt) at the
  random views plus the reference-view losses (rgb, mask, depth, depth_rel, normal) every step; the
  guidance starts after `freq.ref_only_steps` (threestudio: `step > ref_only_steps`). Defaults as
  threestudio's: implicit-volume, diffuse-with-point-light-material, neural-environment-map-background,
  nerf-volume-renderer, stable-diffusion-guidance / -prompt-processor.
- `zero123-simple-system`: Zero-1-to-3 SDS at the random views only (the reference image conditions
  the guidance; no reference-view losses unless a config weighs them), and threestudio's
  `lambda_normal_smoothness_2d` (lift3d-system's `view_losses`). Defaults as zero123-system; its
  threestudio config names `zero123-unified-guidance` (lift3d.guidance.unified).

The Zero-1-to-3 / Stable Zero123 refinement stage is `zero123-system` with `refinement: true` on a
DMTet geometry converted from the coarse NeRF (configs/zero123-refine.yaml, configs/stable-zero123-refine.yaml).
"""
from __future__ import annotations

from dataclasses import dataclass

from lift3d.registry import register
from lift3d.systems.aliases import Zero123System
from lift3d.systems.lift3d_system import Lift3DSystem


@register("image-condition-dreamfusion-system")
class ImageConditionDreamFusionSystem(Lift3DSystem):
    @dataclass
    class Config(Lift3DSystem.Config):
        geometry_type: str = "implicit-volume"
        material_type: str = "diffuse-with-point-light-material"
        background_type: str = "neural-environment-map-background"
        renderer_type: str = "nerf-volume-renderer"
        prompt_processor_type: str = "stable-diffusion-prompt-processor"
        guidance_type: str = "stable-diffusion-guidance"

    guidance_start_offset = 1  # the guidance from step ref_only_steps + 1 on


@register("zero123-simple-system")
class Zero123SimpleSystem(Zero123System):
    system_losses = Zero123System.system_losses + ("normal_smoothness_2d",)  # threestudio's 2D normal smoothing


__all__ = ["ImageConditionDreamFusionSystem", "Zero123SimpleSystem"]
