"""A diagonal Gaussian over feature maps, parameterised by [mean; log-variance] channels (the VAE posterior
of Kingma & Welling, arXiv 1312.6114 §2.4; Control4D's latent code, docs/methods/control4d.md §"GAN renderer").

    DiagonalGaussian(params [B,2C,h,w]): mean, logvar (clamped to [-30, 20]) -> sample() / mode() [B,C,h,w],
    kl() [B] = 0.5 Σ (mean² + var - 1 - logvar) over C, h, w (the KL divergence to N(0, I)).
"""
from __future__ import annotations

import torch
from torch import Tensor


class DiagonalGaussian:
    def __init__(self, params: Tensor) -> None:
        self.mean, logvar = params.float().chunk(2, dim=1)  # float32: exp(20) overflows half precision
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self) -> Tensor:
        return self.mean + self.std * torch.randn_like(self.mean)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        return 0.5 * (self.mean.square() + self.std.square() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


__all__ = ["DiagonalGaussian"]
