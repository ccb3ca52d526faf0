"""Dense per-ray sampling by inverse transform of a piecewise-constant pdf (pure functions).

The samplers behind `estimator: importance` and `estimator: proposal` (docs/nerf_sampling.md). Every
ray holds the same number of intervals, stored as their edges `edges [R, K+1]` (sorted along the
ray, in units of |rays_d| as the packed samples of `lift3d.ops.ray_marching`); the interval i of a
ray is [edges[i], edges[i+1]].

Hierarchical sampling (NeRF, Mildenhall et al. 2020 §5.2): a coarse set of intervals gets weights
w_i = T_i (1 - exp(-σ_i δ_i)) from a density σ; the normalised weights are a piecewise-constant pdf
along the ray, whose CDF is piecewise linear; new edges are the CDF's inverse at evenly spaced
(or jittered) levels u ∈ [0, 1], so they fall where the weights are large. The fine rendering
composites over the union of both sets of edges (importance) or over the drawn edges alone
(proposal, mip-NeRF 360 §3).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

# (t_starts [R,K], t_ends [R,K]) -> density σ [R,K] at the interval midpoints
DensityFn = Callable[[Tensor, Tensor], Tensor]

# added to every weight before normalising (NeRF's 1e-5): a ray with no weight at all samples uniformly
PDF_FLOOR = 1e-5


def stratified_levels(
    n_rays: int, n_edges: int, stratified: bool, device: torch.device, dtype: torch.dtype = torch.float32
) -> Tensor:
    """CDF levels u [R, n_edges] in [0, 1], increasing along the last axis: evenly spaced from 0 to 1
    (both included); with `stratified`, each inner level is jittered uniformly within ±half a spacing,
    so the edges stay sorted and the first and last stay at 0 and 1."""
    u = torch.linspace(0.0, 1.0, n_edges, device=device, dtype=dtype).expand(n_rays, n_edges)  # [R,E]
    if stratified and n_edges > 2:
        spacing = 1.0 / (n_edges - 1)
        jitter = (torch.rand(n_rays, n_edges - 2, device=device, dtype=dtype) - 0.5) * spacing  # [R,E-2]
        u = torch.cat([u[:, :1], u[:, 1:-1] + jitter, u[:, -1:]], dim=-1)
    return u


def cell_levels(
    n_rays: int, n_samples: int, stratified: bool, device: torch.device, dtype: torch.dtype = torch.float32
) -> Tensor:
    """CDF levels u [R, n_samples]: one per cell of [0, 1] cut into n_samples equal cells, at the cell
    centre, or (`stratified`) uniformly inside the cell — NeRF's fine samples (no level at 0 or 1, so
    no drawn sample repeats an edge of the intervals it is drawn from)."""
    offset = torch.rand(n_rays, n_samples, device=device, dtype=dtype) if stratified else \
        torch.full((n_rays, n_samples), 0.5, device=device, dtype=dtype)
    return (torch.arange(n_samples, device=device, dtype=dtype) + offset) / n_samples  # [R,N]


def uniform_edges(t_near: Tensor, t_far: Tensor, n_intervals: int, stratified: bool) -> Tensor:
    """n_intervals intervals evenly covering [t_near, t_far] of each ray → edges [R, n_intervals+1].
    t_near, t_far: [R] (t_far >= t_near; equal: a ray that misses the volume, zero-length intervals)."""
    u = stratified_levels(t_near.shape[0], n_intervals + 1, stratified, t_near.device, t_near.dtype)  # [R,K+1]
    return t_near[:, None] + u * (t_far - t_near)[:, None]


def weights_from_density(edges: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """Volume-rendering weights of dense intervals: edges [R,K+1], sigma [R,K] →
    (weights [R,K] = T_i (1 - exp(-σ_i δ_i)), transmittance T_i [R,K] before interval i).
    Differentiable w.r.t. sigma."""
    delta = (edges[:, 1:] - edges[:, :-1]).clamp_min(0.0)  # [R,K]
    tau = sigma * delta  # [R,K] optical depth of each interval
    excl = torch.cumsum(tau, dim=-1) - tau  # [R,K] optical depth before interval i
    trans = torch.exp(-excl)
    return trans * (1.0 - torch.exp(-tau)), trans


def sample_pdf(edges: Tensor, weights: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF sampling of the piecewise-constant pdf of `weights` over the intervals `edges`.

    edges [R,K+1] sorted, weights [R,K] >= 0, levels u [R,N] in [0,1] (increasing: `cell_levels`,
    `stratified_levels`) → t [R,N] = CDF⁻¹(u), sorted, in [edges[0], edges[K]].
    pdf_i = (w_i + PDF_FLOOR) / Σ_j (w_j + PDF_FLOOR) is spread uniformly over interval i, so the
    CDF is linear inside each interval. Not differentiable (the result is detached): the positions
    of samples are not trained through.
    """
    with torch.no_grad():
        w = weights.detach() + PDF_FLOOR  # [R,K]
        pdf = w / w.sum(dim=-1, keepdim=True)  # [R,K] sums to 1 along the ray
        cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1)  # [R,K+1]
        cdf[:, -1] = 1.0  # exactly 1 at the far edge (cumsum rounding)
        u = u.to(edges.dtype)
        # interval of each level: the last CDF knot <= u (clamped so that u = 1 falls in the last interval)
        above = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True).clamp(1, cdf.shape[-1] - 1)  # [R,N]
        below = above - 1
        cdf_lo, cdf_hi = cdf.gather(-1, below), cdf.gather(-1, above)  # [R,N]
        t_lo, t_hi = edges.gather(-1, below), edges.gather(-1, above)  # [R,N]
        span = cdf_hi - cdf_lo
        frac = torch.where(span > 0, (u - cdf_lo) / span.clamp_min(1e-12), torch.zeros_like(u)).clamp(0.0, 1.0)
        return t_lo + frac * (t_hi - t_lo)


def merge_edges(a: Tensor, b: Tensor) -> Tensor:
    """The union of two sets of edges of the same rays, sorted: a [R,A], b [R,B] → [R,A+B]."""
    return torch.sort(torch.cat([a, b], dim=-1), dim=-1).values


def packed_intervals(edges: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Dense intervals as the packed samples the renderers shade: edges [R,K+1] →
    (ray_indices [R·K] long, sorted; t_starts [R·K]; t_ends [R·K])."""
    n_rays, k = edges.shape[0], edges.shape[1] - 1
    ray_indices = torch.arange(n_rays, device=edges.device).repeat_interleave(k)  # [R·K]
    return ray_indices, edges[:, :-1].reshape(-1), edges[:, 1:].reshape(-1)


def importance_edges(
    t_near: Tensor,  # [R]
    t_far: Tensor,  # [R]
    density_fn: DensityFn,
    n_coarse: int,
    n_fine: int,
    stratified: bool,
) -> Tensor:
    """threestudio's `estimator: importance`: `n_coarse` uniform intervals over [t_near, t_far], the
    field's own density at their midpoints (no gradient), `n_fine` more edges drawn from the coarse
    weights by `sample_pdf` (one per CDF cell, `cell_levels`), and the union of both sets →
    edges [R, n_coarse + n_fine + 1]: n_coarse + n_fine intervals."""
    coarse = uniform_edges(t_near, t_far, n_coarse, stratified)  # [R,Kc+1]
    with torch.no_grad():
        sigma = density_fn(coarse[:, :-1], coarse[:, 1:])  # [R,Kc]
        weights, _ = weights_from_density(coarse, sigma)
    u = cell_levels(coarse.shape[0], n_fine, stratified, coarse.device, coarse.dtype)  # [R,Kf]
    fine = sample_pdf(coarse, weights, u)  # [R,Kf]
    return merge_edges(coarse, fine)


def midpoint_field(rays_o: Tensor, rays_d: Tensor, field_fn: Callable[[Tensor], Tensor], chunk: int) -> DensityFn:
    """A field at the midpoints of intervals: (t_starts, t_ends [R,K]) → field_fn(points) [R,K] for rays
    rays_o, rays_d [R,3], evaluated in runs of at most `chunk` points (field_fn: points [M,3] → [M] or [M,1])."""
    def at(t_starts: Tensor, t_ends: Tensor) -> Tensor:
        mid = (t_starts + t_ends) * 0.5  # [R,K]
        points = (rays_o[:, None] + rays_d[:, None] * mid[..., None]).reshape(-1, 3)  # [R·K,3]
        return torch.cat([field_fn(p).reshape(-1) for p in points.split(chunk)]).reshape(mid.shape)

    return at


def ray_segment(
    rays_o: Tensor, rays_d: Tensor, radius: float, near: float, far: float, aabb: Optional[Tensor] = None
) -> tuple[Tensor, Tensor]:
    """[t_near, t_far] of each ray (rays_o, rays_d [R,3]): [near, far] clipped to the cube
    [-radius, radius]^3 (where the fields are defined) → (t_near [R], t_far [R]); a ray that misses
    the cube gets t_near = t_far (its intervals have zero length and zero weight)."""
    from lift3d.ops.ray_marching import ray_aabb_intersect

    box = aabb if aabb is not None else torch.tensor([-radius] * 3 + [radius] * 3, device=rays_o.device, dtype=rays_o.dtype)
    t_in, t_out = ray_aabb_intersect(rays_o, rays_d, box)  # [R]
    t_a = torch.clamp(t_in, min=near)
    t_b = torch.clamp(t_out, max=far)
    hit = torch.isfinite(t_a) & torch.isfinite(t_b) & (t_b > t_a)
    t_a = torch.where(hit, t_a, torch.full_like(t_a, near))
    t_b = torch.where(hit, t_b, t_a)
    return t_a, t_b


__all__ = ["DensityFn", "PDF_FLOOR", "cell_levels", "importance_edges", "merge_edges", "midpoint_field", "packed_intervals", "ray_segment",
           "sample_pdf", "stratified_levels", "uniform_edges", "weights_from_density"]
