"""Exponential moving average of the generator's weights (StyleGAN2 / EG3D's G_ema; Karras et al.
2018 §A.1): after each G step, θ_ema ← β θ_ema + (1 − β) θ with β = 0.5^(batch / ema_images), i.e. a
half-life of `ema_images` images; with a ramp-up the half-life is at most `rampup` × the images seen."""
from __future__ import annotations

import torch
import torch.nn as nn


def ema_beta(batch_size: int, ema_images: float, images_seen: float, rampup: float | None = 0.05) -> float:
    half_life = ema_images if rampup is None else min(ema_images, images_seen * rampup)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """θ_ema ← lerp(θ, θ_ema, β) for parameters; buffers (e.g. w_avg) are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
