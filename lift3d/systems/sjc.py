"""`sjc-system`: Score Jacobian Chaining (Wang et al., arXiv 2212.00774; docs/methods/sjc.md), threestudio's
system name and keys.

SJC renders Stable Diffusion latents from a voxel radiance field (`volume-grid` with 4 feature channels,
`no-material`, `textured-background`, all without activation) and chains the PAAS score of SD through the
renderer: `stable-diffusion-guidance` with `use_sjc: true` (lift3d.guidance.sjc). It is latentnerf-system's
latent stage (renders scored as latents, VAE-decoded evaluation images) with SJC's two terms of the render:

    loss_emptiness = mean over samples of log(1 + emptiness_scale * w)        (§5, the emptiness prior)
    loss_depth     = sign(c - b) log|c - b|,  c / b = mean depth of the central square / the border

with w the samples' volume-rendering weights, depth = depth + 10 (1 - opacity), the central square
`center_ratio` of the image side. Weights `lambda_emptiness`, `lambda_depth`; `emptiness_scale` and
`center_ratio` sit under `system.loss` as in threestudio. `subpixel_rendering: true` decodes the latents at
twice the model's latent size (128² for SD: 1024² images), as threestudio's validation images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.registry import register
from lift3d.systems.latentnerf import LatentNeRFSystem

LOSS_SETTINGS = {"emptiness_scale": 10.0, "center_ratio": 0.78125}  # system.loss keys that are not weights


def emptiness_loss(weights: Tensor, scale: float) -> Tensor:
    """mean log(1 + scale * w) over the samples' weights w [S,1]."""
    return torch.log1p(scale * weights).mean()


def center_depth_loss(depth: Tensor, opacity: Tensor, center_ratio: float) -> Tensor:
    """sign(c - b) log|c - b| for depth, opacity [B,H,W,1]: c / b the mean (depth + 10 (1 - opacity)) of
    the central square (side center_ratio * H) / of the rest of the image. Negative when the centre is nearer."""
    d = (depth + 10.0 * (1.0 - opacity)).squeeze(-1)  # [B,H,W]
    h, w = d.shape[-2:]
    ch, cw = int(center_ratio * h), int(center_ratio * w)
    top, left = (h - ch) // 2, (w - cw) // 2
    center = d[..., top : top + ch, left : left + cw]
    border_mean = (d.sum() - center.sum()) / max(d.numel() - center.numel(), 1)
    x = center.mean() - border_mean
    return torch.sign(x) * torch.log(x.abs() + 1e-12)


@register("sjc-system")
class SJCSystem(LatentNeRFSystem):
    @dataclass
    class Config(LatentNeRFSystem.Config):
        subpixel_rendering: bool = True  # decode latents at 2x the model's latent size
        geometry_type: str = "volume-grid"
        material_type: str = "no-material"
        background_type: str = "textured-background"
        renderer_type: str = "nerf-volume-renderer"

    system_losses = LatentNeRFSystem.system_losses + ("emptiness", "depth")

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True,
                        exp_root_dir: str = "outputs") -> Any:
        settings = {k: cfg.loss[k] for k in LOSS_SETTINGS if "loss" in cfg and k in cfg.loss}
        for k in settings:  # not weights: out of the loss-key check, back in place afterwards
            del cfg.loss[k]
        try:
            parsed = super().validate_config(cfg, path, resumed, fitting, exp_root_dir)
        finally:
            for k, v in settings.items():
                cfg.loss[k] = v
        if parsed.refinement:
            raise ConfigError(f"{path}.refinement=true: SJC has no RGB refinement stage; set it to false.")
        for k, v in settings.items():
            if not isinstance(v, (int, float)) or not (0 < v <= (1 if k == "center_ratio" else float("inf"))):
                raise ConfigError(f"{path}.loss.{k} = {v}: give a number > 0{' and <= 1' if k == 'center_ratio' else ''}.")
        return parsed

    def lambdas(self) -> dict[str, float]:
        return {k[len("lambda_"):]: float(self.C(v)) for k, v in self.cfg.loss.items() if k not in LOSS_SETTINGS}

    def loss_setting(self, name: str) -> float:
        return float(self.cfg.loss.get(name, LOSS_SETTINGS[name]))

    def render_terms(self, out: dict[str, Tensor], lambdas: dict[str, float]) -> dict[str, Tensor]:
        terms = super().render_terms(out, lambdas)
        if lambdas.get("emptiness", 0.0) > 0 and "weights" in out:
            terms["loss_emptiness"] = emptiness_loss(out["weights"], self.loss_setting("emptiness_scale"))
        if lambdas.get("depth", 0.0) > 0:
            terms["loss_depth"] = center_depth_loss(out["depth"], out["opacity"], self.loss_setting("center_ratio"))
        return terms

    def decode_side(self, model: Any) -> int:
        return super().decode_side(model) * (2 if self.cfg.subpixel_rendering else 1)


__all__ = ["SJCSystem", "center_depth_loss", "emptiness_loss"]
