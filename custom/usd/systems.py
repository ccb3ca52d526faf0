"""USD's system names: `lift3d-system` with USD's defaults (docs/DESIGN.md: systems that differ by one
term are one system with a switch; nothing else differs).

- `usd-system`: image-to-3D (docs/methods/usd.md §2). implicit-volume, no-material, white
  solid-color background, patch-renderer, `usd-image-guidance`; with `usd-image-datamodule` (or
  `single-image-datamodule`) the guidance also gets the reference view (its delta term,
  `loss_usd_ref`, through lift3d-system's reference-view hook), rgb/mask losses are available
  (lambda_rgb, lambda_mask; off in usd-patch.yaml), and the test pass writes the RGBA views and
  their poses as transforms.json (`save_rgba_dataset`, on by default here).
- `usd-text-system`: text-to-3D (§3). implicit-volume, no-material, neural-environment-map
  background, patch-renderer, SD prompt processor, `usd-text-guidance`. The geometry and texture
  stages set their own geometry/renderer/guidance in their configs. With the guidance's
  `baseline: vsd_lora` (VSD's LoRA as USD's baseline, vsd_baseline.py) it checks that the LoRA trains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lift3d.registry import register
from lift3d.systems.lift3d_system import Lift3DSystem

from .original_keys import OriginalSystemKeys, OriginalUSDSystem
from .vsd_baseline import check_lora_training


@register("usd-system")
class USDSystem(OriginalUSDSystem, Lift3DSystem):
    @dataclass
    class Config(OriginalSystemKeys, Lift3DSystem.Config):  # + the USD repository's stage / lambda_vsd keys
        geometry_type: str = "implicit-volume"
        material_type: str = "no-material"
        background_type: str = "solid-color-background"
        renderer_type: str = "patch-renderer"
        prompt_processor_type: str = "dummy-prompt-processor"
        guidance_type: str = "usd-image-guidance"
        save_rgba_dataset: bool = True

    reference_term = True  # the original's lambda_vsd weighs the reference-view term too (original_keys.py)


@register("usd-text-system")
class USDTextSystem(Lift3DSystem):
    @dataclass
    class Config(Lift3DSystem.Config):
        geometry_type: str = "implicit-volume"
        material_type: str = "no-material"
        background_type: str = "neural-environment-map-background"
        renderer_type: str = "patch-renderer"
        prompt_processor_type: str = "stable-diffusion-prompt-processor"
        guidance_type: str = "usd-text-guidance"

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True,
                        exp_root_dir: str = "outputs") -> Any:
        parsed = super().validate_config(cfg, path, resumed, fitting, exp_root_dir)
        check_lora_training(parsed, path)  # usd-text-guidance's baseline: vsd_lora trains its LoRA (vsd_baseline.py)
        return parsed


__all__ = ["USDSystem", "USDTextSystem"]
