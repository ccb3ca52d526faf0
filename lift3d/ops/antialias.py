"""Analytic silhouette antialiasing for the PyTorch rasterizer (`lift3d.ops.rasterize`), like
nvdiffrast's ``antialias``: ``antialias(color, rast, pos_clip, tri, topology)``. It is where
coverage changes at silhouettes produce gradients w.r.t. vertex positions (coverage itself is
piecewise constant). Conventions (clip space, pixel centres, row 0 = NDC y = -1) are those of
`lift3d.ops.rasterize`; `edge_topology` there gives the triangle adjacency it walks.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from lift3d.ops.rasterize import _batched_pos, _check_tri, _edge_rows, _xyw, edge_topology, pixel_centers_ndc

__all__ = ["antialias"]


def antialias(
    color: Tensor,
    rast: Tensor,
    pos_clip: Tensor,
    tri: Tensor,
    topology: Optional[Tuple[Tensor, Tensor]] = None,
    max_walk: int = 16,
) -> Tensor:
    """Analytic silhouette antialiasing: ``color [B,H,W,C]`` -> ``[B,H,W,C]``.

    Differentiable w.r.t. ``color`` and ``pos_clip``; this is where coverage changes at silhouettes
    produce gradients w.r.t. vertex positions. Formulation (in the spirit of nvdiffrast's
    antialias op):

    1. Consider every pair of horizontally (x, x+1) or vertically (y, y+1) adjacent pixels whose
       triangle ids differ. The *front* pixel F is the covered one if the other is background,
       else the one with smaller ``z/w``; its triangle is T, the other pixel is O.
    2. Walk along the screen segment from F's centre (s = 0) to O's centre (s = 1) across the mesh:
       in the current triangle the homogeneous edge functions ``c_i(s) = (V_j x V_k) . p(s)``
       (``V = (x, y, w)`` clip rows, ``p = (X, Y, 1)``) are linear in s, and the segment leaves the
       triangle through the decreasing edge with the smallest zero crossing
       ``s_i = c_i(F) / (c_i(F) - c_i(O))``. If that exit is beyond O (s >= 1) there is no
       silhouette between the pixels: stop. If the exit edge is a *silhouette edge* (no neighbour
       triangle -- boundary or non-manifold -- or the neighbour faces the other way on screen) it
       is the edge e sought, with crossing ``t = clamp(s_e, 0, 1)``. Otherwise step into the
       neighbour across it and repeat (at most ``max_walk`` triangles). The walk matters for
       smooth closed meshes, whose triangles next to the silhouette are sub-pixel slivers that
       own no pixel centre. Triangles with a vertex at ``w <= 0`` end the walk (no antialiasing).
    3. The pair is used only if e is steep for horizontal pairs (``|dy| >= |dx|`` in pixels) or
       flat for vertical pairs (``|dx| > |dy|``), so each edge is handled along one axis only.
    4. 1D box-coverage model along the pair axis: pixel cells are [-0.5, 0.5] around centres and
       the front surface covers s < t. If ``t < 0.5`` it covers only ``0.5 + t`` of F's cell:
       ``F += (0.5 - t) * (color_O - color_F)``; if ``t > 0.5`` it covers ``t - 0.5`` of O's cell:
       ``O += (t - 0.5) * (color_F - color_O)``. Deltas are computed from the input colours and
       summed over all pairs. For a straight steep edge this is the exact pixel-area coverage, and
       the result is continuous in the vertex positions when a pixel centre crosses the edge, so
       the antialiased mask sum approximates the projected area and its gradient the area's.

    Gradients w.r.t. positions flow through ``t`` (a differentiable function of the clip-space
    endpoints of e, w included); interior edges of a surface and pairs of equal colour contribute
    nothing. ``topology`` = :func:`edge_topology` ``(tri)`` may be passed to skip recomputing it.
    """
    B, H, W, C = color.shape
    if rast.shape[:3] != (B, H, W):
        raise ValueError(f"color {tuple(color.shape)} and rast {tuple(rast.shape)} disagree")
    tri = _check_tri(tri).to(rast.device)
    pos = _batched_pos(pos_clip)
    if pos.shape[0] not in (1, B):
        raise ValueError(f"pos_clip batch {pos.shape[0]} does not match rast batch {B}")
    if pos.shape[0] != B:
        pos = pos.expand(B, -1, -1)
    if topology is None:
        topology = edge_topology(tri)
    neighbor, same_dir = (t.to(rast.device) for t in topology)

    # per (b, f): screen orientation and silhouette flags of the three edges (no gradient)
    with torch.no_grad():
        pd = pos.detach()
        vt = pd[:, tri]  # [B,F,3,4]
        wv = vt[..., 3]
        det = (_xyw(vt[..., 0, :]) * _edge_rows(_xyw(vt))[..., 0, :]).sum(-1)  # [B,F]
        walkable = (wv > 0).all(-1) & (det != 0) & torch.isfinite(det)  # [B,F]
        sdet = torch.sign(det)  # == screen orientation when all w > 0
        differ = sdet[:, neighbor.clamp(min=0)] != sdet[..., None]  # [B,F,3]
        sil = (neighbor < 0)[None] | (differ ^ same_dir[None])

    ids = rast[..., 3].detach().round().long() - 1  # [B,H,W], -1 = background
    zz = torch.where(ids >= 0, rast[..., 2].detach(), torch.full_like(rast[..., 2], float("inf")))
    xs, ys = pixel_centers_ndc(H, W, rast.device, pos.dtype)
    flat_color = color.reshape(B * H * W, C)
    out = flat_color
    lin = torch.arange(B * H * W, device=rast.device).view(B, H, W)

    def centre(pix: Tensor) -> Tensor:  # flat pixel index -> [N,3] homogeneous NDC centre
        q = pix % (H * W)
        X = xs[q % W]
        return torch.stack([X, ys[q // W], torch.ones_like(X)], -1)

    for horizontal in (True, False):
        sl_a = (slice(None), slice(None), slice(None, -1)) if horizontal else (slice(None), slice(None, -1))
        sl_b = (slice(None), slice(None), slice(1, None)) if horizontal else (slice(None), slice(1, None))
        ia, ib = ids[sl_a], ids[sl_b]
        diff = ia != ib
        if not bool(diff.any()):
            continue
        ia, ib = ia[diff], ib[diff]
        za, zb = zz[sl_a][diff], zz[sl_b][diff]
        la, lb = lin[sl_a][diff], lin[sl_b][diff]
        a_front = (ib < 0) | ((ia >= 0) & (za <= zb))
        fpix = torch.where(a_front, la, lb)
        opix = torch.where(a_front, lb, la)

        # ---- walk from F's triangle towards O until a silhouette edge is crossed (no grad)
        with torch.no_grad():
            pair = torch.arange(fpix.numel(), device=rast.device)
            cur = torch.where(a_front, ia, ib)
            bidx = fpix // (H * W)
            pF_all, pO_all = centre(fpix), centre(opix)
            found_pair, found_face, found_edge = [], [], []
            for _ in range(max_walk):
                keep = walkable[bidx, cur]
                pair, cur, bidx = pair[keep], cur[keep], bidx[keep]
                if pair.numel() == 0:
                    break
                rows = _edge_rows(_xyw(pd[bidx[:, None], tri[cur]]))  # [n,3,3]
                cF = (rows * pF_all[pair][:, None, :]).sum(-1)  # [n,3]
                cO = (rows * pO_all[pair][:, None, :]).sum(-1)
                dec = sdet[bidx, cur][:, None] * (cO - cF) < 0
                s = torch.where(dec, cF / (cF - cO), torch.full_like(cF, float("inf")))
                s_exit, edge = s.min(-1)
                going = s_exit < 1
                is_sil = sil[bidx, cur, edge]
                hit = going & is_sil
                found_pair.append(pair[hit])
                found_face.append(cur[hit])
                found_edge.append(edge[hit])
                step = going & ~is_sil
                pair, bidx = pair[step], bidx[step]
                cur = neighbor[cur[step], edge[step]]
            pair = torch.cat(found_pair)
            face = torch.cat(found_face)
            edge = torch.cat(found_edge)
            bidx = fpix[pair] // (H * W)
            # steepness of the edge in pixels (endpoints j, k = edge + 1, edge + 2)
            vi = tri[face]
            j = vi.gather(1, ((edge + 1) % 3)[:, None]).squeeze(1)
            k = vi.gather(1, ((edge + 2) % 3)[:, None]).squeeze(1)
            Pj, Pk = pd[bidx, j], pd[bidx, k]
            dx = (Pk[:, 0] / Pk[:, 3] - Pj[:, 0] / Pj[:, 3]) * (0.5 * W)
            dy = (Pk[:, 1] / Pk[:, 3] - Pj[:, 1] / Pj[:, 3]) * (0.5 * H)
            steep = dy.abs() >= dx.abs()
            use = torch.nonzero(steep if horizontal else ~steep).squeeze(1)
        if use.numel() == 0:
            continue
        pair, bidx, j, k = pair[use], bidx[use], j[use], k[use]
        # ---- differentiable crossing of the silhouette edge (j, k): c = (V_j x V_k) . p
        row = torch.linalg.cross(_xyw(pos[bidx, j]), _xyw(pos[bidx, k]))  # [n,3]
        fu, ou = fpix[pair], opix[pair]
        cF = (row * centre(fu)).sum(-1)
        cO = (row * centre(ou)).sum(-1)
        t = (cF / (cF - cO)).clamp(0.0, 1.0).to(color.dtype)[:, None]  # [n,1]
        colF, colO = flat_color[fu], flat_color[ou]
        dF = (0.5 - t).clamp(min=0.0) * (colO - colF)
        dO = (t - 0.5).clamp(min=0.0) * (colF - colO)
        out = out.index_add(0, fu, dF).index_add(0, ou, dO)
    return out.view(B, H, W, C)
