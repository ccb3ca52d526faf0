"""Attention-mask alignment (AMA) loss (docs/methods/xdreamer.md §2).

    L_AMA = (1 / K) Σ_k mean | norm(M_k) − resize(mask, size(M_k)) |

M_k [B, h_k, w_k]: the k-th recorded cross-attention map (conditional branch, EOS column, mean over
heads; `attention_capture`), norm = per-map min-max normalisation to [0, 1]; mask [B, H, W, 1]:
the rendered anti-aliased object mask (the renderer's differentiable `opacity`), area-averaged from
full resolution down to each map's size (bilinear when a map is larger than the render). All K
maps count (the released code kept only the last one, compared pre-softmax logits, and squeezed
the mask through 8 × 8; §5). Gradients flow into the maps (CG-LoRA, camera encoder, latents) and
into the mask (the geometry).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def normalize_map(attention: Tensor, eps: float = 1e-8) -> Tensor:
    """Min-max normalise each map of [B, h, w] to [0, 1]."""
    flat = attention.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1)
    return (attention - lo) / (hi - lo).clamp_min(eps)


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """mask [B, H, W, 1] (or [B, H, W]) -> [B, h, w]: area average when shrinking, bilinear otherwise."""
    m = mask[..., 0] if mask.dim() == 4 else mask
    m = m[:, None].float()
    if tuple(m.shape[-2:]) == tuple(size):
        return m[:, 0]
    if m.shape[-2] >= size[0] and m.shape[-1] >= size[1]:
        return F.interpolate(m, size=size, mode="area")[:, 0]
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)[:, 0]


def ama_loss(maps: Sequence[Tensor], mask: Tensor) -> Tensor:
    """Mean over maps of the L1 distance between the normalised map [B,h,w] and the resized mask."""
    if len(maps) == 0:
        raise ValueError("ama_loss: no attention maps were recorded")
    terms = [F.l1_loss(normalize_map(m.float()), resize_mask(mask, tuple(m.shape[-2:])).to(m.device)) for m in maps]
    return torch.stack(terms).mean()


__all__ = ["ama_loss", "normalize_map", "resize_mask"]
