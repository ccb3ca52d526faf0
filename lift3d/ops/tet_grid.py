"""Tetrahedral grids generated in code, at any resolution (no grid files).

threestudio ships DMTet grids as ``load/tets/{res}_tets.npz`` files (and 256 is missing); lift3d
builds them on the fly instead. The grid is the Kuhn (Freudenthal) triangulation of a cubic
lattice: each of the ``resolution**3`` cubes is split into 6 tetrahedra, one per ordering of the
axes, all sharing the cube's main diagonal (corner 000 -> corner 111). Because every cube is split
the same way, the face diagonals chosen on the two sides of a shared cube face agree, so the mesh
is conforming (every interior triangle is shared by exactly two tetrahedra).

Extent: vertices lie on the ``(resolution + 1)**3`` lattice points of ``scale * [-0.5, 0.5]^3``
(threestudio's grid files span ``[-0.5, 0.5]^3`` before the geometry scales them), so the lattice
step is ``scale / resolution``.

Orientation convention (relied on by :func:`lift3d.ops.marching_tets.marching_tets`): a tet
``(a, b, c, d)`` is *positively oriented* when ``det[b - a, c - a, d - a] > 0``. Every tet from
:func:`make_tet_grid` is positive; :func:`orient_tets` fixes grids loaded from elsewhere.

Sizes: V = (r + 1)^3 vertices, T = 6 r^3 tets, E = 3 r (r + 1)^2 + 3 r^2 (r + 1) + r^3 unique edges
(axis edges, one diagonal per lattice square, one main diagonal per cube). r = 128 gives 12.6 M
tets (400 MB as int64); r = 256 gives 100 M tets (3.2 GB) - mind the memory.
"""
from __future__ import annotations

import itertools
from typing import Tuple, Union

import torch

__all__ = ["make_tet_grid", "tet_edges", "orient_tets", "tet_volumes", "TET_EDGE_PAIRS"]

# Local vertex pairs of the 6 edges of a tet, in the order marching_tets' triangle table uses.
TET_EDGE_PAIRS: Tuple[Tuple[int, int], ...] = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def _kuhn_cube_tets() -> list[list[int]]:
    """The 6 Kuhn tets of a unit cube as corner ids (bit 0 = +x, bit 1 = +y, bit 2 = +z),
    each reordered to be positively oriented."""
    tets = []
    for perm in itertools.permutations(range(3)):
        corner, path = 0, [0]
        for axis in perm:  # walk 000 -> 111 adding one unit vector at a time
            corner |= 1 << axis
            path.append(corner)
        pts = torch.tensor([[(c >> k) & 1 for k in range(3)] for c in path], dtype=torch.float64)
        det = torch.linalg.det(pts[1:] - pts[0])
        if det < 0:  # odd permutation: swap the last two vertices
            path[2], path[3] = path[3], path[2]
        tets.append(path)
    return tets


_KUHN_TETS = _kuhn_cube_tets()  # [6][4] corner ids


def make_tet_grid(
    resolution: int,
    scale: float = 1.0,
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float32,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kuhn tetrahedralisation of a ``resolution^3`` cube lattice.

    Args:
        resolution: number of cubes along each axis (>= 1).
        scale: edge length of the whole grid; vertices span ``scale * [-0.5, 0.5]^3``.
    Returns:
        verts: [(r+1)^3, 3] lattice points; vertex (i, j, k) (i along x) has index
            ``(i * (r + 1) + j) * (r + 1) + k``.
        tets: [6 r^3, 4] long, every tet positively oriented (see module docstring).
    """
    r = int(resolution)
    if r < 1 or r != resolution:
        raise ValueError(f"make_tet_grid: resolution must be a positive integer, got {resolution!r}")
    n = r + 1
    coords = torch.linspace(-0.5 * scale, 0.5 * scale, n, dtype=dtype, device=device)
    gx, gy, gz = torch.meshgrid(coords, coords, coords, indexing="ij")
    verts = torch.stack([gx, gy, gz], dim=-1).reshape(-1, 3)  # [n^3, 3]

    idx = torch.arange(r, device=device)
    ci, cj, ck = torch.meshgrid(idx, idx, idx, indexing="ij")
    base = ((ci * n + cj) * n + ck).reshape(-1)  # [r^3] index of each cube's 000 corner
    # index offset of each cube corner id (bit 0 = x, bit 1 = y, bit 2 = z)
    corner_offset = torch.tensor(
        [(c & 1) * n * n + ((c >> 1) & 1) * n + ((c >> 2) & 1) for c in range(8)], device=device
    )
    local = corner_offset[torch.tensor(_KUHN_TETS, device=device)]  # [6, 4]
    tets = (base[:, None, None] + local[None]).reshape(-1, 4)  # [6 r^3, 4]
    return verts, tets.long()


def tet_edges(
    tets: torch.Tensor, return_inverse: bool = False
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Unique undirected edges of a tet mesh.

    Args:
        tets: [T, 4] long vertex ids.
        return_inverse: also return, for each tet, the ids of its 6 edges.
    Returns:
        edges: [E, 2] long, each row sorted (``edges[:, 0] < edges[:, 1]``), rows sorted.
        inverse (if asked): [T, 6] long, ``edges[inverse[t, k]]`` is the edge joining local
            vertices ``TET_EDGE_PAIRS[k]`` of tet t.
    """
    tets = tets.long()
    pairs = torch.tensor(TET_EDGE_PAIRS, device=tets.device)  # [6, 2]
    all_edges = tets[:, pairs]  # [T, 6, 2]
    lo = all_edges.min(dim=-1).values
    hi = all_edges.max(dim=-1).values
    n_verts = int(tets.max().item()) + 1 if tets.numel() else 1
    keys = lo * n_verts + hi  # [T, 6] one int64 key per undirected edge
    uniq, inverse = torch.unique(keys.reshape(-1), sorted=True, return_inverse=True)
    edges = torch.stack([uniq // n_verts, uniq % n_verts], dim=-1)  # [E, 2]
    if return_inverse:
        return edges, inverse.reshape(-1, 6)
    return edges


def tet_volumes(verts: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    """Signed volumes [T] (positive for positively oriented tets)."""
    p = verts[tets.long()]  # [T, 4, 3]
    a, b, c = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]
    return (a * torch.cross(b, c, dim=-1)).sum(-1) / 6.0


def orient_tets(verts: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    """Return ``tets`` with the last two vertices swapped wherever the signed volume is negative,
    so that every tet is positively oriented (use on grids loaded from files)."""
    tets = tets.long().clone()
    neg = tet_volumes(verts, tets) < 0
    tets[neg] = tets[neg][:, [0, 1, 3, 2]]
    return tets
