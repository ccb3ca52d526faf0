"""PatchGAN discriminator and hinge losses of Control4D's GAN renderer (Isola et al., pix2pix, arXiv
1611.07004 §3.2.2; hinge loss of Lim & Ye, arXiv 1705.02894; docs/methods/control4d.md §"GAN renderer").

`PatchDiscriminator(channels=64, layers=3)`: stride-2 4×4 convolutions doubling the width (at most 8×),
batch normalisation after all but the first, LeakyReLU(0.2), then a stride-1 layer and a 1-channel map of
per-patch logits [B,1,h',w']. Convolutions start from N(0, 0.02²), batch norms' scales from N(1, 0.02²).

    d_hinge_loss(D, real, fake) = 0.5 (E[relu(1 - D(real))] + E[relu(1 + D(fake))])   (inputs detached)
    g_loss(D, fake)             = -E[D(fake)]
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        width = channels
        for n in range(1, layers + 1):
            out = channels * min(2**n, 8)
            stride = 2 if n < layers else 1
            seq += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True)]
            width = out
        seq.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.main = nn.Sequential(*seq)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, image: Tensor) -> Tensor:
        """image [B,3,H,W] in [0,1] -> patch logits [B,1,h',w']."""
        return self.main(image)


def g_loss(discriminator: nn.Module, fake: Tensor) -> Tensor:
    """-E[D(fake)]: fake [B,3,H,W], differentiable through the generator."""
    return -discriminator(fake.contiguous()).mean()


def d_hinge_loss(discriminator: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """0.5 (E[relu(1 - D(real))] + E[relu(1 + D(fake))]) on detached images [B,3,H,W]."""
    logits_real = discriminator(real.contiguous().detach())
    logits_fake = discriminator(fake.contiguous().detach())
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


__all__ = ["PatchDiscriminator", "d_hinge_loss", "g_loss"]
