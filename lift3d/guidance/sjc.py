"""Score Jacobian Chaining's options of the Stable Diffusion guidance (Wang et al., SJC, arXiv 2212.00774;
docs/methods/sjc.md §2), threestudio's keys of `stable-diffusion-guidance`: `use_sjc`, `var_red`.

SJC works with the variance-exploding view of the DDPM: sigma_t = sqrt((1 - alphabar_t) / alphabar_t),
z_sigma = y + sigma n (n ~ N(0, I)), and the UNet sees z_sigma / sqrt(1 + sigma^2) — exactly the DDPM
noisy latent sqrt(alphabar_t) y + sqrt(1 - alphabar_t) n of the shared step. Its denoiser
D(z_sigma) = z_sigma - sigma eps_guided gives the PAAS score (§4, perturb-and-average scoring) and

    var_red: true  (§4.2, eq. 16)   grad = -(D - y) / sigma     = eps_guided - n
    var_red: false                  grad = -(D - z_sigma) / sigma = eps_guided

So SJC is the shared SDS step with the uniform weight w(t) = 1 and, without variance reduction, no
noise baseline. The mixin changes exactly those two pieces of ScoreDistillationGuidance
(`weight`, the noise baseline in `sds_from_prediction`); the rest of the step is the shared one.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lift3d.errors import ConfigError


class SJCOptions:
    """Mixin for a `ScoreDistillationGuidance` whose Config has `use_sjc` and `var_red`."""

    @classmethod
    def validate_sjc(cls, cfg: Any, path: str) -> None:
        if cfg.use_sjc and getattr(cfg, "use_img_loss", False):
            raise ConfigError(f"{path}: use_sjc and use_img_loss (HiFA) are two different rules: set one to false.")

    def weight(self, t: Tensor) -> Tensor:
        if self.cfg.use_sjc:
            return torch.ones(t.shape, dtype=torch.float32, device=t.device)
        return super().weight(t)  # type: ignore[misc]

    def sds_from_prediction(self, latents: Tensor, eps_guided: Tensor, noise: Tensor, t: Tensor) -> dict[str, Tensor]:
        if self.cfg.use_sjc and not self.cfg.var_red:
            noise = torch.zeros_like(noise)  # -(D - z_sigma) / sigma = eps_guided: no noise baseline
        return super().sds_from_prediction(latents, eps_guided, noise, t)  # type: ignore[misc]


__all__ = ["SJCOptions"]
