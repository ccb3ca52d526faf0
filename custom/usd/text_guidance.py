"""`usd-text-guidance`: USD for text-to-3D (docs/methods/usd.md §1, §3).

Both predictions come from Stable Diffusion in one UNet call on [z_t; z_t] with [text; negative
prompt] (the text of each camera's view direction, from `stable-diffusion-prompt-processor`):

    grad = w(t) [ w_cfg (eps_sd(z_t, text) - eps_sd(z_t, "")) + lambda (eps_sd(z_t, "") - eps) ]

with w_cfg the CFG weight of `cfg_form`: `standard` by default (w_cfg = guidance_scale, as the
original USD code), `threestudio` gives w_cfg = guidance_scale + 1.

`usd_lambda` is the spec's lambda (`lambda` is a Python keyword), scheduled with C():
0 = USD (the default), 1 = exactly `stable-diffusion-guidance`'s SDS gradient. Everything else —
encoding the render with SD's VAE, timesteps, weighting, grad clip, guidance-evaluation images,
`rgb_as_latents` — is `stable-diffusion-guidance`'s, which this class extends. Returns `loss_usd`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lift3d.guidance.stable_diffusion import StableDiffusionGuidance
from lift3d.registry import register
from lift3d.utils.schedule import C, check_schedule_range

from .usd_math import usd_guided_noise


def check_lambda(value: Any, key: str = "system.guidance.usd_lambda") -> None:
    """A ConfigError unless `value` is a C()-schedule of numbers in [0, 1]."""
    check_schedule_range(value, key, hint="0 is USD, 1 is SDS.")


@register("usd-text-guidance")
class USDTextGuidance(StableDiffusionGuidance):
    @dataclass
    class Config(StableDiffusionGuidance.Config):
        guidance_scale: float = 7.5
        # the original USD code (threestudio/models/guidance/usd_SD_guidance.py) weighs
        # (eps_c - eps_u) by guidance_scale itself: the standard form (docs/faithfulness.md)
        cfg_form: str = "standard"
        usd_lambda: Any = 0.0  # scheduled with C(): 0 = USD, 1 = SDS

    produces = ("loss_usd",)

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        check_lambda(cfg.usd_lambda, f"{path}.usd_lambda")
        super().validate_config(cfg, path)

    def update_step(self, epoch: int, global_step: int) -> None:
        super().update_step(epoch, global_step)
        self.usd_lambda = float(C(self.cfg.usd_lambda, epoch, global_step))

    def guided_noise(self, z_t: Tensor, t: Tensor, text_embeddings: Tensor, noise: Optional[Tensor] = None) -> Tensor:
        """eps_guided of usd_guided_noise from one UNet call on [z_t; z_t]; text_embeddings [2B,77,D] (cond, uncond)."""
        eps = self.model.predict_noise(torch.cat([z_t, z_t]), torch.cat([t, t]), text_embeddings)
        eps_cond, eps_uncond = eps.chunk(2)
        return usd_guided_noise(eps_cond, eps_uncond, noise, self.guidance_weight, self.usd_lambda)

    def name_losses(self, out: dict[str, Any]) -> dict[str, Any]:
        out["loss_usd"] = out.pop("loss_sds")
        out["usd_lambda"] = torch.tensor(self.usd_lambda)
        return out


__all__ = ["USDTextGuidance", "check_lambda"]
