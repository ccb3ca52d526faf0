"""A small ADA-style differentiable augmentation (Karras et al. 2020, "Training GANs with limited data",
arXiv 2006.06676): every augmentation is applied to each image with probability p, identically for
reals and fakes, before the discriminator, and is differentiable so G's gradients pass through it.

Here: integer translation (up to 1/8 of the size, zero-padded; ADA's `xint`), brightness, contrast
and saturation (ADA's colour group). Geometric flips are left out: they would contradict the camera
label the discriminator is conditioned on. The adaptive p (ADA §3) follows r_t = E[sign(D(real))]:
p += sign(r_t - target) · batch / (speed_images), clamped to [0, 1].
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class DifferentiableAugment(nn.Module):
    def __init__(self, p: float = 0.0, target: float = 0.6, speed_images: float = 100_000.0, adaptive: bool = True,
                 translate: float = 0.125, brightness: float = 0.2, contrast: float = 0.5, saturation: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("p", torch.tensor(float(p)))  # checkpointed with the system
        self.target, self.speed_images, self.adaptive = target, speed_images, adaptive
        self.translate, self.brightness, self.contrast, self.saturation = translate, brightness, contrast, saturation

    def forward(self, x: Tensor) -> Tensor:
        """x [B,C,H,W] in [-1,1] (C = 3·k: k RGB images stacked, augmented alike) -> [B,C,H,W]."""
        p = float(self.p)
        if p <= 0.0:
            return x
        b, c, h, w = x.shape
        dev = x.device

        def chosen() -> Tensor:  # [B,1,1,1] 1 where the augmentation applies
            return (torch.rand(b, 1, 1, 1, device=dev) < p).to(x.dtype)

        # integer translation, zero padding
        shift = torch.round((torch.rand(b, 2, device=dev) * 2 - 1) * self.translate * torch.tensor([w, h], device=dev))
        shift = shift * chosen().reshape(b, 1)
        theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, :, 2] = -2.0 * shift / torch.tensor([w, h], device=dev)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        # colour, per RGB triplet
        x = x.reshape(b, -1, 3, h, w)
        x = x + (torch.randn(b, 1, 1, 1, 1, device=dev) * self.brightness) * chosen()[..., None]
        mean = x.mean(dim=(2, 3, 4), keepdim=True)
        scale = torch.exp2(torch.randn(b, 1, 1, 1, 1, device=dev) * self.contrast)
        x = mean + (x - mean) * (1 + (scale - 1) * chosen()[..., None])
        luma = x.mean(dim=2, keepdim=True)
        sat = torch.exp2(torch.randn(b, 1, 1, 1, 1, device=dev) * self.saturation)
        x = luma + (x - luma) * (1 + (sat - 1) * chosen()[..., None])
        return x.reshape(b, c, h, w)

    @torch.no_grad()
    def adjust(self, real_logits: Tensor) -> None:
        """ADA's controller: move p toward keeping E[sign(D(real))] at `target`."""
        if not self.adaptive:
            return
        r_t = float(torch.sign(real_logits).mean())
        step = math.copysign(real_logits.shape[0] / self.speed_images, r_t - self.target)
        self.p.copy_((self.p + step).clamp(0.0, 1.0))
