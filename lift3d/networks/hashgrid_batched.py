"""Hash-grid encoding with every level evaluated at once (the CPU fast path).

Same function as the per-level reference in ``lift3d.networks.hashgrid`` (``_encode`` /
``_encode_backward``; Instant-NGP, arXiv:2201.05989 section 3, tcnn's index rules), computed as a
few whole-tensor operations over ``[points, levels, corners]`` instead of a Python loop over levels:

- positions, cells and fractions of all levels in one broadcast: ``x [n, D] * scales [L]``;
- hashed levels (their table size is always the power of two ``2^log2_hashmap_size``) keep the low
  bits with a mask instead of a remainder; since only the low bits survive, the uint32 wrap of the
  reference needs no intermediate masking (int64 products wrap modulo 2^64, whose low 32 bits are
  the uint32 result). Dense levels (first, coarse): while every corner lies in ``[0, res]`` (inputs
  in ``[0, 1]``) the remainder is one conditional subtraction, otherwise the exact uint32 rule;
- per feature, one gather of all ``n * L * 2^D`` corner values and one weighted sum; the backward
  does one ``index_add`` per feature for the table and one contraction per axis for ``x``.

Points are processed in chunks of at most ``CORNER_BUDGET`` corners (``n * L * 2^D``), which bounds
the transient memory (about 40 bytes per corner: int32 index, weight, gathered features, products).
The backward is written with differentiable operations, so double backward
(analytic normals, eikonal loss) works as in the reference. Results equal the reference up to
floating-point summation order (tests: tests/test_hashgrid.py, against a float64 restatement).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from lift3d.networks.hashgrid import _PRIMES, _UINT32_MASK, GridLevel

# corners per chunk: 2^22 corners ~ 160 MB transient at most. Larger chunks mean fewer operations,
# and on a CPU shared by several jobs each multi-threaded operation can wait a scheduler slice.
CORNER_BUDGET = 1 << 22


@dataclass(frozen=True)
class _LevelGroup:
    """Consecutive levels that share an indexing rule (all dense, or all hashed)."""

    start: int  # first level
    stop: int  # one past the last level
    hashed: bool


@functools.lru_cache(maxsize=64)
def _groups(levels: Tuple[GridLevel, ...]) -> Tuple[_LevelGroup, ...]:
    groups: List[_LevelGroup] = []
    start = 0
    for i in range(1, len(levels) + 1):
        if i == len(levels) or levels[i].hashed != levels[start].hashed:
            groups.append(_LevelGroup(start, i, levels[start].hashed))
            start = i
    return tuple(groups)


@functools.lru_cache(maxsize=64)
def _level_constants(levels: Tuple[GridLevel, ...], dims: int, device: torch.device, dtype: torch.dtype):
    """Per-level tensors: scales [L] (dtype), offsets [L], sizes [L], dense strides [L, D] (int64)."""
    scales = torch.tensor([lv.scale for lv in levels], dtype=torch.float64).to(device=device, dtype=dtype)
    offsets = torch.tensor([lv.offset for lv in levels], dtype=torch.long, device=device)
    sizes = torch.tensor([lv.size for lv in levels], dtype=torch.long, device=device)
    strides = torch.tensor([[lv.resolution**d for d in range(dims)] for lv in levels], dtype=torch.long, device=device)
    return scales, offsets, sizes, strides


def _axis_view(t: torch.Tensor, d: int, dims: int) -> torch.Tensor:
    """[L, 2, n] -> [L, 1.., 2, ..1, n] with the 2 on corner axis d (of D corner axes)."""
    shape = [t.shape[0]] + [1] * dims + [t.shape[-1]]
    shape[1 + d] = 2
    return t.reshape(shape)


def _corner_index(cell: torch.Tensor, levels: Tuple[GridLevel, ...]) -> torch.Tensor:
    """cell [L, D, n] int64 -> global table rows of the 2^D corners [L, 2, ..., 2, n] (int32).

    Per-axis terms [Lg, D, 2, n] (a quarter of the corners in 3-D) are formed for all axes of a
    group at once and reduced below the level's size first; only the int32 combination touches
    every corner. Few, large operations: their count, not their size, sets the cost on a busy CPU."""
    n_levels, dims, n = cell.shape
    _, offsets, sizes, strides = _level_constants(levels, dims, cell.device, torch.float32)
    index = torch.empty([n_levels] + [2] * dims + [n], dtype=torch.int32, device=cell.device)
    per_level = [-1] + [1] * (dims + 1)  # view of a [Lg] constant against [Lg, 2, .., 2, n]
    for group in _groups(levels):
        lv = slice(group.start, group.stop)
        cells = cell[lv]  # [Lg, D, n]
        n_group = group.stop - group.start
        if group.hashed:
            # tcnn's uint32 hash: only the low bits survive the power-of-two size, and int64 products
            # wrap mod 2^64, so masking each term equals masking their xor
            primes = _primes(dims, cell.device)  # [1, D, 1]
            term = torch.empty(n_group, dims, 2, n, dtype=torch.long, device=cell.device)
            torch.mul(cells, primes, out=term[:, :, 0])
            torch.add(term[:, :, 0], primes, out=term[:, :, 1])  # (c + 1) * p
            term &= sizes[lv].view(-1, 1, 1, 1) - 1
            term = term.int()
            acc = _axis_view(term[:, 0], 0, dims)
            for d in range(1, dims):
                acc = acc ^ _axis_view(term[:, d], d, dims)
            torch.add(acc, offsets[lv].int().view(per_level), out=index[lv])
            continue
        # dense: corners lie in [0, res] for inputs in [0, 1]; then the row-major index is below
        # 2 * size and the remainder is one conditional subtraction (else: the exact int64 rule)
        low, high = torch.aminmax(cells.reshape(n_group, -1), dim=1)  # [Lg]
        res = torch.tensor([levels[i].resolution for i in range(group.start, group.stop)])
        if bool(low.min() < 0) or bool((high.cpu() >= res).any()):
            index[lv] = _dense_index_exact(cells, strides[lv], sizes[lv], offsets[lv], dims)
            continue
        stride = strides[lv].int().view(n_group, dims, 1)
        term = torch.empty(n_group, dims, 2, n, dtype=torch.int32, device=cell.device)
        torch.mul(cells, stride, out=term[:, :, 0])
        torch.add(term[:, :, 0], stride, out=term[:, :, 1])
        term[:, 0] += offsets[lv].int().view(-1, 1, 1)  # offset folded into the x term
        acc = _axis_view(term[:, 0], 0, dims)
        for d in range(1, dims):
            acc = acc + _axis_view(term[:, d], d, dims)
        # acc = row-major index + offset, below offset + 2 * size
        limit = (offsets[lv] + sizes[lv]).int().view(per_level)
        torch.where(acc >= limit, acc - sizes[lv].int().view(per_level), acc, out=index[lv])
    return index


@functools.lru_cache(maxsize=16)
def _primes(dims: int, device: torch.device) -> torch.Tensor:
    return torch.tensor(_PRIMES[:dims], dtype=torch.long, device=device).view(1, dims, 1)


def _dense_index_exact(cells: torch.Tensor, strides: torch.Tensor, sizes: torch.Tensor, offsets: torch.Tensor,
                       dims: int) -> torch.Tensor:
    """Dense levels with corners outside [0, res] (inputs outside [0, 1]): tcnn's uint32 wrap, then
    the remainder, in int64. cells [Lg, D, n] -> [Lg, 2, .., 2, n] int32."""
    acc: Optional[torch.Tensor] = None
    for d in range(dims):
        c = cells[:, d]  # [Lg, n]
        coords = torch.stack([c, c + 1], dim=1) & _UINT32_MASK  # [Lg, 2, n]
        term = _axis_view(coords * strides[:, d].view(-1, 1, 1), d, dims)
        acc = term if acc is None else acc + term
    assert acc is not None
    per_level = [-1] + [1] * (dims + 1)
    return (torch.remainder(acc & _UINT32_MASK, sizes.view(per_level)) + offsets.view(per_level)).int()


def _positions(xt: torch.Tensor, levels: Tuple[GridLevel, ...]) -> Tuple[torch.Tensor, torch.Tensor]:
    """xt [D, n] -> (cell [L, D, n] int64, frac [L, D, n]) with p = x * scale_l + 0.5 (tcnn)."""
    scales, _, _, _ = _level_constants(levels, xt.shape[0], xt.device, xt.dtype)
    pos = xt[None] * scales[:, None, None] + 0.5  # [L, D, n]
    cell = torch.floor(pos)
    frac = pos - cell  # floor has zero gradient: d frac / d x = scale
    return cell.long(), frac


def _factors(frac: torch.Tensor) -> List[torch.Tensor]:
    """frac [L, D, n] -> per axis [1 - t, t] as [L, 2, n] (views of one [L, D, 2, n] tensor)."""
    return list(torch.stack([1.0 - frac, frac], dim=2).unbind(1))


def _weights(factors: List[torch.Tensor], skip: int = -1) -> torch.Tensor:
    """Product of the per-axis factors except axis ``skip``: [L, 2, ..., 2, n] (size 1 on ``skip``)."""
    dims = len(factors)
    weight: Optional[torch.Tensor] = None
    for d, f in enumerate(factors):
        if d == skip:
            continue
        view = _axis_view(f, d, dims)
        weight = view if weight is None else weight * view
    assert weight is not None
    return weight


def _step(n_levels: int, dims: int) -> int:
    return max(1, CORNER_BUDGET // (n_levels * 2**dims))


def encode_all_levels(x: torch.Tensor, params: torch.Tensor, levels: List[GridLevel], n_features: int) -> torch.Tensor:
    """x [N, D], params [n_params] -> [N, L * F] (same as the reference ``_encode``)."""
    n, dims = x.shape
    n_levels, corners = len(levels), 2**dims
    key = tuple(levels)
    table_t = params.view(-1, n_features).t().contiguous()  # [F, n_entries]: one 1-D gather per feature
    xt = x.t().contiguous()  # [D, N]: points innermost, so every op runs along long rows
    parts = []
    step = _step(n_levels, dims)
    for s in range(0, n, step):
        xc = xt[:, s : s + step]
        m = xc.shape[1]
        cell, frac = _positions(xc, key)
        index = _corner_index(cell, key).view(-1)  # [L * 2^D * m]
        weight = _weights(_factors(frac)).view(n_levels, corners, m)  # [L, 2^D, m]
        feats = [(table_t[f].index_select(0, index).view(n_levels, corners, m) * weight).sum(1)
                 for f in range(n_features)]  # F x [L, m]
        parts.append(torch.stack(feats, dim=1))  # [L, F, m]
    out = torch.cat(parts, dim=2) if parts else table_t.new_zeros(n_levels, n_features, 0)  # [L, F, N]; N may be 0
    return out.permute(2, 0, 1).reshape(n, n_levels * n_features)


def encode_all_levels_backward(
    x: torch.Tensor,
    params: torch.Tensor,
    grad_out: torch.Tensor,
    levels: List[GridLevel],
    n_features: int,
    need_x: bool,
    need_params: bool,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of ``sum(grad_out * encode_all_levels(x, params))`` w.r.t. x [N, D] and params.

    Differentiable operations only (double backward goes through autograd on this function)."""
    n, dims = x.shape
    n_levels, corners = len(levels), 2**dims
    key = tuple(levels)
    table_t = params.view(-1, n_features).t().contiguous() if need_x else None  # [F, n_entries]
    grad_t = params.new_zeros(n_features, params.numel() // n_features) if need_params else None
    xt = x.t().contiguous()  # [D, N]
    gt = grad_out.reshape(n, n_levels, n_features).permute(1, 2, 0).contiguous()  # [L, F, N]
    scales = _level_constants(key, dims, x.device, x.dtype)[0].view(-1, 1)  # [L, 1]
    grad_x_parts: List[torch.Tensor] = []
    step = _step(n_levels, dims)
    for s in range(0, n, step):
        xc = xt[:, s : s + step]
        m = xc.shape[1]
        g = gt[:, :, s : s + m]  # [L, F, m]
        cell, frac = _positions(xc, key)
        index = _corner_index(cell, key).view(-1)  # [L * 2^D * m]
        factors = _factors(frac)
        if grad_t is not None:
            weight = _weights(factors).view(n_levels, corners, m)  # [L, 2^D, m]
            for f in range(n_features):
                grad_t[f].index_add_(0, index, (weight * g[:, f, None, :]).view(-1))
        if table_t is not None:
            g_dot_f = sum(table_t[f].index_select(0, index).view(n_levels, corners, m) * g[:, f, None, :]
                          for f in range(n_features))  # [L, 2^D, m]
            g_dot_f = g_dot_f.view([n_levels] + [2] * dims + [m])
            per_axis = []
            for d in range(dims):
                # d weight / d t_d replaces axis d's factor [1 - t, t] by [-1, 1]
                diff = g_dot_f.select(1 + d, 1) - g_dot_f.select(1 + d, 0)  # [L, 2, .., m] (D-1 corner axes)
                if dims > 1:
                    diff = diff * _weights(factors, skip=d).squeeze(1 + d)
                per_axis.append((diff.reshape(n_levels, -1, m).sum(1) * scales).sum(0))  # [m]
            grad_x_parts.append(torch.stack(per_axis, dim=1))  # [m, D]
    grad_params = grad_t.t().reshape(-1) if grad_t is not None else None
    grad_x = None
    if need_x:
        grad_x = torch.cat(grad_x_parts) if grad_x_parts else torch.zeros_like(x)
    return grad_x, grad_params
