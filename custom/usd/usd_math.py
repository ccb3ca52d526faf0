"""The unbiased score of USD (docs/methods/usd.md §1) on top of lift3d's SDS math.

SDS with classifier-free guidance splits into a guidance term and an unconditional-minus-noise term:

    eps_cfg - eps = w_cfg (eps_cond - eps_uncond) + (eps_uncond - eps)

USD weighs the second term by `lambda` (0 = USD, 1 = SDS) and, for image-to-3D, takes eps_uncond
from Stable Diffusion (empty prompt) on the same noisy latent instead of Zero-1-to-3's zero-image,
zero-pose prediction. `lift3d.guidance.sds.ScoreDistillationGuidance.distill` forms
grad = w(t) (eps_guided - eps); `usd_guided_noise` returns the eps_guided for which that is

    grad = w(t) [ w_cfg (eps_cond - eps_uncond) + lambda (eps_uncond - eps) ].

It is written `lambda eps_uncond + (1 - lambda) eps + w_cfg (eps_cond - eps_uncond)` so that at
lambda = 1 it is bit for bit `classifier_free_guidance(eps_uncond, eps_cond, w_cfg)` (1 * x = x,
x + 0 = x, and the same operation order): lambda = 1 reproduces a plain SDS guidance exactly.
At lambda = 0 the result is w(t) w_cfg (eps_cond - eps_uncond) up to one float rounding of
(eps + x) - eps.

The reference-view term of image-to-3D (§2) is a delta-denoising gradient with the unconditional
model only: grad = w(t) (eps_uncond(z_render_t) - eps_uncond(z_input_t)), both latents noised with
the same eps and t; `sds_gradient(eps_render, eps_input, w)` computes exactly that.
"""
from __future__ import annotations

from torch import Tensor

USD_UNCONDITIONALS = ("sd", "zero123")


def usd_guided_noise(eps_cond: Tensor, eps_uncond: Tensor, noise: Tensor, guidance_scale: float, lam: float) -> Tensor:
    """eps_guided [B,4,h,w] with eps_guided - noise = w_cfg (eps_cond - eps_uncond) + lam (eps_uncond - noise)."""
    lam = float(lam)
    return (lam * eps_uncond + (1.0 - lam) * noise) + guidance_scale * (eps_cond - eps_uncond)


__all__ = ["USD_UNCONDITIONALS", "usd_guided_noise"]
