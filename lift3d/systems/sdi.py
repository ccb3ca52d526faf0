"""`sdi-system`: Score Distillation via Inversion (arXiv 2405.15891; docs/methods/sdi.md), threestudio's
system name and keys.

It is `lift3d-system` (render a random view -> guidance -> weighted losses + the shared regularizers)
with SDI's defaults (implicit-volume, diffuse-with-point-light-material, neural-environment-map
background, nerf-volume-renderer, stable-diffusion-sdi-guidance) and one extra term of threestudio's
sdi-system, `loss_convex` (weight `system.loss.lambda_convex`), a naive convexity prior on the normal
map of the guided render:

    n = comp_normal [B,H,W,3] resized (bilinear) to convexity_res²
    loss_convex = -( mean (n[:, :, :-1] x n[:, :, 1:])_z  +  mean (n[:, 1:] x n[:, :-1])_z )

the z components of the cross products of horizontally (left x right) and vertically (lower x upper)
neighbouring normals: positive where the normals turn outwards as on a convex surface seen from the
camera, so minimising loss_convex favours bulging shapes (docs/methods/sdi.md §4).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.registry import register
from lift3d.systems.lift3d_system import Lift3DSystem


def convexity_loss(comp_normal: Tensor, resolution: int) -> Tensor:
    """loss_convex (module docstring) of a normal map comp_normal [B,H,W,3]; a scalar."""
    n = F.interpolate(comp_normal.permute(0, 3, 1, 2), size=(resolution, resolution), mode="bilinear",
                      align_corners=False).permute(0, 2, 3, 1)  # [B,r,r,3]
    horizontal = torch.cross(n[:, :, :-1], n[:, :, 1:], dim=-1)[..., 2]  # left x right
    vertical = torch.cross(n[:, 1:], n[:, :-1], dim=-1)[..., 2]  # lower x upper
    return -(horizontal.mean() + vertical.mean())


@register("sdi-system")
class SDISystem(Lift3DSystem):
    @dataclass
    class Config(Lift3DSystem.Config):
        convexity_res: int = 8  # side of the normal map loss_convex compares
        geometry_type: str = "implicit-volume"
        material_type: str = "diffuse-with-point-light-material"
        background_type: str = "neural-environment-map-background"
        renderer_type: str = "nerf-volume-renderer"
        prompt_processor_type: str = "stable-diffusion-prompt-processor"
        guidance_type: str = "stable-diffusion-sdi-guidance"

    system_losses = Lift3DSystem.system_losses + ("convex",)
    _guided_out: Optional[dict[str, Tensor]] = None  # this training step's render of the guided view

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True,
                        exp_root_dir: str = "outputs") -> Any:
        parsed = super().validate_config(cfg, path, resumed, fitting, exp_root_dir)
        if parsed.convexity_res < 2:
            raise ConfigError(f"{path}.convexity_res = {parsed.convexity_res}: use a side of at least 2 pixels (threestudio: 8).")
        convex = parsed.loss.get("lambda_convex", 0.0)
        convex_on = not isinstance(convex, (int, float)) or convex > 0  # a schedule counts as on
        if (fitting and convex_on and parsed.renderer_type == "nerf-volume-renderer"
                and not parsed.renderer.get("return_comp_normal", False)):
            raise ConfigError(f"{path}.loss.lambda_convex > 0 needs the normal map of the training render: set "
                              f"{path}.renderer.return_comp_normal=true, or {path}.loss.lambda_convex=0.")
        return parsed

    def guidance_image(self, out: dict[str, Tensor], *view: Any) -> tuple[Tensor, dict[str, Any]]:
        self._guided_out = out  # read by weighted_loss for loss_convex, in the same training step
        return super().guidance_image(out, *view)

    def weighted_loss(self, terms: dict[str, Any], lambdas: dict[str, float]) -> Optional[Tensor]:
        out, self._guided_out = self._guided_out, None
        if out is not None and lambdas.get("convex", 0.0) > 1e-6:
            if "comp_normal" not in out:
                raise ConfigError("system.loss.lambda_convex > 0 needs the normal map: set "
                                  "system.renderer.return_comp_normal=true (and geometry normals), or lambda_convex=0.")
            terms = {**terms, "loss_convex": convexity_loss(out["comp_normal"], int(self.cfg.convexity_res))}
        return super().weighted_loss(terms, lambdas)


__all__ = ["SDISystem", "convexity_loss"]
