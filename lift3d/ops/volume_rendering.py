"""Volume rendering on packed samples (pure PyTorch, CPU and CUDA, differentiable).

Packed layout (see ``ray_marching.march_rays``): ``S`` samples over ``n_rays`` rays, stored
contiguously per ray and sorted by ray index (then t). For sample i of a ray, with
``delta_i = t_end_i - t_start_i``:

    alpha_i = 1 - exp(-sigma_i * delta_i)
    T_i     = exp(-sum_{j < i, same ray} sigma_j * delta_j)      (transmittance, T_0 = 1)
    w_i     = T_i * alpha_i

The exclusive per-ray sum is one cumulative sum over the whole packed array minus its value at
the ray's first sample. That global running sum grows with the number of rays, so it is done in
float64 (cast back afterwards): in float32 the subtraction would lose ~7 digits of the total
(e.g. an absolute error ~1e-2 in the exponent once the total reaches 1e5).

Fast path: for CUDA float32 tensors ``render_weight_from_density`` /
``render_transmittance_from_density`` (forward and backward) and ``accumulate_along_rays`` run as
Triton kernels, one program per ray (``lift3d.ops.triton.volume``; policy in
``lift3d.ops.fast_path``). They scan each ray in float32, with no global prefix sum.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def _fast_kernels(*tensors: Optional[Tensor]):
    """The Triton kernel module when the fast path applies (CUDA float32; lift3d.ops.fast_path)."""
    from lift3d.ops.fast_path import use_triton

    if not use_triton(tensors[0]):
        return None
    from lift3d.ops.triton import volume as kernels

    return kernels if kernels.supported_composite(*tensors) else None


def _ray_start_index(ray_indices: Tensor, n_rays: int) -> Tensor:
    """[S] long: packed index of the first sample of each sample's ray (ray_indices sorted).

    A binary search (no atomics, no host sync), so it is deterministic on GPU too."""
    rays = torch.arange(n_rays, device=ray_indices.device, dtype=ray_indices.dtype)
    starts = torch.searchsorted(ray_indices, rays)  # [n_rays] first packed index of each ray
    return starts[ray_indices]


def render_transmittance_from_density(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, ray_indices: Tensor, n_rays: int
) -> Tuple[Tensor, Tensor]:
    """Returns (transmittance [S], alphas [S]); differentiable w.r.t. sigmas (and t)."""
    if ray_indices.numel() == 0:
        z = sigmas.reshape(-1)
        return z.new_ones(0), z.new_zeros(0)
    fast = _fast_kernels(sigmas, t_starts, t_ends)
    if fast is not None:
        _, trans, alphas = fast.render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays)
        return trans, alphas
    sigma_delta = sigmas.reshape(-1) * (t_ends - t_starts).reshape(-1)  # [S]
    alphas = 1.0 - torch.exp(-sigma_delta)
    sd64 = sigma_delta.double()
    excl = torch.cumsum(sd64, 0) - sd64  # [S] exclusive global prefix sum
    start = _ray_start_index(ray_indices.reshape(-1), n_rays)
    excl = excl - excl[start]  # per-ray exclusive sum
    trans = torch.exp(-excl).to(sigma_delta.dtype)
    return trans, alphas


def render_weight_from_density(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, ray_indices: Tensor, n_rays: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """Packed volume-rendering weights.

    Args:
        t_starts, t_ends, sigmas: [S]; ray_indices: [S] long, sorted ascending (as march_rays
        returns them; an unsorted input gives wrong transmittance);
        n_rays: number of rays (rays without samples are allowed).
    Returns:
        weights [S], transmittance [S], alphas [S]; differentiable w.r.t. sigmas.
    """
    fast = _fast_kernels(sigmas, t_starts, t_ends) if ray_indices.numel() > 0 else None
    if fast is not None:
        return fast.render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays)
    trans, alphas = render_transmittance_from_density(t_starts, t_ends, sigmas, ray_indices,
                                                      n_rays)
    return trans * alphas, trans, alphas


def accumulate_along_rays(
    weights: Tensor, values: Optional[Tensor], ray_indices: Tensor, n_rays: int
) -> Tensor:
    """sum_i w_i * v_i per ray.

    Args:
        weights: [S]; values: [S, C] (or [S]) or None; ray_indices: [S] long; n_rays: int.
    Returns:
        [n_rays, C] (C = 1 when values is None: the opacity sum_i w_i, or for 1-D values).
        Rays without samples get 0. Differentiable w.r.t. weights and values (index_add).
    """
    fast = _fast_kernels(weights, values)
    if fast is not None:
        return fast.accumulate_along_rays(weights, values, ray_indices, n_rays)
    w = weights.reshape(-1, 1)
    if values is None:
        src = w
    else:
        src = w * (values.reshape(-1, 1) if values.dim() == 1 else values)
    out = torch.zeros(n_rays, src.shape[-1], device=src.device, dtype=src.dtype)
    return out.index_add(0, ray_indices.reshape(-1), src)


def z_variance_along_rays(
    weights: Tensor,
    t_starts: Tensor,
    t_ends: Tensor,
    ray_indices: Tensor,
    n_rays: int,
    normalize: bool = True,
    eps: float = 1e-10,
) -> Tensor:
    """Per-ray variance of the sample depth under the rendering weights (HiFA's z-variance).

    With t_i the sample midpoints and O = sum_i w_i (opacity):
      normalize=True  (default): depth = sum_i w_i t_i / O,  var = sum_i w_i (t_i - depth)^2 / O,
                                 i.e. the variance of the weight distribution along the ray
                                 (0 for a single hit; rays with O = 0 give 0).
      normalize=False: depth = sum_i w_i t_i, var = sum_i w_i (t_i - depth)^2 -- threestudio's
                       nerf-volume-renderer formula (it then averages over rays with O > 0.5).
    Returns [n_rays, 1]; differentiable w.r.t. weights.
    """
    t_mid = ((t_starts + t_ends) * 0.5).reshape(-1)
    depth = accumulate_along_rays(weights, t_mid, ray_indices, n_rays)  # [n_rays, 1]
    if normalize:
        opacity = accumulate_along_rays(weights, None, ray_indices, n_rays)
        depth = depth / opacity.clamp_min(eps)
    sq = (t_mid - depth[ray_indices.reshape(-1), 0]) ** 2
    var = accumulate_along_rays(weights, sq, ray_indices, n_rays)
    if normalize:
        var = var / opacity.clamp_min(eps)
    return var


def render_weight_from_alpha(
    alphas: Tensor, ray_indices: Tensor, n_rays: int, max_alpha: float = 1.0 - 1e-6
) -> Tuple[Tensor, Tensor]:
    """Packed weights from per-sample opacities (NeuS and other alpha-based renderers).

    w_i = alpha_i * T_i with T_i = prod_{j < i, same ray} (1 - alpha_j). The product is computed
    as exp(-sum_j -log(1 - alpha_j)) through `render_transmittance_from_density` (sigma_j * delta_j
    = -log(1 - alpha_j)), so it shares its per-ray prefix sum and its fast path; alphas are
    clamped to `max_alpha` inside the log only (T after an opaque sample is then 1e-6, not 0).

    Args: alphas [S] in [0, 1]; ray_indices [S] long, sorted; n_rays.
    Returns: weights [S], transmittance [S]; differentiable w.r.t. alphas.
    """
    alphas = alphas.reshape(-1)
    sigma_delta = -torch.log1p(-alphas.clamp(0.0, max_alpha))  # [S]
    zeros = torch.zeros_like(sigma_delta)
    trans, _ = render_transmittance_from_density(zeros, torch.ones_like(sigma_delta), sigma_delta, ray_indices, n_rays)
    return trans * alphas, trans
