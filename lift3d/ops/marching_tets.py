"""Differentiable marching tetrahedra (the DMTet isosurface), pure PyTorch, fully vectorised.

Sign convention: ``sdf < 0`` is inside, ``sdf >= 0`` outside (a vertex exactly at 0 counts as
outside). Output triangles are wound counter-clockwise seen from outside, so the face normal
``cross(v1 - v0, v2 - v0)`` points toward positive sdf (outward).

Requirement: tets must be positively oriented in the rest (undeformed) grid,
``det[b - a, c - a, d - a] > 0`` (``make_tet_grid`` guarantees it; use
``lift3d.ops.tet_grid.orient_tets`` on grids from files). Orientation is combinatorial: a tet
inverted by a large deformation keeps its rest orientation, so the mesh stays consistently wound.

Algorithm: for each tet with mixed signs, each of its edges whose endpoints have different
signs carries one surface vertex at the zero crossing of the linear interpolant of the sdf,
``p = (s1 * v0 - s0 * v1) / (s1 - s0)``; that point is differentiable w.r.t. both vertex
positions and both sdf values. Edges are shared between tets (unique edges), so neighbouring
tets reuse the same vertex and the output is watertight wherever the surface does not reach
the grid boundary. A tet with one (or three) inside vertices emits a triangle, one with two
inside vertices emits a quad split into two triangles. The 16-case triangle table is derived
below from a reference tet rather than written out by hand.
"""
from __future__ import annotations

from typing import List, Tuple

import torch

from lift3d.ops.tet_grid import TET_EDGE_PAIRS, tet_edges

__all__ = ["marching_tets", "TRIANGLE_TABLE", "NUM_TRIANGLES"]


def _build_triangle_table() -> Tuple[List[List[List[int]]], List[int]]:
    """For each case (bit k set <=> local vertex k inside), up to 2 triangles given as local
    edge ids (indices into TET_EDGE_PAIRS), wound so that normals point from the inside
    vertices toward the outside ones for a positively oriented tet."""
    ref = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)  # det = +1
    edge_id = {frozenset(p): k for k, p in enumerate(TET_EDGE_PAIRS)}
    table, counts = [], []
    for case in range(16):
        inside = [k for k in range(4) if (case >> k) & 1]
        outside = [k for k in range(4) if not (case >> k) & 1]
        if len(inside) in (0, 4):
            table.append([])
            counts.append(0)
            continue
        if len(inside) == 2:
            (a, b), (c, d) = inside, outside
            # cycle of crossing edges: ac - ad - bd - bc (consecutive edges share a vertex)
            loop = [(a, c), (a, d), (b, d), (b, c)]
            tris = [[loop[0], loop[1], loop[2]], [loop[0], loop[2], loop[3]]]
        else:
            lone = inside[0] if len(inside) == 1 else outside[0]
            others = [k for k in range(4) if k != lone]
            tris = [[(lone, o) for o in others]]
        # orient with the reference tet: normal . (outside centroid - inside centroid) > 0
        to_out = ref[outside].mean(0) - ref[inside].mean(0)
        p = [ref[list(e)].mean(0) for e in tris[0]]
        normal = torch.linalg.cross(p[1] - p[0], p[2] - p[0])
        if torch.dot(normal, to_out) < 0:
            tris = [[t[0], t[2], t[1]] for t in tris]
        table.append([[edge_id[frozenset(e)] for e in t] for t in tris])
        counts.append(len(tris))
    return table, counts


_TABLE, _COUNTS = _build_triangle_table()
# [16, 2, 3] local edge ids, -1 where a case has fewer than 2 triangles; [16] triangle counts
TRIANGLE_TABLE = torch.tensor(
    [t + [[-1, -1, -1]] * (2 - len(t)) for t in _TABLE], dtype=torch.long
)
NUM_TRIANGLES = torch.tensor(_COUNTS, dtype=torch.long)


def crossing_tets(inside: torch.Tensor, tets: torch.Tensor, chunk: int = 1 << 21) -> torch.Tensor:
    """The tets with mixed signs: inside [V] bool, tets [T,4] → [Tv,4], scanning `chunk` tets at a
    time so that the transient is ~2 bytes per tet of a chunk, not 13 per tet of the grid."""
    parts = []
    for part in tets.split(max(1, int(chunk))):
        n_inside = inside[part].sum(-1, dtype=torch.uint8)  # [c]
        parts.append(part[(n_inside > 0) & (n_inside < 4)])
    return torch.cat(parts, 0) if parts else tets[:0]


def marching_tets(
    verts: torch.Tensor, sdf: torch.Tensor, tets: torch.Tensor, chunk: int = 1 << 21
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Extract the zero level set of ``sdf`` on a tetrahedral grid.

    Args:
        verts: [V, 3] (deformed) grid vertex positions; gradients flow to them.
        sdf: [V] or [V, 1] signed distance values, negative inside; gradients flow to them.
        tets: [T, 4] long, positively oriented in the rest grid.
        chunk: tets scanned at once for sign changes (memory bound; the result does not depend on it).
    Returns:
        v_pos: [M, 3] surface vertices (one per sign-changing edge), dtype of ``verts``.
        faces: [F, 3] long, counter-clockwise seen from outside (normals toward sdf > 0).
        Both are empty ([0, 3]) when the sdf has no sign change.
    """
    if verts.ndim != 2 or verts.shape[-1] != 3:
        raise ValueError(f"marching_tets: verts must be [V, 3], got {tuple(verts.shape)}")
    sdf = sdf.reshape(-1)
    if sdf.shape[0] != verts.shape[0]:
        raise ValueError(
            f"marching_tets: sdf has {sdf.shape[0]} values for {verts.shape[0]} vertices"
        )
    device = verts.device
    tets = tets.long().to(device)

    inside = sdf.detach() < 0  # [V]
    tets = crossing_tets(inside, tets, chunk)  # [Tv, 4] tets the surface crosses
    if tets.shape[0] == 0:
        empty_faces = torch.zeros((0, 3), dtype=torch.long, device=device)
        return verts[:0] * 0.0 + sdf[:0, None] * 0.0, empty_faces

    bits = torch.tensor([1, 2, 4, 8], device=device)
    case = (inside[tets].long() * bits).sum(-1)  # [Tv] in 1..14

    edges, tet_edge_ids = tet_edges(tets, return_inverse=True)  # [E, 2], [Tv, 6]
    crossing = inside[edges[:, 0]] != inside[edges[:, 1]]  # [E]
    edge_to_vert = torch.full((edges.shape[0],), -1, dtype=torch.long, device=device)
    edge_to_vert[crossing] = torch.arange(int(crossing.sum()), device=device)

    e = edges[crossing]  # [M, 2]
    s0, s1 = sdf[e[:, 0], None], sdf[e[:, 1], None]  # [M, 1], opposite signs
    denom = s1 - s0  # |denom| >= |negative endpoint| > 0
    v_pos = (s1 * verts[e[:, 0]] - s0 * verts[e[:, 1]]) / denom  # [M, 3]

    table = TRIANGLE_TABLE.to(device)[case]  # [Tv, 2, 3]
    n_tri = NUM_TRIANGLES.to(device)[case]  # [Tv]
    local = table.clamp(min=0).reshape(-1, 6)  # [Tv, 6]
    face_edges = torch.gather(tet_edge_ids, 1, local).reshape(-1, 2, 3)  # [Tv, 2, 3]
    slot_used = torch.arange(2, device=device)[None, :] < n_tri[:, None]  # [Tv, 2]
    faces = edge_to_vert[face_edges[slot_used]]  # [F, 3]
    return v_pos, faces
