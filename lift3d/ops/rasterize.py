"""Differentiable triangle rasterization in pure PyTorch (CPU and CUDA), nvdiffrast-like semantics.

Used together like nvdiffrast's ``rasterize`` / ``interpolate`` / ``antialias``:

* :func:`rasterize` -> ``rast [B, H, W, 4]`` = ``(u, v, z/w, triangle_id + 1)``, zeros where no
  triangle covers the pixel. Not differentiable (computed under ``no_grad``).
* :func:`interpolate` -> perspective-correct vertex attributes, differentiable w.r.t. the
  attributes and (when ``pos_clip`` is given) w.r.t. the clip-space vertex positions.
* ``lift3d.ops.antialias.antialias`` (its own module) -> analytic silhouette antialiasing, the
  source of gradients w.r.t. vertex positions at silhouettes (coverage itself is piecewise
  constant); :func:`edge_topology` is the triangle adjacency it walks.
* :func:`render_mesh_attributes` -> convenience wrapper: world-space mesh + ``mvp`` -> images with
  row 0 = top of the image.

Conventions (the same as nvdiffrast / OpenGL)
---------------------------------------------
* Input positions are homogeneous clip-space coordinates ``(x, y, z, w)``; NDC = ``(x, y, z) / w``.
* Pixel ``(row y, column x)`` of an ``H x W`` image has its centre at
  ``NDC ((x + 0.5) / W * 2 - 1, (y + 0.5) / H * 2 - 1)``. **Row 0 is NDC y = -1, i.e. the bottom
  of the picture** (image rows go bottom -> top). Callers that want row 0 = top (the rest of
  lift3d) flip along H; :func:`render_mesh_attributes` does it for you.
* ``u, v`` are the perspective-correct (clip-space) barycentrics of the first two vertices of the
  covering triangle: ``attr = u * a0 + v * a1 + (1 - u - v) * a2``.
* ``z/w`` is NDC depth; the z-buffer keeps the smallest ``z/w`` (ties: the lowest triangle id).
* Both windings are drawn (no backface culling). A pixel centre exactly on a shared edge belongs to
  both triangles (inclusive edge test; the depth test picks one), so closed meshes have no cracks.

Clipping
--------
Coverage is computed with 2D homogeneous rasterization (Olano & Greer 1997): for a pixel centre
``p = (X, Y, 1)`` and the triangle's rows ``V_i = (x_i, y_i, w_i)``, ``mu = M^-1 p`` with
``M = [V_0 V_1 V_2]``; the pixel is covered by the part of the triangle in front of the camera iff
all ``mu_i >= 0``; the clip-space barycentrics are ``mu / sum(mu)`` and ``z/w = sum_i mu_i z_i``.
This needs no division by ``w``, so triangles that cross the ``w = 0`` plane (partly behind the
camera) are rasterized correctly (their on-screen bounding box is then taken as the whole image).
Fragments outside the depth range ``-1 <= z/w <= 1`` are discarded (OpenGL near/far clipping);
triangles entirely behind the camera, entirely outside one frustum plane, or degenerate
(``det M = 0``, e.g. seen edge-on) are skipped.
Antialiasing needs projected edges, so it ignores triangles that have a vertex with ``w <= 0``.

Speed: triangles are binned by their screen bounding box; candidate (triangle, pixel) pairs are
enumerated in chunks of at most ``chunk_pixels`` and the depth test is one ``scatter_reduce(amin)``
over packed int64 keys ``(sortable float32 depth bits << 32) | triangle_id``.

Fast path: for CUDA float32 positions the depth test runs as a tiled Triton kernel
(``lift3d.ops.triton.rasterize``; policy in ``lift3d.ops.fast_path``) between the same triangle
setup and resolve, so ``rast`` is the same; ``chunk_pixels`` then does not apply.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "rasterize",
    "interpolate",
    "edge_topology",
    "render_mesh_attributes",
    "pixel_centers_ndc",
]

_EMPTY_KEY = torch.iinfo(torch.int64).max
_LOW32 = 0xFFFFFFFF


# --------------------------------------------------------------------------------------- helpers
def _batched_pos(pos_clip: Tensor) -> Tensor:
    """[V,4] or [B,V,4] -> [B,V,4]."""
    if pos_clip.dim() == 2:
        pos_clip = pos_clip[None]
    if pos_clip.dim() != 3 or pos_clip.shape[-1] != 4:
        raise ValueError(f"pos_clip must be [V,4] or [B,V,4], got {tuple(pos_clip.shape)}")
    return pos_clip


def _check_tri(tri: Tensor) -> Tensor:
    if tri.dim() != 2 or tri.shape[-1] != 3:
        raise ValueError(f"tri must be [F,3], got {tuple(tri.shape)}")
    if tri.is_floating_point():
        raise ValueError("tri must be an integer tensor")
    return tri.long()


def pixel_centers_ndc(H: int, W: int, device=None, dtype=torch.float32) -> Tuple[Tensor, Tensor]:
    """NDC coordinates of pixel centres: (xs [W], ys [H]); row 0 is y = -1 (bottom)."""
    xs = (torch.arange(W, device=device, dtype=torch.float64) + 0.5) / W * 2.0 - 1.0
    ys = (torch.arange(H, device=device, dtype=torch.float64) + 0.5) / H * 2.0 - 1.0
    return xs.to(dtype), ys.to(dtype)


def _xyw(v: Tensor) -> Tensor:
    """[..., 4] clip positions -> [..., 3] homogeneous 2D rows (x, y, w)."""
    return torch.stack([v[..., 0], v[..., 1], v[..., 3]], dim=-1)


def _edge_rows(Vh: Tensor) -> Tensor:
    """Vh [..., 3 vertices, 3] -> [..., 3 edges, 3]: row i = V_j x V_k, (i, j, k) cyclic.

    ``row_i . (X, Y, 1)`` is ``det(M) * mu_i`` (the unnormalised homogeneous edge function of the
    edge opposite vertex i); ``V_0 . row_0 = det(M)``.
    """
    V0, V1, V2 = Vh.unbind(-2)
    return torch.stack(
        [torch.linalg.cross(V1, V2), torch.linalg.cross(V2, V0), torch.linalg.cross(V0, V1)], dim=-2
    )


def _sortable_depth_key(depth: Tensor) -> Tensor:
    """float32 depth -> int64 whose signed order equals the float order, shifted into the high 32 bits."""
    bits = depth.to(torch.float32).contiguous().view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits.to(torch.int64) * (1 << 32)


# ------------------------------------------------------------------------------------- rasterize
@torch.no_grad()
def rasterize(
    pos_clip: Tensor,
    tri: Tensor,
    resolution: Union[Tuple[int, int], Sequence[int]],
    chunk_pixels: int = 1 << 20,
) -> Tensor:
    """Rasterize triangles: ``pos_clip [B,V,4] or [V,4]``, ``tri [F,3]`` -> ``rast [B,H,W,4]``.

    ``rast[..., 0:2]`` = perspective-correct barycentrics (u, v) of vertices 0 and 1,
    ``rast[..., 2]`` = z/w (NDC depth), ``rast[..., 3]`` = triangle index + 1 (0 = empty pixel).
    Row 0 is the bottom of the image (NDC y = -1); see the module docstring for all conventions.
    ``chunk_pixels`` bounds the number of candidate (triangle, pixel) pairs held in memory at once.
    Not differentiable: gradients reach positions through :func:`interpolate` (given
    ``pos_clip``) and :func:`antialias`.
    """
    pos = _batched_pos(pos_clip).detach()
    tri = _check_tri(tri).to(pos.device)
    H, W = int(resolution[0]), int(resolution[1])
    B, V, _ = pos.shape
    device = pos.device
    dtype = pos.dtype if pos.dtype in (torch.float32, torch.float64) else torch.float32
    pos = pos.to(dtype)
    F = tri.shape[0]
    rast = torch.zeros(B, H, W, 4, device=device, dtype=dtype)
    if F == 0 or H == 0 or W == 0:
        return rast
    if int(tri.min()) < 0 or int(tri.max()) >= V:
        raise ValueError(f"tri indices must be in [0, {V}), got range [{int(tri.min())}, {int(tri.max())}]")

    setup = _setup_triangles(pos, tri, H, W)
    if setup is None:
        return rast
    from lift3d.ops.fast_path import use_triton

    if use_triton(pos) and dtype == torch.float32:
        from lift3d.ops.triton import rasterize as kernels

        hit, face = kernels.rasterize_winners(setup, B, H, W)
    else:
        hit, face = _reference_winners(setup, B, H, W, chunk_pixels)
    return _resolve_winners(rast, setup, hit, face)


class _TriangleSetup(NamedTuple):
    """Per-(batch element, triangle) setup of :func:`rasterize` (shared by the Triton fast path).

    ``E [B,F,3,3]``: ``mu_i = E_i . (X, Y, 1)``; ``Zp [B,F,3]``: ``z/w = Zp . (X, Y, 1)``. The other
    fields describe the ``T`` triangles that have candidate pixels, in ascending ``(b, f)`` order:
    ``sel [T]`` (flat ``b * F + f``), ``bidx``, ``fidx``, ``table [T,12]`` (E then Zp),
    the pixel-index bounding box ``x0, y0, nx, ny`` and ``count = nx * ny``; ``xs [W], ys [H]``
    are the pixel centres in NDC.
    """

    E: Tensor
    Zp: Tensor
    sel: Tensor
    bidx: Tensor
    fidx: Tensor
    table: Tensor
    x0: Tensor
    y0: Tensor
    nx: Tensor
    ny: Tensor
    count: Tensor
    xs: Tensor
    ys: Tensor


def _setup_triangles(pos: Tensor, tri: Tensor, H: int, W: int) -> Optional[_TriangleSetup]:
    """Triangle setup of :func:`rasterize`; None when no triangle has a candidate pixel."""
    B = pos.shape[0]
    device, dtype = pos.device, pos.dtype
    F = tri.shape[0]
    # ---- triangle setup (per batch element and triangle) -----------------------------------
    v = pos[:, tri]  # [B,F,3,4]
    x, y, z, w = v.unbind(-1)  # [B,F,3] each
    rows = _edge_rows(_xyw(v))  # [B,F,3,3]
    det = (_xyw(v[..., 0, :]) * rows[..., 0, :]).sum(-1)  # [B,F] = det M
    ok = torch.isfinite(det) & (det != 0)
    ok &= (w > 0).any(-1)
    for c in (x, y, z):  # all three vertices outside the same frustum plane -> culled
        ok &= ~((c > w).all(-1) | (c < -w).all(-1))
    safe_det = torch.where(ok, det, torch.ones_like(det))
    E = rows / safe_det[..., None, None]  # [B,F,3,3]: mu_i = E_i . (X, Y, 1)
    Zp = (z[..., None] * E).sum(-2)  # [B,F,3]:   z/w  = Zp . (X, Y, 1)

    # screen bounding box in pixel-index space (pixel centre index i <-> continuous coordinate i)
    all_front = (w > 0).all(-1)  # [B,F]
    wsafe = torch.where(w > 0, w, torch.ones_like(w))
    px = ((x / wsafe + 1.0) * (0.5 * W) - 0.5).clamp(-2.0, W + 1.0)
    py = ((y / wsafe + 1.0) * (0.5 * H) - 0.5).clamp(-2.0, H + 1.0)
    x0 = torch.where(all_front, px.min(-1).values.floor(), torch.zeros_like(det)).clamp(0, W - 1)
    x1 = torch.where(all_front, px.max(-1).values.ceil(), torch.full_like(det, W - 1)).clamp(0, W - 1)
    y0 = torch.where(all_front, py.min(-1).values.floor(), torch.zeros_like(det)).clamp(0, H - 1)
    y1 = torch.where(all_front, py.max(-1).values.ceil(), torch.full_like(det, H - 1)).clamp(0, H - 1)
    x0, x1, y0, y1 = (t.long() for t in (x0, x1, y0, y1))
    nx = (x1 - x0 + 1).clamp(min=0)
    ny = (y1 - y0 + 1).clamp(min=0)
    # a box entirely off-screen has been clamped onto the border: drop it
    onscreen = (px.max(-1).values >= -0.5) & (px.min(-1).values <= W - 0.5)
    onscreen &= (py.max(-1).values >= -0.5) & (py.min(-1).values <= H - 0.5)
    onscreen |= ~all_front
    count = torch.where(ok & onscreen, nx * ny, torch.zeros_like(nx))  # [B,F]

    # flatten (b, f) and keep triangles with candidates
    count = count.reshape(-1)
    sel = torch.nonzero(count > 0).squeeze(1)
    if sel.numel() == 0:
        return None
    count = count[sel]
    bidx = sel // F
    fidx = sel % F
    table = torch.cat([E.reshape(B * F, 9), Zp.reshape(B * F, 3)], dim=1)[sel]  # [T,12]
    xs, ys = pixel_centers_ndc(H, W, device, dtype)
    return _TriangleSetup(E, Zp, sel, bidx, fidx, table, x0.reshape(-1)[sel], y0.reshape(-1)[sel],
                          nx.reshape(-1)[sel], ny.reshape(-1)[sel], count, xs, ys)


def _reference_winners(s: _TriangleSetup, B: int, H: int, W: int, chunk_pixels: int) -> Tuple[Tensor, Tensor]:
    """Depth test in PyTorch: (flat indices of covered pixels [N], winning triangle [N] long)."""
    device = s.table.device
    count, bidx, fidx, table, x0, y0, nx, xs, ys = (
        s.count, s.bidx, s.fidx, s.table, s.x0, s.y0, s.nx, s.xs, s.ys)
    keys = torch.full((B * H * W,), _EMPTY_KEY, dtype=torch.int64, device=device)
    cum = torch.cumsum(count, 0)
    cum_cpu = cum.cpu()
    T = s.sel.numel()
    start = 0
    done = 0
    while start < T:
        # largest end with cum[end-1] - done <= chunk_pixels (at least one triangle)
        end = int(torch.searchsorted(cum_cpu, done + chunk_pixels, right=True))
        end = min(max(end, start + 1), T)
        c = count[start:end]
        total = int(cum_cpu[end - 1]) - done
        tid = torch.repeat_interleave(torch.arange(end - start, device=device), c, output_size=total)
        first = cum[start:end] - c - done  # [n] offset of each triangle's first candidate
        local = torch.arange(total, device=device) - first[tid]
        nxs = nx[start:end][tid]
        pxi = x0[start:end][tid] + local % nxs
        pyi = y0[start:end][tid] + local // nxs
        X = xs[pxi]
        Y = ys[pyi]
        tb = table[start:end][tid]  # [N,12]
        mu0 = tb[:, 0] * X + tb[:, 1] * Y + tb[:, 2]
        mu1 = tb[:, 3] * X + tb[:, 4] * Y + tb[:, 5]
        mu2 = tb[:, 6] * X + tb[:, 7] * Y + tb[:, 8]
        depth = tb[:, 9] * X + tb[:, 10] * Y + tb[:, 11]
        inside = (mu0 >= 0) & (mu1 >= 0) & (mu2 >= 0) & (depth >= -1) & (depth <= 1)
        idx = torch.nonzero(inside).squeeze(1)
        if idx.numel() > 0:
            t_in = tid[idx] + start
            pix = (bidx[t_in] * H + pyi[idx]) * W + pxi[idx]
            key = _sortable_depth_key(depth[idx]) + fidx[t_in]
            keys.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)
        done += total
        start = end
    hit = torch.nonzero(keys != _EMPTY_KEY).squeeze(1)
    return hit, keys[hit] & _LOW32


def _resolve_winners(rast: Tensor, s: _TriangleSetup, hit: Tensor, face: Tensor) -> Tensor:
    """Recompute barycentrics and depth of the winning triangles at covered pixels into ``rast``."""
    B, H, W, _ = rast.shape
    if hit.numel() == 0:
        return rast
    E, Zp, xs, ys = s.E, s.Zp, s.xs, s.ys
    b = hit // (H * W)
    pix = hit % (H * W)
    X = xs[pix % W]
    Y = ys[pix // W]
    Eh = E[b, face]  # [N,3,3]
    mu = Eh[..., 0] * X[:, None] + Eh[..., 1] * Y[:, None] + Eh[..., 2]  # [N,3]
    lam = mu / mu.sum(-1, keepdim=True)
    zp = Zp[b, face]
    depth = zp[:, 0] * X + zp[:, 1] * Y + zp[:, 2]
    vals = torch.stack([lam[:, 0], lam[:, 1], depth, (face + 1).to(rast.dtype)], dim=-1)
    rast.view(B * H * W, 4)[hit] = vals
    return rast


# ----------------------------------------------------------------------------------- interpolate
def _covered_pixels(rast: Tensor):
    """Flat indices of covered pixels and their (batch, face, X, Y) with X, Y the NDC centre."""
    B, H, W, _ = rast.shape
    ids = rast[..., 3].detach().reshape(-1).round().long()
    hit = torch.nonzero(ids > 0).squeeze(1)
    face = ids[hit] - 1
    b = hit // (H * W)
    pix = hit % (H * W)
    xs, ys = pixel_centers_ndc(H, W, rast.device, rast.dtype)
    return hit, b, face, xs[pix % W], ys[pix // W]


def _batched_attr(attr: Tensor, B: int) -> Tensor:
    if attr.dim() == 2:
        attr = attr[None]
    if attr.dim() != 3 or attr.shape[0] not in (1, B):
        raise ValueError(f"attr must be [V,C] or [B,V,C] with B={B}, got {tuple(attr.shape)}")
    return attr


def interpolate(
    attr: Tensor, rast: Tensor, tri: Tensor, pos_clip: Optional[Tensor] = None
) -> Tensor:
    """Perspective-correct interpolation of vertex attributes: ``attr [B,V,C] or [V,C]`` -> ``[B,H,W,C]``.

    Background pixels are 0. Differentiable w.r.t. ``attr``. When ``pos_clip`` (the positions that
    were rasterized, ``[B,V,4]`` or ``[V,4]``) is given, the barycentrics of the covering triangle
    are recomputed differentiably at the pixel centre,
    ``lambda_i = c_i / sum_j c_j`` with ``c_i = (V_j x V_k) . (X, Y, 1)``, ``V = (x, y, w)``,
    so gradients also flow to the vertex positions (the covering triangle itself is fixed by
    ``rast``). Without ``pos_clip`` the (non-differentiable) ``u, v`` stored in ``rast`` are used.
    """
    B, H, W, _ = rast.shape
    tri = _check_tri(tri).to(rast.device)
    attr = _batched_attr(attr, B)
    C = attr.shape[-1]
    hit, b, face, X, Y = _covered_pixels(rast)
    vi = tri[face]  # [N,3]
    if pos_clip is None:
        uv = rast.reshape(-1, 4)[hit, :2].detach()
        lam = torch.cat([uv, 1.0 - uv.sum(-1, keepdim=True)], dim=-1)  # [N,3]
    else:
        pos = _batched_pos(pos_clip)
        if pos.shape[0] not in (1, B):
            raise ValueError(f"pos_clip batch {pos.shape[0]} does not match rast batch {B}")
        pb = b if pos.shape[0] == B else torch.zeros_like(b)
        Vh = _xyw(pos[pb[:, None], vi])  # [N,3,3]
        rows = _edge_rows(Vh)  # [N,3,3]
        p = torch.stack([X, Y, torch.ones_like(X)], dim=-1).to(rows.dtype)  # [N,3]
        c = (rows * p[:, None, :]).sum(-1)  # [N,3]
        lam = c / c.sum(-1, keepdim=True)
    ab = b if attr.shape[0] == B else torch.zeros_like(b)
    a = attr[ab[:, None], vi]  # [N,3,C]
    vals = (lam.to(a.dtype)[..., None] * a).sum(1)  # [N,C]
    out = vals.new_zeros(B * H * W, C).index_copy(0, hit, vals)
    return out.view(B, H, W, C)


# ------------------------------------------------------------------------------------- mesh topology
def edge_topology(tri: Tensor) -> Tuple[Tensor, Tensor]:
    """Triangle adjacency across edges, for :func:`lift3d.ops.antialias.antialias` (cache it for a
    fixed mesh).

    Edge i of triangle f is the edge opposite vertex i: ``(tri[f, (i+1)%3], tri[f, (i+2)%3])``.
    Returns ``(neighbor [F,3] long, same_dir [F,3] bool)``: the other triangle sharing that edge,
    or -1 when the edge is a boundary or non-manifold (shared by more than 2 triangles), and
    whether the neighbour walks the shared edge in the same direction (inconsistent winding).
    """
    tri = _check_tri(tri)
    F = tri.shape[0]
    a = tri[:, [1, 2, 0]].reshape(-1)  # [3F] half-edge h = 3 f + i
    bb = tri[:, [2, 0, 1]].reshape(-1)
    n = int(tri.max()) + 1 if F > 0 else 1
    key = torch.minimum(a, bb) * n + torch.maximum(a, bb)
    order = torch.argsort(key, stable=True)
    sk = key[order]
    neighbor = torch.full((3 * F,), -1, dtype=torch.long, device=tri.device)
    same_dir = torch.zeros(3 * F, dtype=torch.bool, device=tri.device)
    if sk.numel() >= 2:
        eq = sk[1:] == sk[:-1]  # [3F-1]
        prev = torch.cat([eq.new_zeros(1), eq[:-1]])
        nxt = torch.cat([eq[1:], eq.new_zeros(1)])
        pair = torch.nonzero(eq & ~prev & ~nxt).squeeze(1)  # runs of exactly two
        h0, h1 = order[pair], order[pair + 1]
        neighbor[h0] = h1 // 3
        neighbor[h1] = h0 // 3
        sd = a[h0] == a[h1]
        same_dir[h0] = sd
        same_dir[h1] = sd
    return neighbor.view(F, 3), same_dir.view(F, 3)


# ------------------------------------------------------------------------------- convenience API
_RESERVED = ("mask", "depth", "rast", "face_id", "pos_clip")


def render_mesh_attributes(
    v_pos_world: Tensor,
    tri: Tensor,
    mvp: Tensor,
    H: int,
    W: int,
    attrs: Optional[Dict[str, Tensor]] = None,
    antialias_attrs: bool = False,
    topology: Optional[Tuple[Tensor, Tensor]] = None,
) -> Dict[str, Tensor]:
    """Render a mesh: ``v_pos_world [V,3]``, ``tri [F,3]``, ``mvp [B,4,4]`` (OpenGL: camera looks
    down -z, projection to clip space, y up) -> dict of images with **row 0 = top** ([B,H,W,C]):

    * ``mask [B,H,W,1]``: antialiased coverage, differentiable w.r.t. ``v_pos_world``;
    * one entry per ``attrs`` name (``[V,C]`` or ``[B,V,C]``): perspective-correct interpolation,
      0 on background, differentiable w.r.t. the attribute and ``v_pos_world``; antialiased
      against a zero background too when ``antialias_attrs``;
    * ``depth [B,H,W,1]``: interpolated clip ``w`` = view-space distance along the camera axis
      for a perspective projection (0 on background);
    * ``face_id [B,H,W,1]`` long: triangle index, -1 on background (row 0 = top);
    * ``rast [B,H,W,4]`` and ``pos_clip [B,V,4]``: raw rasterizer output in the rasterizer's own
      orientation (**row 0 = bottom**, not flipped) so callers can run :func:`interpolate` /
      ``lift3d.ops.antialias.antialias`` themselves, then flip along H.
    """
    from lift3d.ops.antialias import antialias  # antialias builds on this module's helpers

    attrs = attrs or {}
    for name in attrs:
        if name in _RESERVED:
            raise ValueError(f"attribute name {name!r} is reserved (reserved: {_RESERVED})")
    if mvp.dim() == 2:
        mvp = mvp[None]
    v_h = torch.cat([v_pos_world, torch.ones_like(v_pos_world[:, :1])], dim=-1)  # [V,4]
    pos_clip = torch.einsum("bij,vj->bvi", mvp.to(v_h.dtype), v_h)  # [B,V,4]
    rast = rasterize(pos_clip, tri, (H, W))
    if topology is None:
        topology = edge_topology(tri)
    covered = (rast[..., 3:] > 0).to(pos_clip.dtype)
    mask = antialias(covered, rast, pos_clip, tri, topology)
    out: Dict[str, Tensor] = {"mask": mask}
    for name, a in attrs.items():
        val = interpolate(a, rast, tri, pos_clip)
        if antialias_attrs:
            val = antialias(val, rast, pos_clip, tri, topology)
        out[name] = val
    out["depth"] = interpolate(pos_clip[..., 3:4], rast, tri, pos_clip)
    out = {k: torch.flip(v, dims=[1]) for k, v in out.items()}
    out["face_id"] = torch.flip(rast[..., 3:4].round().long() - 1, dims=[1])
    out["rast"] = rast
    out["pos_clip"] = pos_clip
    return out
