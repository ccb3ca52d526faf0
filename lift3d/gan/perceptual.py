"""A perceptual distance on a frozen image encoder's features: LPIPS's form (Zhang et al., arXiv 1801.03924
§3, eq. 1) with unit channel weights — per stage, features normalised to unit length along channels, squared
differences summed over channels and averaged over pixels, summed over stages
(docs/methods/control4d.md §"Losses": Control4D's LPIPS term, whose VGG/AlexNet weights lift3d cannot fetch).

`vae_encoder_stages(vae)`: the stages of a diffusers AutoencoderKL encoder (conv_in, then each down block),
the network lift3d already holds frozen with the guidance's diffusion model. Gradients flow to the images.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# images [B,3,H,W] in [0,1] -> feature maps of successive stages
Stages = Callable[[Tensor], list[Tensor]]


def vae_encoder_stages(vae: Any) -> Stages:
    encoder = vae.encoder
    dtype = next(encoder.parameters()).dtype

    def stages(images: Tensor) -> list[Tensor]:
        h = encoder.conv_in((images * 2.0 - 1.0).to(dtype))
        feats = [h]
        for block in encoder.down_blocks:
            h = block(h)
            feats.append(h)
        return [f.float() for f in feats]

    return stages


def perceptual_distance(stages: Stages, a: Tensor, b: Tensor, eps: float = 1e-10) -> Tensor:
    """a, b [B,3,H,W] in [0,1] -> [B]: Σ_stages mean_pixels Σ_channels (â - b̂)², â = a / |a|_channels."""
    total = torch.zeros(a.shape[0], device=a.device)
    for fa, fb in zip(stages(a), stages(b)):
        na = fa / (fa.square().sum(dim=1, keepdim=True) + eps).sqrt()
        nb = fb / (fb.square().sum(dim=1, keepdim=True) + eps).sqrt()
        total = total + (na - nb).square().sum(dim=1).mean(dim=(1, 2))
    return total


__all__ = ["Stages", "perceptual_distance", "vae_encoder_stages"]
