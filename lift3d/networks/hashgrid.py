"""Multiresolution hash-grid encoding (Instant-NGP), pure PyTorch.

Semantics follow tiny-cuda-nn's ``HashGrid`` so that threestudio configs mean the same thing:

- level ``l`` has scale ``s_l = base_resolution * per_level_scale**l - 1`` (evaluated in float32 as
  tcnn does) and ``res_l = ceil(s_l) + 1`` grid vertices per axis;
- a point ``x`` in ``[0, 1]^D`` sits at ``p = x * s_l + 0.5`` in grid units; its cell is
  ``floor(p)`` and the feature is the (multi)linear interpolation of the ``2^D`` cell corners;
- a level stores ``min(next_multiple_of_8(res^D), 2^log2_hashmap_size)`` feature vectors. While
  ``res^D`` fits in that table the level is dense (``index = x + y*res + z*res^2``), otherwise
  corners are hashed with the coherent prime hash ``x*1 ^ y*2654435761 ^ z*805459861``. Integer
  arithmetic wraps like tcnn's uint32 (emulated in int64) and the index is taken modulo the table
  size. Inputs are not clamped (tcnn does not clamp either); keep them in ``[0, 1]``.
- all levels live in one flat parameter ``params`` laid out like tcnn's (level-major, then entry,
  then feature), initialised ``U(-1e-4, 1e-4)``.

Memory: the encoding is an ``autograd.Function`` that saves only ``x`` and ``params``; the
backward recomputes corner indices and weights level by level. The backward is written with
differentiable torch ops, so double backward (analytic normals, eikonal loss) works.

Paths: ``_encode`` / ``_encode_backward`` below are the per-level reference (one level at a time,
kept as the readable statement of the rules and as the ground truth of the faster paths). By default
the encoding runs every level at once (``lift3d.networks.hashgrid_batched``: one broadcast, masks
instead of remainders for the power-of-two hashed levels, one gather; same results up to summation
order); ``LIFT3D_REFERENCE_KERNELS=1`` selects the per-level reference instead (benchmarks, tests).

Fast path: for CUDA float32 tensors the forward and the (first-order) backward run as Triton
kernels (``lift3d.ops.triton.hashgrid``, dispatch policy in ``lift3d.ops.fast_path``); double
backward always goes through the reference backward above. ``LIFT3D_DISABLE_TRITON=1`` forces the
reference everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from lift3d.errors import ConfigError

# tiny-cuda-nn's coherent prime hash multipliers, one per input dimension.
_PRIMES: Tuple[int, ...] = (1, 2654435761, 805459861)
_UINT32_MASK = 0xFFFFFFFF


def _next_multiple(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def grid_scale(level: int, per_level_scale: float, base_resolution: int) -> float:
    """tcnn's ``exp2(level * log2(per_level_scale)) * base_resolution - 1`` in float32."""
    f32 = torch.float32
    log2_scale = torch.log2(torch.tensor(per_level_scale, dtype=f32))
    growth = torch.exp2(torch.tensor(float(level), dtype=f32) * log2_scale)
    return float(growth * torch.tensor(float(base_resolution), dtype=f32) - 1.0)


@dataclass(frozen=True)
class GridLevel:
    """Static description of one level of the grid."""

    scale: float  # grid units per unit of input
    resolution: int  # vertices per axis
    size: int  # feature vectors stored for this level
    offset: int  # first feature vector of this level in the flat table
    hashed: bool  # True: coherent prime hash; False: dense row-major index


def build_levels(
    n_input_dims: int,
    n_levels: int,
    log2_hashmap_size: int,
    base_resolution: int,
    per_level_scale: float,
) -> List[GridLevel]:
    levels: List[GridLevel] = []
    offset = 0
    hashmap_size = 2**log2_hashmap_size
    for level in range(n_levels):
        scale = grid_scale(level, per_level_scale, base_resolution)
        resolution = int(math.ceil(scale)) + 1
        dense_size = resolution**n_input_dims
        size = min(_next_multiple(dense_size, 8), hashmap_size)
        levels.append(GridLevel(scale, resolution, size, offset, hashed=dense_size > size))
        offset += size
    return levels


def _corner_index_and_weights(
    x: torch.Tensor, level: GridLevel
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Corner table indices (global, offset included) and per-axis interpolation factors.

    x: [N, D]. Returns ``index`` [N, 2, ..., 2] (D axes of size 2, int64) and for each axis d the
    fractional position ``t_d`` [N]. The weight of corner (b_0, ..., b_{D-1}) is
    ``prod_d (t_d if b_d else 1 - t_d)``.
    """
    n, dims = x.shape
    pos = x * level.scale + 0.5  # [N, D]
    cell = torch.floor(pos)  # [N, D]
    frac = pos - cell  # [N, D]; floor has zero gradient, so d frac / d x = scale
    cell = cell.long() & _UINT32_MASK  # tcnn casts through uint32
    bits = torch.arange(2, device=x.device, dtype=torch.long)  # [2]

    index: Optional[torch.Tensor] = None
    stride = 1
    for d in range(dims):
        coord = (cell[:, d, None] + bits) & _UINT32_MASK  # [N, 2]
        if level.hashed:
            term = (coord * _PRIMES[d]) & _UINT32_MASK
        else:
            term = coord * stride
            stride *= level.resolution
        shape = [n] + [1] * dims
        shape[d + 1] = 2
        term = term.view(shape)  # [N, 1.., 2, ..1]
        if index is None:
            index = term
        elif level.hashed:
            index = index ^ term
        else:
            index = (index + term) & _UINT32_MASK
    assert index is not None
    index = torch.remainder(index, level.size) + level.offset  # [N, 2, ..., 2]
    return index, list(frac.unbind(dim=1))


def _axis_factor(t: torch.Tensor, d: int, dims: int) -> torch.Tensor:
    """[1 - t, t] shaped to broadcast along axis d of a [N, 2, ..., 2] corner tensor."""
    shape = [t.shape[0]] + [1] * dims
    shape[d + 1] = 2
    return torch.stack([1.0 - t, t], dim=1).view(shape)


def _corner_weights(frac: List[torch.Tensor], skip: int = -1) -> torch.Tensor:
    """Product of the per-axis factors (all axes but ``skip``), broadcast to [N, 2, ..., 2]."""
    dims = len(frac)
    weight: Optional[torch.Tensor] = None
    for d, t in enumerate(frac):
        if d == skip:
            continue
        factor = _axis_factor(t, d, dims)
        weight = factor if weight is None else weight * factor
    assert weight is not None
    return weight.expand([frac[0].shape[0]] + [2] * dims)


def _encode(x: torch.Tensor, params: torch.Tensor, levels: List[GridLevel], n_features: int) -> torch.Tensor:
    """x: [N, D], params: [n_params] -> [N, n_levels * n_features]."""
    n, dims = x.shape
    table = params.view(-1, n_features)  # [n_entries, F]
    out = x.new_empty(n, len(levels) * n_features)
    for i, level in enumerate(levels):
        index, frac = _corner_index_and_weights(x, level)
        weight = _corner_weights(frac).reshape(n, 1, 2**dims)  # [N, 1, 2^D]
        feats = table.index_select(0, index.reshape(-1)).view(n, 2**dims, n_features)  # [N, 2^D, F]
        out[:, i * n_features : (i + 1) * n_features] = torch.bmm(weight, feats).squeeze(1)
    return out


def _encode_backward(
    x: torch.Tensor,
    params: torch.Tensor,
    grad_out: torch.Tensor,
    levels: List[GridLevel],
    n_features: int,
    need_x: bool,
    need_params: bool,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of ``sum(grad_out * _encode(x, params))`` w.r.t. x [N, D] and params [n_params].

    Written with differentiable ops only, so autograd can differentiate it again.
    """
    n, dims = x.shape
    n_corners = 2**dims
    table = params.view(-1, n_features)  # [n_entries, F]
    grad_table = torch.zeros_like(table) if need_params else None
    grad_x: Optional[torch.Tensor] = None
    for i, level in enumerate(levels):
        g = grad_out[:, i * n_features : (i + 1) * n_features]  # [N, F]
        index, frac = _corner_index_and_weights(x, level)
        flat_index = index.reshape(-1)  # [N * 2^D]
        if grad_table is not None:
            weight = _corner_weights(frac).reshape(n, n_corners, 1)  # [N, 2^D, 1]
            contrib = (weight * g[:, None, :]).reshape(-1, n_features)  # [N * 2^D, F]
            grad_table.index_add_(0, flat_index, contrib)
        if need_x:
            feats = table.index_select(0, flat_index).view(n, n_corners, n_features)
            g_dot_f = torch.bmm(feats, g[:, :, None]).view([n] + [2] * dims)  # [N, 2, ..., 2]
            per_axis = []
            for d in range(dims):
                # d weight / d t_d replaces axis d's factor [1 - t, t] by [-1, 1].
                others = _corner_weights(frac, skip=d) if dims > 1 else torch.ones_like(g_dot_f)
                signed = g_dot_f * others
                half = n_corners // 2
                upper = signed.select(d + 1, 1).reshape(n, half).sum(1)  # [N]
                lower = signed.select(d + 1, 0).reshape(n, half).sum(1)  # [N]
                per_axis.append(upper - lower)
            level_grad = torch.stack(per_axis, dim=1) * level.scale  # [N, D]
            grad_x = level_grad if grad_x is None else grad_x + level_grad
    grad_params = grad_table.view(-1) if grad_table is not None else None
    if need_x and grad_x is None:
        grad_x = torch.zeros_like(x)
    return grad_x, grad_params


def _fast_kernels(x: torch.Tensor, params: torch.Tensor, n_features: int):
    """The Triton kernel module when the fast path applies (CUDA, float32; lift3d.ops.fast_path), else None."""
    from lift3d.ops.fast_path import use_triton

    if not use_triton(x):
        return None
    from lift3d.ops.triton import hashgrid as kernels

    return kernels if kernels.supported(x, params, n_features) else None


def _use_batched() -> bool:
    """All levels at once (``hashgrid_batched``) unless LIFT3D_REFERENCE_KERNELS asks for the per-level reference."""
    from lift3d.ops.fast_path import reference_kernels

    return not reference_kernels()


class _HashGridFunction(torch.autograd.Function):
    # Under CUDA autocast the encoding still runs in float32 (tcnn keeps fp32 parameters too).
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, x: torch.Tensor, params: torch.Tensor, levels: List[GridLevel], n_features: int) -> torch.Tensor:
        ctx.save_for_backward(x, params)
        ctx.levels = levels
        ctx.n_features = n_features
        ctx.fast = _fast_kernels(x, params, n_features)
        ctx.batched = ctx.fast is None and _use_batched()
        if ctx.fast is not None:
            return ctx.fast.hashgrid_forward(x, params, levels, n_features)
        if ctx.batched:
            return hashgrid_batched.encode_all_levels(x, params, levels, n_features)
        return _encode(x, params, levels, n_features)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out: torch.Tensor):
        x, params = ctx.saved_tensors
        # The Triton backward is not differentiable: double backward (create_graph=True, grad mode
        # on here) takes the reference, whose backward is written with differentiable ops.
        if ctx.fast is not None and not torch.is_grad_enabled():
            grad_x, grad_params = ctx.fast.hashgrid_backward(
                x, params, grad_out, ctx.levels, ctx.n_features,
                need_x=ctx.needs_input_grad[0], need_params=ctx.needs_input_grad[1],
            )
            return grad_x, grad_params, None, None
        backward = hashgrid_batched.encode_all_levels_backward if ctx.batched else _encode_backward
        grad_x, grad_params = backward(
            x,
            params,
            grad_out,
            ctx.levels,
            ctx.n_features,
            need_x=ctx.needs_input_grad[0],
            need_params=ctx.needs_input_grad[1],
        )
        return grad_x, grad_params, None, None


class HashGridEncoding(nn.Module):
    """tiny-cuda-nn ``HashGrid`` encoding: ``[..., D]`` in ``[0, 1]`` -> ``[..., n_levels * F]``.

    Attributes: ``n_input_dims``, ``n_output_dims``, ``level_resolutions`` (vertices per axis per
    level), ``level_scales``, ``levels`` (full per-level description), ``n_params`` and the flat
    table ``params`` [n_params] (tcnn's layout).
    """

    def __init__(
        self,
        n_input_dims: int = 3,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 1.447269237440378,
        interpolation: str = "Linear",
    ) -> None:
        super().__init__()
        if not 1 <= n_input_dims <= len(_PRIMES):
            raise ValueError(f"HashGridEncoding supports 1..{len(_PRIMES)} input dims, got {n_input_dims}")
        if interpolation != "Linear":
            raise ConfigError(f"HashGridEncoding: interpolation {interpolation!r} is not supported; use 'Linear'")
        self.n_input_dims = n_input_dims
        self.n_levels = n_levels
        self.n_features_per_level = n_features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.base_resolution = base_resolution
        self.per_level_scale = per_level_scale
        self.interpolation = interpolation
        self.levels = build_levels(n_input_dims, n_levels, log2_hashmap_size, base_resolution, per_level_scale)
        self.level_resolutions: List[int] = [lv.resolution for lv in self.levels]
        self.level_scales: List[float] = [lv.scale for lv in self.levels]
        self.n_output_dims = n_levels * n_features_per_level
        self.n_params = sum(lv.size for lv in self.levels) * n_features_per_level
        self.params = nn.Parameter(torch.empty(self.n_params, dtype=torch.float32))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.params.uniform_(-1e-4, 1e-4)

    def level_table(self, level: int) -> torch.Tensor:
        """View of one level's features: [levels[level].size, n_features_per_level]."""
        lv = self.levels[level]
        f = self.n_features_per_level
        return self.params[lv.offset * f : (lv.offset + lv.size) * f].view(lv.size, f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.n_input_dims).to(self.params.dtype)  # [N, D]
        out = _HashGridFunction.apply(flat, self.params, self.levels, self.n_features_per_level)
        return out.view(*lead, self.n_output_dims)  # [..., L * F]

    def extra_repr(self) -> str:
        return (
            f"n_input_dims={self.n_input_dims}, n_levels={self.n_levels}, "
            f"n_features_per_level={self.n_features_per_level}, log2_hashmap_size={self.log2_hashmap_size}, "
            f"base_resolution={self.base_resolution}, per_level_scale={self.per_level_scale}, n_params={self.n_params}"
        )


class ProgressiveBandHashGrid(HashGridEncoding):
    """Hash grid whose finer levels are switched on during training (threestudio's
    ``ProgressiveBandHashGrid``).

    ``current_level`` is the number of active levels: features of levels ``>= current_level`` are
    multiplied by zero. It starts at ``start_level`` and ``update_step`` sets it to
    ``min(start_level + max(global_step - start_step, 0) // update_steps, n_levels)``.
    Unlike threestudio, the mask is valid before the first ``update_step`` call.
    """

    def __init__(
        self,
        n_input_dims: int = 3,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 1.447269237440378,
        interpolation: str = "Linear",
        start_level: int = 8,
        start_step: int = 0,
        update_steps: int = 1000,
    ) -> None:
        super().__init__(
            n_input_dims, n_levels, n_features_per_level, log2_hashmap_size, base_resolution, per_level_scale, interpolation
        )
        if update_steps <= 0:
            raise ConfigError(f"ProgressiveBandHashGrid: update_steps must be positive, got {update_steps}")
        self.start_level = start_level
        self.start_step = start_step
        self.update_steps = update_steps
        self.register_buffer("mask", torch.zeros(self.n_output_dims), persistent=False)  # [L * F]
        self.current_level = -1
        self._set_level(start_level)

    def _set_level(self, level: int) -> None:
        self.current_level = max(0, min(level, self.n_levels))
        self.mask.zero_()
        self.mask[: self.current_level * self.n_features_per_level] = 1.0

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        steps_done = max(global_step - self.start_step, 0)
        self._set_level(self.start_level + steps_done // self.update_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.mask.to(self.params.dtype)  # [..., L * F]


# all levels at once, the CPU default path (imported last: it reuses this module's GridLevel and constants)
from lift3d.networks import hashgrid_batched  # noqa: E402
