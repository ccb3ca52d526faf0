"""Triton kernels for packed volume rendering: compositing weights, per-ray accumulation and
occupancy-grid ray marching.

Same contracts as the references in ``lift3d.ops.volume_rendering`` and ``lift3d.ops.ray_marching``
(packed samples sorted by ray, then t). All kernels run one program per ray over the ray's packed
range ``[starts[r], starts[r + 1])`` in blocks of ``BLOCK`` samples, with the running sums carried
between blocks -- no atomics, deterministic, no float64 global prefix sum (the per-ray sums are
short, so float32 keeps ~1e-6 relative accuracy).

* ``render_weight_from_density`` -- (weights, transmittance, alphas), differentiable w.r.t. sigmas
  and t: the backward is one reverse scan per ray,
  ``dL/ds_k = (gα_k + gw_k T_k) e^{-s_k} - sum_{i>k} (gT_i T_i + gw_i w_i)``, ``s = sigma * dt``.
* ``accumulate_along_rays`` -- segmented sum ``sum_i w_i v_i`` per ray; the backward is a gather
  written with torch ops (so it can be differentiated again).
* ``march_rays`` -- the reference's candidate samples, occupancy test at the midpoint, in two
  passes (count survivors per ray; prefix sum; write them), so the only host sync is the one
  that sizes the output. Alpha pruning (which calls the network) stays in torch.

Arithmetic that decides which samples/cells exist is compiled with ``enable_fp_fusion=False``, so
it is rounded like PyTorch's separate operations and the samples are the reference's exactly.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_COMPOSITE = 64
BLOCK_MARCH = 128
NUM_WARPS = 2
_NO_CAP = 2**31 - 1


def ray_starts(ray_indices: Tensor, n_rays: int) -> Tensor:
    """[n_rays + 1] int64 packed boundaries: ray r owns ``[starts[r], starts[r+1])`` (sorted input)."""
    rays = torch.arange(n_rays + 1, device=ray_indices.device, dtype=ray_indices.dtype)
    return torch.searchsorted(ray_indices.reshape(-1), rays).to(torch.int64)


# ------------------------------------------------------------------------- compositing weights
@triton.jit
def _weights_fwd_kernel(ts_ptr, te_ptr, sigma_ptr, starts_ptr, w_ptr, trans_ptr, alpha_ptr, BLOCK: tl.constexpr):
    ray = tl.program_id(0).to(tl.int64)
    start = tl.load(starts_ptr + ray)
    end = tl.load(starts_ptr + ray + 1)
    carry = tl.full([], 0.0, tl.float32)  # sum of sigma * dt over the ray's earlier blocks
    for s in range(start, end, BLOCK):
        offs = s + tl.arange(0, BLOCK)
        m = offs < end
        ts = tl.load(ts_ptr + offs, mask=m, other=0.0)
        te = tl.load(te_ptr + offs, mask=m, other=0.0)
        sig = tl.load(sigma_ptr + offs, mask=m, other=0.0)
        sd = tl.where(m, sig * (te - ts), 0.0)
        excl = carry + (tl.cumsum(sd, 0) - sd)
        trans = tl.exp(-excl)
        alpha = 1.0 - tl.exp(-sd)
        tl.store(trans_ptr + offs, trans, mask=m)
        tl.store(alpha_ptr + offs, alpha, mask=m)
        tl.store(w_ptr + offs, trans * alpha, mask=m)
        carry += tl.sum(sd, 0)


@triton.jit
def _weights_bwd_kernel(
    ts_ptr, te_ptr, sigma_ptr, trans_ptr, starts_ptr, gw_ptr, gt_ptr, ga_ptr, gsig_ptr, gdelta_ptr,
    NEED_DELTA: tl.constexpr, BLOCK: tl.constexpr,
):
    ray = tl.program_id(0).to(tl.int64)
    start = tl.load(starts_ptr + ray)
    end = tl.load(starts_ptr + ray + 1)
    n_blocks = (end - start + BLOCK - 1) // BLOCK
    carry = tl.full([], 0.0, tl.float32)  # sum of u_i over the ray's later blocks
    for j in range(0, n_blocks):
        s = start + (n_blocks - 1 - j) * BLOCK
        offs = s + tl.arange(0, BLOCK)
        m = offs < end
        ts = tl.load(ts_ptr + offs, mask=m, other=0.0)
        te = tl.load(te_ptr + offs, mask=m, other=0.0)
        sig = tl.load(sigma_ptr + offs, mask=m, other=0.0)
        trans = tl.load(trans_ptr + offs, mask=m, other=0.0)
        gw = tl.load(gw_ptr + offs, mask=m, other=0.0)
        gt = tl.load(gt_ptr + offs, mask=m, other=0.0)
        ga = tl.load(ga_ptr + offs, mask=m, other=0.0)
        delta = te - ts
        e = tl.exp(-(sig * delta))
        w = trans * (1.0 - e)
        u = tl.where(m, gt * trans + gw * w, 0.0)
        later = carry + (tl.cumsum(u, 0, reverse=True) - u)
        ds = (ga + gw * trans) * e - later
        tl.store(gsig_ptr + offs, ds * delta, mask=m)
        if NEED_DELTA:
            tl.store(gdelta_ptr + offs, ds * sig, mask=m)
        carry += tl.sum(u, 0)


def _weights_forward(t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, starts: Tensor):
    n = sigmas.numel()
    w = torch.empty(n, device=sigmas.device, dtype=torch.float32)
    trans = torch.empty_like(w)
    alphas = torch.empty_like(w)
    n_rays = starts.numel() - 1
    if n > 0 and n_rays > 0:
        _weights_fwd_kernel[(n_rays,)](
            t_starts, t_ends, sigmas, starts, w, trans, alphas,
            BLOCK=BLOCK_COMPOSITE, num_warps=NUM_WARPS, enable_fp_fusion=False,
        )
    return w, trans, alphas


def _reference_weights(t_starts, t_ends, sigmas, starts):
    """The reference formula on one flat ray layout, with torch ops (for double backward)."""
    sd = sigmas * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-sd)
    sd64 = sd.double()
    excl = torch.cumsum(sd64, 0) - sd64
    ray_of = torch.searchsorted(starts[1:], torch.arange(sd.numel(), device=sd.device), right=True)
    excl = excl - excl[starts[ray_of]]
    trans = torch.exp(-excl).to(sd.dtype)
    return trans * alphas, trans, alphas


class _WeightsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t_starts, t_ends, sigmas, starts):
        w, trans, alphas = _weights_forward(t_starts, t_ends, sigmas, starts)
        ctx.save_for_backward(t_starts, t_ends, sigmas, starts, trans)
        return w, trans, alphas

    @staticmethod
    def backward(ctx, gw, gt, ga):
        t_starts, t_ends, sigmas, starts, trans = ctx.saved_tensors
        need_t = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        if torch.is_grad_enabled():
            # create_graph (double backward): differentiate the reference formula, recomputed from
            # the saved inputs (which carry their graph here), so the result is differentiable.
            inputs = (t_starts, t_ends, sigmas)
            needed = [i for i in range(3) if ctx.needs_input_grad[i]]
            outs = _reference_weights(t_starts, t_ends, sigmas, starts)
            grads = torch.autograd.grad(outs, [inputs[i] for i in needed], (gw, gt, ga), create_graph=True,
                                        allow_unused=True)
            result = [None, None, None, None]
            for i, g in zip(needed, grads):
                result[i] = g if g is not None else torch.zeros_like(inputs[i])
            return tuple(result)
        gsig = torch.empty_like(sigmas)
        gdelta = torch.empty_like(sigmas) if need_t else gsig
        n_rays = starts.numel() - 1
        if sigmas.numel() > 0 and n_rays > 0:
            _weights_bwd_kernel[(n_rays,)](
                t_starts, t_ends, sigmas, trans, starts,
                gw.contiguous(), gt.contiguous(), ga.contiguous(), gsig, gdelta,
                NEED_DELTA=need_t, BLOCK=BLOCK_COMPOSITE, num_warps=NUM_WARPS, enable_fp_fusion=False,
            )
        g_ts = -gdelta if ctx.needs_input_grad[0] else None
        g_te = gdelta if ctx.needs_input_grad[1] else None
        return g_ts, g_te, gsig if ctx.needs_input_grad[2] else None, None


def supported_composite(*tensors: Optional[Tensor]) -> bool:
    ts = [t for t in tensors if t is not None]
    return all(t.dtype == torch.float32 and t.device == ts[0].device for t in ts)


def render_weight_from_density(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, ray_indices: Tensor, n_rays: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """(weights [S], transmittance [S], alphas [S]); see ``lift3d.ops.volume_rendering``."""
    starts = ray_starts(ray_indices, n_rays)
    return _WeightsFunction.apply(
        t_starts.reshape(-1).contiguous(), t_ends.reshape(-1).contiguous(), sigmas.reshape(-1).contiguous(), starts
    )


# ------------------------------------------------------------------------ per-ray accumulation
@triton.jit
def _accumulate_kernel(w_ptr, v_ptr, starts_ptr, out_ptr, C, HAS_V: tl.constexpr, CP: tl.constexpr,
                       BLOCK: tl.constexpr):
    ray = tl.program_id(0).to(tl.int64)
    start = tl.load(starts_ptr + ray)
    end = tl.load(starts_ptr + ray + 1)
    ch = tl.arange(0, CP)
    cm = ch < C
    acc = tl.zeros([BLOCK, CP], dtype=tl.float32)
    for s in range(start, end, BLOCK):
        offs = s + tl.arange(0, BLOCK)
        m = offs < end
        w = tl.load(w_ptr + offs, mask=m, other=0.0)
        if HAS_V:
            v = tl.load(v_ptr + offs[:, None] * C + ch[None, :], mask=m[:, None] & cm[None, :], other=0.0)
            acc += w[:, None] * v
        else:
            acc += w[:, None]
    tl.store(out_ptr + ray * C + ch, tl.sum(acc, 0), mask=cm)


def _accumulate_forward(weights: Tensor, values: Optional[Tensor], starts: Tensor, channels: int) -> Tensor:
    n_rays = starts.numel() - 1
    out = torch.empty(n_rays, channels, device=weights.device, dtype=torch.float32)
    if n_rays == 0:
        return out
    cp = max(1, triton.next_power_of_2(channels))
    _accumulate_kernel[(n_rays,)](
        weights, values if values is not None else weights, starts, out, channels,
        HAS_V=values is not None, CP=cp, BLOCK=BLOCK_COMPOSITE, num_warps=NUM_WARPS, enable_fp_fusion=False,
    )
    return out


class _AccumulateFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weights, values, starts, ray_indices):
        channels = 1 if values is None else values.shape[1]
        ctx.has_values = values is not None
        ctx.save_for_backward(weights, values if values is not None else weights, ray_indices)
        return _accumulate_forward(weights, values, starts, channels)

    @staticmethod
    def backward(ctx, g):
        weights, values, ray_indices = ctx.saved_tensors
        g_rows = g[ray_indices]  # [S, C]
        if not ctx.has_values:
            return g_rows[:, 0] if ctx.needs_input_grad[0] else None, None, None, None
        g_w = (g_rows * values).sum(-1) if ctx.needs_input_grad[0] else None
        g_v = weights[:, None] * g_rows if ctx.needs_input_grad[1] else None
        return g_w, g_v, None, None


def accumulate_along_rays(weights: Tensor, values: Optional[Tensor], ray_indices: Tensor, n_rays: int) -> Tensor:
    """sum_i w_i v_i per ray -> [n_rays, C] (C = 1 when values is None); see the reference."""
    w = weights.reshape(-1).contiguous()
    v = None
    if values is not None:
        v = (values.reshape(-1, 1) if values.dim() == 1 else values).contiguous()
    ray_indices = ray_indices.reshape(-1)
    return _AccumulateFunction.apply(w, v, ray_starts(ray_indices, n_rays), ray_indices)


# --------------------------------------------------------------------------------- ray marching
@triton.jit
def _occupied(px, py, pz, grid_ptr, box_ptr, R, L, MULTI_LEVEL: tl.constexpr):
    """Occupancy-grid lookup, the arithmetic of OccupancyGrid._flat_index / query."""
    cx = tl.load(box_ptr + 0)
    cy = tl.load(box_ptr + 1)
    cz = tl.load(box_ptr + 2)
    ix = tl.load(box_ptr + 3)
    iy = tl.load(box_ptr + 4)
    iz = tl.load(box_ptr + 5)
    rx = (px - cx) * ix
    ry = (py - cy) * iy
    rz = (pz - cz) * iz
    level = tl.zeros(px.shape, dtype=tl.int32)
    if MULTI_LEVEL:
        # finest level l with max|rel| <= 2**l (counted exactly), L = outside every level
        mabs = tl.maximum(tl.maximum(tl.abs(rx), tl.abs(ry)), tl.abs(rz))
        shrink = tl.full(px.shape, 1.0, tl.float32)
        bound = tl.full([], 1.0, tl.float32)
        for _l in range(0, L):
            beyond = mabs > bound
            level += beyond.to(tl.int32)
            shrink = tl.where(beyond, shrink * 0.5, shrink)
            bound = bound * 2.0
        rx = rx * shrink
        ry = ry * shrink
        rz = rz * shrink
    half_r = R * 0.5
    ux = (rx + 1.0) * half_r
    uy = (ry + 1.0) * half_r
    uz = (rz + 1.0) * half_r
    rf = R * 1.0
    inside = (ux >= 0) & (ux <= rf) & (uy >= 0) & (uy <= rf) & (uz >= 0) & (uz <= rf)
    top = rf - 1.0
    ux = tl.minimum(tl.maximum(tl.where(ux != ux, 0.0, ux), 0.0), top)
    uy = tl.minimum(tl.maximum(tl.where(uy != uy, 0.0, uy), 0.0), top)
    uz = tl.minimum(tl.maximum(tl.where(uz != uz, 0.0, uz), 0.0), top)
    i = ux.to(tl.int64)
    j = uy.to(tl.int64)
    k = uz.to(tl.int64)
    flat = (i * R + j) * R + k
    if MULTI_LEVEL:
        inside = inside & (level < L)
        flat += tl.minimum(level, L - 1).to(tl.int64) * R * R * R
    occ = tl.load(grid_ptr + flat, mask=inside, other=0)
    return inside & (occ != 0)


@triton.jit
def _march_kernel(
    o_ptr, d_ptr, ta_ptr, tb_ptr, nsteps_ptr, base_ptr, count_ptr, out_idx_ptr, out_ts_ptr, out_te_ptr,
    grid_ptr, box_ptr, R, L, dt, cap,
    HAS_GRID: tl.constexpr, MULTI_LEVEL: tl.constexpr, WRITE: tl.constexpr, BLOCK: tl.constexpr,
):
    ray = tl.program_id(0).to(tl.int64)
    n = tl.load(nsteps_ptr + ray)
    ta = tl.load(ta_ptr + ray)
    tb = tl.load(tb_ptr + ray)
    ox = tl.load(o_ptr + ray * 3 + 0)
    oy = tl.load(o_ptr + ray * 3 + 1)
    oz = tl.load(o_ptr + ray * 3 + 2)
    dx = tl.load(d_ptr + ray * 3 + 0)
    dy = tl.load(d_ptr + ray * 3 + 1)
    dz = tl.load(d_ptr + ray * 3 + 2)
    base = 0
    if WRITE:
        base = tl.load(base_ptr + ray)
    kept = tl.full([], 0, tl.int64)
    for s in range(0, n, BLOCK):
        k = s + tl.arange(0, BLOCK)
        m = k < n
        ts = ta + k.to(tl.float32) * dt
        te = tl.minimum(ts + dt, tb)
        keep = m
        if HAS_GRID:
            mid = (ts + te) * 0.5
            keep = keep & _occupied(ox + dx * mid, oy + dy * mid, oz + dz * mid, grid_ptr, box_ptr, R, L, MULTI_LEVEL)
        ki = keep.to(tl.int64)
        if WRITE:
            rank = kept + tl.cumsum(ki, 0) - ki
            wm = keep & (rank < cap)
            pos = base + rank
            tl.store(out_idx_ptr + pos, tl.zeros([BLOCK], dtype=tl.int64) + ray, mask=wm)
            tl.store(out_ts_ptr + pos, ts, mask=wm)
            tl.store(out_te_ptr + pos, te, mask=wm)
        kept += tl.sum(ki, 0)
    if not WRITE:
        tl.store(count_ptr + ray, tl.minimum(kept, cap))


def supported_march(rays_o: Tensor, occupancy_grid) -> bool:
    if rays_o.dtype != torch.float32:
        return False
    if occupancy_grid is not None and (
        occupancy_grid.binary.device != rays_o.device or occupancy_grid.aabb.dtype != torch.float32
    ):
        return False
    return True


AlphaFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@torch.no_grad()
def march_samples(
    rays_o: Tensor,
    rays_d: Tensor,
    t_a: Tensor,
    t_b: Tensor,
    n_steps: Tensor,
    dt: float,
    occupancy_grid=None,
    alpha_fn: Optional[AlphaFn] = None,
    alpha_thre: float = 0.0,
    max_samples_per_ray: Optional[int] = None,
    chunk_size: int = 1 << 20,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Packed samples of ``lift3d.ops.ray_marching.march_rays`` from its per-ray interval
    ``[t_a, t_b]`` and step count (computed by the caller exactly as the reference does)."""
    device = rays_o.device
    n_rays = rays_o.shape[0]
    o = rays_o.reshape(-1, 3).contiguous()
    d = rays_d.reshape(-1, 3).contiguous()
    t_a = t_a.contiguous()
    t_b = t_b.contiguous()
    n_steps = n_steps.to(torch.int64).contiguous()
    use_alpha = alpha_fn is not None and alpha_thre > 0
    cap = _NO_CAP if (use_alpha or max_samples_per_ray is None) else int(min(max_samples_per_ray, _NO_CAP))
    if occupancy_grid is not None:
        aabb = occupancy_grid.aabb
        box = torch.cat([(aabb[:3] + aabb[3:]) * 0.5, 2.0 / (aabb[3:] - aabb[:3])]).to(torch.float32).contiguous()
        grid = occupancy_grid.binary.reshape(-1).contiguous().view(torch.uint8)
        R, L = occupancy_grid.resolution, occupancy_grid.levels
    else:
        box = torch.zeros(6, device=device, dtype=torch.float32)
        grid = torch.zeros(1, device=device, dtype=torch.uint8)
        R, L = 1, 1
    opts = dict(HAS_GRID=occupancy_grid is not None, MULTI_LEVEL=L > 1, BLOCK=BLOCK_MARCH, num_warps=4,
                enable_fp_fusion=False)
    counts = torch.empty(n_rays, device=device, dtype=torch.int64)
    dummy_f = t_a
    _march_kernel[(n_rays,)](o, d, t_a, t_b, n_steps, counts, counts, counts, dummy_f, dummy_f,
                             grid, box, R, L, float(dt), cap, WRITE=False, **opts)
    offsets = torch.cumsum(counts, 0)
    total = int(offsets[-1])  # the one host sync: size of the output
    ray_idx = torch.empty(total, device=device, dtype=torch.int64)
    ts = torch.empty(total, device=device, dtype=torch.float32)
    te = torch.empty(total, device=device, dtype=torch.float32)
    if total > 0:
        _march_kernel[(n_rays,)](o, d, t_a, t_b, n_steps, offsets - counts, counts, ray_idx, ts, te,
                                 grid, box, R, L, float(dt), cap, WRITE=True, **opts)
    if use_alpha and total > 0:
        keep = torch.empty(total, device=device, dtype=torch.bool)
        for s in range(0, total, chunk_size):
            sl = slice(s, s + chunk_size)
            keep[sl] = alpha_fn(ts[sl], te[sl], ray_idx[sl]).reshape(-1) >= alpha_thre
        ray_idx, ts, te = ray_idx[keep], ts[keep], te[keep]
        if max_samples_per_ray is not None and ray_idx.numel() > 0:
            starts = torch.searchsorted(ray_idx, torch.arange(n_rays, device=device))
            rank = torch.arange(ray_idx.numel(), device=device) - starts[ray_idx]
            keep = rank < int(max_samples_per_ray)
            ray_idx, ts, te = ray_idx[keep], ts[keep], te[keep]
    return ray_idx, ts, te
