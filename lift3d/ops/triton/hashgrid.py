"""Triton hash-grid encoding (tiny-cuda-nn ``HashGrid`` semantics), forward and backward.

Computes exactly the function of the PyTorch reference ``lift3d.networks.hashgrid._encode`` (see
that module for the semantics): per level, ``p = x * scale + 0.5``, cell ``floor(p)`` cast through
uint32, the ``2^D`` cell corners indexed densely (``x + y*res + z*res^2``) or with the coherent
prime hash (``x ^ y*2654435761 ^ z*805459861``) in wrapping uint32 arithmetic, modulo the level
size, plus the level offset; multilinear weights.

Kernels (grid = point blocks x levels; consecutive programs share a level, so a level's table
stays hot in L2 while all point blocks read it):

* ``_fwd_kernel``  -- out[N, L*F]
* ``_bwd_kernel``  -- d table (fp32 atomics, relaxed) and, optionally, d x: per-level partial
  gradients are written to an [L, N, D] buffer and summed afterwards (deterministic, no atomics).

Only float32 inputs and tables are handled, with 1..3 input dimensions and a power-of-two number
of features per level (<= 16); ``supported`` says so and the caller falls back to the reference
otherwise. The backward is not differentiable itself: for double backward (``create_graph=True``)
the caller uses the reference backward, which is.

Mixed arithmetic is done with ``enable_fp_fusion=False`` so that ``x * scale + 0.5`` is rounded
like PyTorch's separate multiply and add: the cell a point falls in is then the reference's.
"""

from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

BLOCK_FWD = 128
BLOCK_BWD = 128
NUM_WARPS = 4


@triton.jit
def _level_params(meta_f_ptr, meta_i_ptr, lvl):
    scale = tl.load(meta_f_ptr + lvl)
    res = tl.load(meta_i_ptr + lvl * 4 + 0).to(tl.uint32)
    size = tl.load(meta_i_ptr + lvl * 4 + 1).to(tl.uint32)
    offset = tl.load(meta_i_ptr + lvl * 4 + 2)  # int64
    hashed = tl.load(meta_i_ptr + lvl * 4 + 3)
    return scale, res, size, offset, hashed


@triton.jit
def _axis(x_ptr, rows, mask, scale, d: tl.constexpr, D: tl.constexpr):
    """Fractional position t [BLOCK] (float32) and cell coordinate (uint32) along axis d."""
    x = tl.load(x_ptr + rows * D + d, mask=mask, other=0.0)
    pos = x * scale + 0.5
    cell = tl.floor(pos)
    t = pos - cell
    c = cell.to(tl.int32).to(tl.uint32)
    return t, c


@triton.jit
def _factor(t, c, bit: tl.constexpr):
    """Interpolation factor and corner coordinate of one axis for corner bit ``bit``."""
    if bit:
        w = t
        k = c + 1
    else:
        w = 1.0 - t
        k = c
    return w, k


@triton.jit
def _corner_index(c0, c1, c2, res, size, hashed, D: tl.constexpr):
    """Entry index within the level (uint32 arithmetic, wraps like tcnn)."""
    p1 = tl.full([], 2654435761, tl.uint32)
    p2 = tl.full([], 805459861, tl.uint32)
    if D == 1:
        dense = c0
        hsh = c0
    elif D == 2:
        dense = c0 + c1 * res
        hsh = c0 ^ (c1 * p1)
    else:
        dense = c0 + c1 * res + c2 * (res * res)
        hsh = c0 ^ (c1 * p1) ^ (c2 * p2)
    idx = tl.where(hashed != 0, hsh, dense)
    return idx % size


@triton.jit
def _cell(x_ptr, rows, mask, scale, D: tl.constexpr):
    """Per-axis fractional position t_d and cell index c_d of each point (unused axes repeat axis 0)."""
    t0, c0 = _axis(x_ptr, rows, mask, scale, 0, D)
    t1 = t0
    c1 = c0
    t2 = t0
    c2 = c0
    if D > 1:
        t1, c1 = _axis(x_ptr, rows, mask, scale, 1, D)
    if D > 2:
        t2, c2 = _axis(x_ptr, rows, mask, scale, 2, D)
    return t0, c0, t1, c1, t2, c2


@triton.jit
def _fwd_kernel(
    x_ptr, table_ptr, out_ptr, meta_f_ptr, meta_i_ptr, N, OUT_STRIDE,
    D: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    lvl = tl.program_id(1)
    rows = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = rows < N
    scale, res, size, offset, hashed = _level_params(meta_f_ptr, meta_i_ptr, lvl)
    t0, c0, t1, c1, t2, c2 = _cell(x_ptr, rows, mask, scale, D)
    feat = tl.arange(0, F)
    acc = tl.zeros([BLOCK, F], dtype=tl.float32)
    for corner in tl.static_range(1 << D):
        w, k0 = _factor(t0, c0, corner & 1)
        k1 = c1
        k2 = c2
        if D > 1:
            w1, k1 = _factor(t1, c1, (corner >> 1) & 1)
            w = w * w1
        if D > 2:
            w2, k2 = _factor(t2, c2, (corner >> 2) & 1)
            w = w * w2
        idx = _corner_index(k0, k1, k2, res, size, hashed, D)
        entry = offset + idx.to(tl.int64)
        f = tl.load(table_ptr + entry[:, None] * F + feat[None, :], mask=mask[:, None], other=0.0)
        acc += w[:, None] * f
    tl.store(out_ptr + rows[:, None] * OUT_STRIDE + lvl * F + feat[None, :], acc, mask=mask[:, None])


@triton.jit
def _bwd_kernel(
    x_ptr, table_ptr, gout_ptr, gtable_ptr, gx_ptr, meta_f_ptr, meta_i_ptr, N, OUT_STRIDE,
    NEED_PARAMS: tl.constexpr, NEED_X: tl.constexpr,
    D: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    lvl = tl.program_id(1)
    rows = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = rows < N
    scale, res, size, offset, hashed = _level_params(meta_f_ptr, meta_i_ptr, lvl)
    t0, c0, t1, c1, t2, c2 = _cell(x_ptr, rows, mask, scale, D)
    feat = tl.arange(0, F)
    g = tl.load(gout_ptr + rows[:, None] * OUT_STRIDE + lvl * F + feat[None, :], mask=mask[:, None], other=0.0)
    dx0 = tl.zeros([BLOCK], dtype=tl.float32)
    dx1 = tl.zeros([BLOCK], dtype=tl.float32)
    dx2 = tl.zeros([BLOCK], dtype=tl.float32)
    for corner in tl.static_range(1 << D):
        w0, k0 = _factor(t0, c0, corner & 1)
        w1 = tl.full([BLOCK], 1.0, tl.float32)
        w2 = tl.full([BLOCK], 1.0, tl.float32)
        k1 = c1
        k2 = c2
        if D > 1:
            w1, k1 = _factor(t1, c1, (corner >> 1) & 1)
        if D > 2:
            w2, k2 = _factor(t2, c2, (corner >> 2) & 1)
        idx = _corner_index(k0, k1, k2, res, size, hashed, D)
        entry = offset + idx.to(tl.int64)
        ptrs = entry[:, None] * F + feat[None, :]
        if NEED_PARAMS:
            w = w0 * w1 * w2
            tl.atomic_add(gtable_ptr + ptrs, w[:, None] * g, mask=mask[:, None], sem="relaxed")
        if NEED_X:
            f = tl.load(table_ptr + ptrs, mask=mask[:, None], other=0.0)
            gf = tl.sum(f * g, axis=1)  # [BLOCK]
            # d w / d t_d replaces axis d's factor (1 - t, t) by (-1, +1)
            if corner & 1:
                dx0 += gf * (w1 * w2)
            else:
                dx0 -= gf * (w1 * w2)
            if D > 1:
                if (corner >> 1) & 1:
                    dx1 += gf * (w0 * w2)
                else:
                    dx1 -= gf * (w0 * w2)
            if D > 2:
                if (corner >> 2) & 1:
                    dx2 += gf * (w0 * w1)
                else:
                    dx2 -= gf * (w0 * w1)
    if NEED_X:
        base = gx_ptr + lvl.to(tl.int64) * N * D + rows * D
        tl.store(base + 0, dx0 * scale, mask=mask)
        if D > 1:
            tl.store(base + 1, dx1 * scale, mask=mask)
        if D > 2:
            tl.store(base + 2, dx2 * scale, mask=mask)


# ------------------------------------------------------------------------------------ wrappers
def supported(x: torch.Tensor, params: torch.Tensor, n_features: int) -> bool:
    """Whether the kernels handle these inputs (else use the reference)."""
    return (
        x.dim() == 2
        and 1 <= x.shape[1] <= 3
        and x.dtype == torch.float32
        and params.dtype == torch.float32
        and x.device == params.device
        and n_features >= 1
        and n_features <= 16
        and (n_features & (n_features - 1)) == 0
    )


@functools.lru_cache(maxsize=64)
def _level_meta(levels: Tuple, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    scales = torch.tensor([lv.scale for lv in levels], dtype=torch.float32)
    ints = torch.tensor([[lv.resolution, lv.size, lv.offset, int(lv.hashed)] for lv in levels], dtype=torch.int64)
    return scales.to(device), ints.to(device)


def level_meta(levels: Sequence, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-level (scale [L] float32, (resolution, size, offset, hashed) [L, 4] int64) on ``device``."""
    return _level_meta(tuple(levels), torch.device(device))


def _launch_opts() -> dict:
    return dict(num_warps=NUM_WARPS, enable_fp_fusion=False)


def hashgrid_forward(x: torch.Tensor, params: torch.Tensor, levels: List, n_features: int) -> torch.Tensor:
    """x [N, D] float32 in [0, 1], params [n_params] float32 -> [N, L * F]."""
    x = x.contiguous()
    params = params.contiguous()
    n, dims = x.shape
    n_levels = len(levels)
    out = torch.empty(n, n_levels * n_features, device=x.device, dtype=torch.float32)
    if n == 0 or n_levels == 0:
        return out
    meta_f, meta_i = level_meta(levels, x.device)
    grid = (triton.cdiv(n, BLOCK_FWD), n_levels)
    _fwd_kernel[grid](
        x, params, out, meta_f, meta_i, n, n_levels * n_features,
        D=dims, F=n_features, BLOCK=BLOCK_FWD, **_launch_opts(),
    )
    return out


def hashgrid_backward(
    x: torch.Tensor,
    params: torch.Tensor,
    grad_out: torch.Tensor,
    levels: List,
    n_features: int,
    need_x: bool,
    need_params: bool,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of ``sum(grad_out * encode(x, params))`` w.r.t. x [N, D] and params [n_params]."""
    x = x.contiguous()
    params = params.contiguous()
    n, dims = x.shape
    n_levels = len(levels)
    grad_params = torch.zeros_like(params) if need_params else None
    grad_x = torch.zeros_like(x) if need_x else None
    if n == 0 or n_levels == 0 or not (need_x or need_params):
        return grad_x, grad_params
    grad_out = grad_out.to(torch.float32).contiguous()
    meta_f, meta_i = level_meta(levels, x.device)
    gx_levels = torch.empty(n_levels, n, dims, device=x.device, dtype=torch.float32) if need_x else x
    grid = (triton.cdiv(n, BLOCK_BWD), n_levels)
    _bwd_kernel[grid](
        x, params, grad_out, grad_params if need_params else params, gx_levels, meta_f, meta_i,
        n, n_levels * n_features,
        NEED_PARAMS=need_params, NEED_X=need_x, D=dims, F=n_features, BLOCK=BLOCK_BWD, **_launch_opts(),
    )
    if need_x:
        grad_x = gx_levels.sum(0)
    return grad_x, grad_params
