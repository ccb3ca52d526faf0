"""The DDPM noise schedule as pure functions of alphabar_t (Ho et al., arXiv 2006.11239 §2, eq. 4;
DDIM: Song et al., arXiv 2010.02502 §4.1, eq. 12 with eta = 0).

Every diffusion model of lift3d.models exposes `alphas_cumprod` [T] (alphabar_t for t = 0..T-1); the
samplers (lift3d.models.ddim), the distillation rules (lift3d.guidance.sds) and the trainers of the toy
priors all use these functions on it:

    z_t   = sqrt(alphabar_t) z + sqrt(1 - alphabar_t) eps                         (add_noise)
    x0    = (z_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t)                   (predict_x0)
    z_t'  = sqrt(alphabar_t') x0 + sqrt(1 - alphabar_t') eps                      (ddim_step, t' < t)
"""
from __future__ import annotations

from torch import Tensor
import torch


def gather_alphabar(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """alphabar_t [B] broadcast to like's shape [B,1,1,1] (like's dtype and device)."""
    a = alphas_cumprod.to(device=like.device)[t.to(like.device).long()]
    return a.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def add_noise(z: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Forward diffusion z_t = sqrt(alphabar_t) z + sqrt(1 - alphabar_t) noise; z, noise [B,C,h,w]."""
    a = gather_alphabar(alphas_cumprod, t, z)
    return a.sqrt() * z + (1.0 - a).sqrt() * noise


def predict_x0(z_t: Tensor, eps: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """One-step estimate of the clean latent: x0 = (z_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t)."""
    a = gather_alphabar(alphas_cumprod, t, z_t)
    return (z_t - (1.0 - a).sqrt() * eps) / a.sqrt()


def ddim_step(z_t: Tensor, eps: Tensor, t: Tensor, t_prev: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Deterministic DDIM step from t to t_prev (< t; t_prev = -1 means alphabar = 1, the clean latent)."""
    x0 = predict_x0(z_t, eps, t, alphas_cumprod)
    ac = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod])  # index shifted by one: -1 -> 1.0
    a_prev = gather_alphabar(ac, t_prev + 1, z_t)
    return a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * eps


__all__ = ["add_noise", "ddim_step", "gather_alphabar", "predict_x0"]
