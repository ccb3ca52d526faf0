"""Scores against a known answer: mask IoU, PSNR, Chamfer distance."""
from __future__ import annotations

import torch


def mask_iou(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """IoU of two [B,H,W,1] soft masks binarised at `threshold`, per image → [B]."""
    p, t = pred > threshold, target > threshold
    inter = (p & t).flatten(1).sum(1).float()
    union = (p | t).flatten(1).sum(1).float().clamp(min=1.0)
    return inter / union


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of [B,H,W,C] images in [0,1], per image → [B]."""
    mse = ((pred - target) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    return -10.0 * torch.log10(mse)


def chamfer_distance(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Symmetric mean nearest-neighbour distance between point sets a [N,3] and b [M,3]:
    0.5 * (mean_a min_b |a-b| + mean_b min_a |a-b|)."""

    def one_way(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.cdist(xc, y).min(dim=1).values for xc in x.split(chunk)]).mean()

    return 0.5 * (one_way(a, b) + one_way(b, a))
