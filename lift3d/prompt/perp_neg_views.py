"""Perp-Neg's view-dependent prompts (Armandpour et al., arXiv 2304.04968 §4; docs/methods/perp_neg.md §2):
for each camera, the positive text embedding interpolated between the direction prompts and two negative
prompts with weights that depend on how far the view is from each direction.

Azimuth a in degrees, wrapped to [-180, 180); directions indexed as lift3d.prompt.directions
(0 side, 1 front, 2 back, 3 overhead); f(p, r) = p0 exp(-p1 r) + p2 (threestudio's
`shifted_expotional_decay` with its keys perp_neg_f_*):

    overhead view (elevation > overhead_threshold): positive = overhead prompt, negatives = the negative
        prompt twice with weight 0 (plain CFG);
    |a| < 90  (front half), r = 1 - |a| / 90 (1 at the front, 0 at the side):
        positive = r front + (1 - r) side;  negatives front, side with weights -f(f_fs, r), -f(f_sf, 1 - r)
    |a| >= 90 (back half),  r = 2 - |a| / 90 (1 at the side, 0 at the back):
        positive = r side + (1 - r) back;   negatives side, front with weights -f(f_sb, r), -f(f_fsb, r)

The defaults make f(f_fs, 1) ~ 0 and f(f_sb, 1) ~ 0: a view exactly at a direction does not push away
from that direction's own prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from lift3d.prompt.directions import shift_azimuth_deg

SIDE, FRONT, BACK, OVERHEAD = 0, 1, 2, 3
N_DIRECTIONS = 4
# threestudio's defaults (a, b, c) of a exp(-b r) + c
DEFAULT_F_SB = (1.0, 0.5, -0.606)
DEFAULT_F_FSB = (1.0, 0.5, 0.967)
DEFAULT_F_FS = (4.0, 0.5, -2.426)
DEFAULT_F_SF = (4.0, 0.5, -2.426)


def shifted_exponential(params: Sequence[float], r: Tensor) -> Tensor:
    """p0 exp(-p1 r) + p2, elementwise on r."""
    a, b, c = (float(p) for p in params)
    return a * torch.exp(-b * r) + c


@dataclass
class PerpNegViews:
    """Per camera b: positive = sum_j pos_mix[b, j] text_vd[j]; negative k = table[neg_index[b, k]] with
    table = cat(text_vd [4], uncond_vd [4]) (index 4 + j: direction j's negative prompt); weights w_k."""

    pos_mix: Tensor  # [B,4] float
    neg_index: Tensor  # [B,2] long, into the 8-row table
    neg_weights: Tensor  # [B,2] float (<= 0 for the defaults)


def perp_neg_views(azimuth_deg: Tensor, overhead: Tensor, f_sb: Sequence[float] = DEFAULT_F_SB,
                   f_fsb: Sequence[float] = DEFAULT_F_FSB, f_fs: Sequence[float] = DEFAULT_F_FS,
                   f_sf: Sequence[float] = DEFAULT_F_SF) -> PerpNegViews:
    """The interpolation of the module docstring for azimuth_deg [B] (degrees) and overhead [B] bool."""
    a = shift_azimuth_deg(azimuth_deg.float().reshape(-1)).abs()  # [B] in [0, 180]
    overhead = overhead.reshape(-1).bool()
    B = a.shape[0]
    front_half = a < 90.0
    r = torch.where(front_half, 1.0 - a / 90.0, 2.0 - a / 90.0)  # [B] in [0, 1]
    rows = torch.arange(B)
    pos_mix = torch.zeros(B, N_DIRECTIONS)
    # front half: r front + (1 - r) side; back half: r side + (1 - r) back
    pos_mix[rows, torch.where(front_half, FRONT, SIDE)] += r
    pos_mix[rows, torch.where(front_half, SIDE, BACK)] += 1.0 - r
    neg_index = torch.stack([torch.where(front_half, FRONT, SIDE), torch.where(front_half, SIDE, FRONT)], dim=-1)
    neg_weights = -torch.stack([
        torch.where(front_half, shifted_exponential(f_fs, r), shifted_exponential(f_sb, r)),
        torch.where(front_half, shifted_exponential(f_sf, 1.0 - r), shifted_exponential(f_fsb, r)),
    ], dim=-1)  # [B,2]
    # overhead: the overhead prompt, and the negative prompt twice with weight 0
    pos_mix[overhead] = 0.0
    pos_mix[overhead, OVERHEAD] = 1.0
    neg_index[overhead] = N_DIRECTIONS + OVERHEAD
    neg_weights[overhead] = 0.0
    return PerpNegViews(pos_mix, neg_index.long(), neg_weights)


__all__ = ["DEFAULT_F_FS", "DEFAULT_F_FSB", "DEFAULT_F_SB", "DEFAULT_F_SF", "PerpNegViews", "perp_neg_views",
           "shifted_exponential"]
