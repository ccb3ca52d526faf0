"""Triton z-buffer rasterization: the depth test of ``lift3d.ops.rasterize.rasterize`` per screen tile.

The triangle setup (homogeneous edge functions ``E``, depth plane ``Zp``, culling, pixel bounding
boxes) and the final resolve (barycentrics and depth of the winner at each covered pixel) are the
reference's own PyTorch code (``_setup_triangles`` / ``_resolve_winners``); this module replaces
the candidate enumeration and the ``scatter_reduce`` depth test in between:

1. binning (torch): every triangle is listed in each ``TILE_H x TILE_W`` tile its pixel bounding
   box touches; the (tile, triangle) pairs are sorted by tile with a stable sort, so each tile's
   list is in ascending triangle order;
2. one Triton program per tile walks its list and keeps, per pixel, the smallest
   ``(sortable depth bits, triangle id)`` -- the reference's packed int64 key -- among the triangles
   whose bounding box contains the pixel and whose edge functions and depth pass the reference's
   tests (evaluated with the same float32 operations, ``enable_fp_fusion=False``).

The winners, hence ``rast``, are therefore exactly the reference's. Memory: 8 bytes per
(tile, triangle) pair plus 4 bytes per pixel, instead of the reference's per-(pixel, triangle)
candidates.
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

TILE_H = 16
TILE_W = 16
NUM_WARPS = 4


@triton.jit
def _raster_tile_kernel(
    table_ptr, fid_ptr, box_ptr, pairs_ptr, tile_start_ptr, xs_ptr, ys_ptr, out_ptr,
    H, W, n_tx, n_ty, TH: tl.constexpr, TW: tl.constexpr,
):
    tile = tl.program_id(0).to(tl.int64)
    per_image = n_ty * n_tx
    b = tile // per_image
    rem = tile % per_image
    ty = rem // n_tx
    tx = rem % n_tx
    py = ty * TH + tl.arange(0, TH)[:, None]  # [TH, 1]
    px = tx * TW + tl.arange(0, TW)[None, :]  # [1, TW]
    X = tl.load(xs_ptr + px, mask=px < W, other=0.0)
    Y = tl.load(ys_ptr + py, mask=py < H, other=0.0)
    best_key = tl.full([TH, TW], 2147483647, tl.int32)
    best_f = tl.full([TH, TW], -1, tl.int32)
    lo = tl.load(tile_start_ptr + tile)
    hi = tl.load(tile_start_ptr + tile + 1)
    for p in range(lo, hi):
        t = tl.load(pairs_ptr + p).to(tl.int64)
        row = table_ptr + t * 12
        f = tl.load(fid_ptr + t)
        bx0 = tl.load(box_ptr + t * 4 + 0)
        bx1 = tl.load(box_ptr + t * 4 + 1)
        by0 = tl.load(box_ptr + t * 4 + 2)
        by1 = tl.load(box_ptr + t * 4 + 3)
        mu0 = tl.load(row + 0) * X + tl.load(row + 1) * Y + tl.load(row + 2)
        mu1 = tl.load(row + 3) * X + tl.load(row + 4) * Y + tl.load(row + 5)
        mu2 = tl.load(row + 6) * X + tl.load(row + 7) * Y + tl.load(row + 8)
        depth = tl.load(row + 9) * X + tl.load(row + 10) * Y + tl.load(row + 11)
        inside = (mu0 >= 0) & (mu1 >= 0) & (mu2 >= 0) & (depth >= -1.0) & (depth <= 1.0)
        inside = inside & (px >= bx0) & (px <= bx1) & (py >= by0) & (py <= by1)
        bits = depth.to(tl.int32, bitcast=True)
        key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # signed order == float order
        better = inside & ((key < best_key) | ((key == best_key) & (f < best_f)))
        best_key = tl.where(better, key, best_key)
        best_f = tl.where(better, f, best_f)
    tl.store(out_ptr + (b * H + py) * W + px, best_f, mask=(py < H) & (px < W))


def bin_triangles(setup, B: int, H: int, W: int, tile_h: int = TILE_H, tile_w: int = TILE_W):
    """(tile_start [n_tiles + 1] int64, pairs [P] int32 triangle rows sorted by tile, n_tx, n_ty)."""
    device = setup.table.device
    n_tx = triton.cdiv(W, tile_w)
    n_ty = triton.cdiv(H, tile_h)
    x1 = setup.x0 + setup.nx - 1
    y1 = setup.y0 + setup.ny - 1
    tx0 = setup.x0 // tile_w
    ty0 = setup.y0 // tile_h
    ntx = x1 // tile_w - tx0 + 1
    nty = y1 // tile_h - ty0 + 1
    cnt = ntx * nty  # [T] tiles per triangle
    cum = torch.cumsum(cnt, 0)
    total = int(cum[-1])  # host sync: number of (tile, triangle) pairs
    n_tri = cnt.numel()
    tid = torch.repeat_interleave(torch.arange(n_tri, device=device), cnt, output_size=total)
    local = torch.arange(total, device=device) - (cum - cnt)[tid]
    ntx_t = ntx[tid]
    tx = tx0[tid] + local % ntx_t
    ty = ty0[tid] + local // ntx_t
    key = (setup.bidx[tid] * n_ty + ty) * n_tx + tx
    key_sorted, order = torch.sort(key, stable=True)
    pairs = tid[order].to(torch.int32)
    n_tiles = B * n_ty * n_tx
    tile_start = torch.searchsorted(key_sorted, torch.arange(n_tiles + 1, device=device))
    return tile_start, pairs, n_tx, n_ty


def rasterize_winners(setup, B: int, H: int, W: int) -> Tuple[Tensor, Tensor]:
    """(flat indices of covered pixels [N] long, winning triangle id [N] long), as the reference's."""
    device = setup.table.device
    tile_start, pairs, n_tx, n_ty = bin_triangles(setup, B, H, W)
    x1 = setup.x0 + setup.nx - 1
    y1 = setup.y0 + setup.ny - 1
    box = torch.stack([setup.x0, x1, setup.y0, y1], dim=-1).to(torch.int32).contiguous()
    table = setup.table.to(torch.float32).contiguous()
    fid = setup.fidx.to(torch.int32).contiguous()
    best = torch.empty(B * H * W, device=device, dtype=torch.int32)
    n_tiles = B * n_ty * n_tx
    _raster_tile_kernel[(n_tiles,)](
        table, fid, box, pairs, tile_start, setup.xs.contiguous(), setup.ys.contiguous(), best,
        H, W, n_tx, n_ty, TH=TILE_H, TW=TILE_W, num_warps=NUM_WARPS, enable_fp_fusion=False,
    )
    hit = torch.nonzero(best >= 0).squeeze(1)
    return hit, best[hit].long()
