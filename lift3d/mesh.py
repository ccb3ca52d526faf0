"""Triangle mesh container with the attributes and regularizers lift3d's mesh stages need.

Names follow threestudio's ``Mesh``: ``v_pos`` [V, 3], ``t_pos_idx`` [F, 3], ``v_nrm``,
``v_rgb``, ``v_tex`` [Vt, 2], ``t_tex_idx`` [F, 3], ``extras``. Faces are wound
counter-clockwise seen from outside (the convention of ``lift3d.ops.marching_tets`` and
``lift3d.ops.marching_cubes``), so ``cross(v1 - v0, v2 - v0)`` is an outward normal.

Derived quantities (``v_nrm``, ``f_nrm``, ``edges``, ``face_adjacency``) are computed lazily on
first access and cached; they stay differentiable w.r.t. ``v_pos``. A Mesh is meant to be
rebuilt each step (as the isosurface is), so the cache is not invalidated if ``v_pos`` is
mutated in place; build a new Mesh instead.

Differences from threestudio, on purpose:
- ``laplacian()`` returns the uniform Laplacian matrix; the loss is ``laplacian_loss()``
  (threestudio's ``Mesh.laplacian()`` is the loss; ``laplacian_loss(squared=False)`` gives
  its value, mean of ||L v||).
- ``remove_outlier`` keeps gradients flowing to the kept vertices.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Mesh"]


def _edge_keys(faces: torch.Tensor, n_verts: int) -> torch.Tensor:
    """[3F] int64 key per directed face edge (v_k, v_{k+1}), as an undirected pair lo * V + hi."""
    a = faces.reshape(-1)  # v0 v1 v2 of each face
    b = faces[:, [1, 2, 0]].reshape(-1)
    return torch.minimum(a, b) * n_verts + torch.maximum(a, b)


class Mesh:
    """A triangle mesh.

    Args:
        v_pos: [V, 3] vertex positions.
        t_pos_idx: [F, 3] long vertex ids per face.
        v_rgb: optional [V, 3] vertex colours.
        v_tex: optional [Vt, 2] UV coordinates in [0, 1].
        t_tex_idx: optional [F, 3] long ids into ``v_tex`` per face.
        **extras: anything else (e.g. ``sdf``, ``v_nrm_init``), kept in ``self.extras``.
    """

    def __init__(
        self,
        v_pos: torch.Tensor,
        t_pos_idx: torch.Tensor,
        v_rgb: Optional[torch.Tensor] = None,
        v_tex: Optional[torch.Tensor] = None,
        t_tex_idx: Optional[torch.Tensor] = None,
        **extras: Any,
    ) -> None:
        if v_pos.ndim != 2 or v_pos.shape[-1] != 3:
            raise ValueError(f"Mesh: v_pos must be [V, 3], got {tuple(v_pos.shape)}")
        if t_pos_idx.ndim != 2 or t_pos_idx.shape[-1] != 3:
            raise ValueError(f"Mesh: t_pos_idx must be [F, 3], got {tuple(t_pos_idx.shape)}")
        if (v_tex is None) != (t_tex_idx is None):
            raise ValueError("Mesh: give both v_tex and t_tex_idx, or neither")
        self.v_pos = v_pos  # [V, 3]
        self.t_pos_idx = t_pos_idx.long()  # [F, 3]
        self._v_rgb = v_rgb  # [V, 3] or None
        self._v_tex = v_tex  # [Vt, 2] or None
        self._t_tex_idx = None if t_tex_idx is None else t_tex_idx.long()  # [F, 3] or None
        self.extras: Dict[str, Any] = dict(extras)
        self._clear_cache()

    def _clear_cache(self) -> None:
        self._v_nrm: Optional[torch.Tensor] = None
        self._f_nrm: Optional[torch.Tensor] = None
        self._edges: Optional[torch.Tensor] = None
        self._face_adjacency: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ basic properties
    @property
    def n_verts(self) -> int:
        return self.v_pos.shape[0]

    @property
    def n_faces(self) -> int:
        return self.t_pos_idx.shape[0]

    @property
    def device(self) -> torch.device:
        return self.v_pos.device

    @property
    def requires_grad(self) -> bool:
        return self.v_pos.requires_grad

    @property
    def v_rgb(self) -> Optional[torch.Tensor]:
        return self._v_rgb

    def set_vertex_color(self, v_rgb: torch.Tensor) -> None:
        if v_rgb.shape[0] != self.n_verts:
            raise ValueError(f"Mesh: v_rgb has {v_rgb.shape[0]} rows for {self.n_verts} vertices")
        self._v_rgb = v_rgb

    @property
    def v_tex(self) -> Optional[torch.Tensor]:
        return self._v_tex

    @property
    def t_tex_idx(self) -> Optional[torch.Tensor]:
        return self._t_tex_idx

    def add_extra(self, key: str, value: Any) -> None:
        self.extras[key] = value

    # ------------------------------------------------------------------ derived, lazy
    @property
    def f_nrm(self) -> torch.Tensor:
        """[F, 3] unit face normals (zero for degenerate faces)."""
        if self._f_nrm is None:
            self._f_nrm = F.normalize(self._face_cross(), dim=-1, eps=1e-20)
        return self._f_nrm

    def _face_cross(self) -> torch.Tensor:
        """[F, 3] cross(v1 - v0, v2 - v0): outward normal scaled by twice the face area."""
        p = self.v_pos[self.t_pos_idx]  # [F, 3, 3]
        return torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])

    @property
    def v_nrm(self) -> torch.Tensor:
        """[V, 3] area-weighted unit vertex normals, differentiable w.r.t. v_pos. A vertex no
        face touches (or whose faces all have zero area) gets (0, 0, 1), as in threestudio."""
        if self._v_nrm is None:
            fn = self._face_cross()  # [F, 3], |fn| = 2 * area
            idx = self.t_pos_idx.reshape(-1)  # [3F]
            acc = torch.zeros_like(self.v_pos).index_add(0, idx, fn.repeat_interleave(3, dim=0))
            length = acc.norm(dim=-1, keepdim=True)  # [V, 1]
            ok = length > 1e-20
            fallback = torch.tensor([0.0, 0.0, 1.0], dtype=acc.dtype, device=acc.device)
            self._v_nrm = torch.where(ok, acc / length.clamp_min(1e-20), fallback)
        return self._v_nrm

    @property
    def edges(self) -> torch.Tensor:
        """[E, 2] long unique undirected edges, rows sorted (lo, hi)."""
        if self._edges is None:
            n = max(self.n_verts, 1)
            keys = torch.unique(_edge_keys(self.t_pos_idx, n))
            self._edges = torch.stack([keys // n, keys % n], dim=-1)
        return self._edges

    @property
    def face_adjacency(self) -> torch.Tensor:
        """[A, 2] long pairs of faces that share an edge. A manifold edge gives one pair; an
        edge shared by k > 2 faces gives k - 1 pairs (a chain); boundary edges give none."""
        if self._face_adjacency is None:
            keys = _edge_keys(self.t_pos_idx, max(self.n_verts, 1))  # [3F]
            face_of = torch.arange(self.n_faces, device=self.device).repeat_interleave(3)
            keys_sorted, order = torch.sort(keys, stable=True)
            faces_sorted = face_of[order]
            same = keys_sorted[1:] == keys_sorted[:-1]
            self._face_adjacency = torch.stack([faces_sorted[:-1][same], faces_sorted[1:][same]], dim=-1)
        return self._face_adjacency

    # ------------------------------------------------------------------ regularizers
    def normal_consistency(self) -> torch.Tensor:
        """Mean over face pairs sharing an edge of (1 - cos) between their unit normals
        (scalar, differentiable; 0 for a flat consistently wound mesh). 0 if no pair."""
        adj = self.face_adjacency
        if adj.shape[0] == 0:
            return self.v_pos.sum() * 0.0
        n = self.f_nrm
        cos = (n[adj[:, 0]] * n[adj[:, 1]]).sum(-1)
        return (1.0 - cos).mean()

    def laplacian(self, normalized: bool = False) -> torch.Tensor:
        """Uniform graph Laplacian over mesh edges as a sparse COO [V, V] matrix (no grad).

        ``normalized=False``: L = D - A (degree minus adjacency), so (L v)_i = sum_j (v_i - v_j).
        ``normalized=True``:  L = I - D^-1 A, so (L v)_i = v_i - mean of its neighbours.
        """
        e = self.edges
        n = self.n_verts
        dtype = self.v_pos.dtype if self.v_pos.is_floating_point() else torch.float32
        rows = torch.cat([e[:, 0], e[:, 1]])
        cols = torch.cat([e[:, 1], e[:, 0]])
        deg = torch.zeros(n, dtype=dtype, device=self.device).index_add(
            0, rows, torch.ones(rows.shape[0], dtype=dtype, device=self.device)
        )
        if normalized:
            off = -1.0 / deg[rows]
            diag = (deg > 0).to(dtype)
        else:
            off = -torch.ones(rows.shape[0], dtype=dtype, device=self.device)
            diag = deg
        ar = torch.arange(n, device=self.device)
        idx = torch.stack([torch.cat([rows, ar]), torch.cat([cols, ar])])
        vals = torch.cat([off, diag])
        return torch.sparse_coo_tensor(idx, vals, (n, n), check_invariants=False).coalesce()

    def laplacian_loss(self, squared: bool = True, normalized: bool = False) -> torch.Tensor:
        """Uniform Laplacian smoothness: mean over vertices of ||(L v)_i||^2 (``squared=True``)
        or of ||(L v)_i|| (``squared=False``, threestudio's ``Mesh.laplacian()`` value).
        Differentiable w.r.t. v_pos; 0 where each vertex is the centroid of its neighbours
        (e.g. the interior of a regular flat grid)."""
        with torch.no_grad():
            L = self.laplacian(normalized=normalized)
        lv = torch.sparse.mm(L, self.v_pos)  # [V, 3]
        if squared:
            return (lv * lv).sum(-1).mean()
        return lv.norm(dim=-1).mean()

    # ------------------------------------------------------------------ editing
    def remove_outlier(self, outlier_n_faces_threshold: Union[int, float]) -> "Mesh":
        """Return a new Mesh without the small connected components.

        Args:
            outlier_n_faces_threshold: an int keeps components with at least that many faces; a
                float in (0, 1] keeps components with at least that fraction of the largest
                component's face count (threestudio's semantics).
        Components are connected through shared vertices. Gradients still flow from the kept
        ``v_pos`` to the original one. ``v_rgb`` is subset per vertex, ``t_tex_idx`` per face
        (``v_tex`` is kept whole); ``extras`` are carried over unchanged.
        """
        import scipy.sparse as sp
        from scipy.sparse.csgraph import connected_components

        if self.n_faces == 0:
            return self
        faces_np = self.t_pos_idx.detach().cpu().numpy()
        n = self.n_verts
        rows = faces_np.reshape(-1)
        cols = faces_np[:, [1, 2, 0]].reshape(-1)
        graph = sp.coo_matrix((np.ones(rows.shape[0], dtype=np.int8), (rows, cols)), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        face_label = labels[faces_np[:, 0]]
        faces_per_comp = np.bincount(face_label)
        if isinstance(outlier_n_faces_threshold, float):
            if not 0.0 < outlier_n_faces_threshold <= 1.0:
                raise ValueError(
                    f"remove_outlier: a float threshold is a fraction of the largest component in "
                    f"(0, 1], got {outlier_n_faces_threshold}"
                )
            threshold = int(faces_per_comp.max() * outlier_n_faces_threshold)
        else:
            threshold = int(outlier_n_faces_threshold)
        keep_face_np = faces_per_comp[face_label] >= threshold
        keep_face = torch.from_numpy(keep_face_np).to(self.device)

        faces = self.t_pos_idx[keep_face]
        used = torch.zeros(n, dtype=torch.bool, device=self.device)
        used[faces.reshape(-1)] = True
        new_id = torch.cumsum(used.long(), 0) - 1  # old vertex id -> new id (where used)
        mesh = Mesh(
            self.v_pos[used],
            new_id[faces],
            v_rgb=None if self._v_rgb is None else self._v_rgb[used],
            v_tex=self._v_tex,
            t_tex_idx=None if self._t_tex_idx is None else self._t_tex_idx[keep_face],
            **self.extras,
        )
        return mesh

    def to(self, device: Union[str, torch.device]) -> "Mesh":
        """Move every tensor (including cached ones and tensor extras) to ``device``, in place;
        returns self."""
        mv = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        for name in ("v_pos", "t_pos_idx", "_v_rgb", "_v_tex", "_t_tex_idx", "_v_nrm", "_f_nrm",
                     "_edges", "_face_adjacency"):
            setattr(self, name, mv(getattr(self, name)))
        self.extras = {k: mv(v) for k, v in self.extras.items()}
        return self

    # ------------------------------------------------------------------ UV atlas
    def unwrap_uv(
        self,
        xatlas_chart_options: Optional[Dict[str, Any]] = None,
        xatlas_pack_options: Optional[Dict[str, Any]] = None,
        reindex: bool = True,
    ) -> "Mesh":
        """Compute a UV atlas with xatlas; fills ``v_tex`` [Vt, 2] in [0, 1] and ``t_tex_idx``.

        xatlas splits vertices along UV seams and returns, per output vertex, the input vertex
        it comes from (``vmapping``). With ``reindex=True`` (default) the mesh adopts that
        layout: ``v_pos``, ``v_rgb`` and the vertex normals are gathered through ``vmapping``
        and ``t_pos_idx == t_tex_idx``, so one index buffer serves positions, normals and UVs.
        Vertex normals are computed before the split, so shading stays smooth across seams;
        seam edges become boundary edges, so evaluate ``normal_consistency`` /
        ``laplacian_loss`` before unwrapping. ``extras["vmapping"]`` keeps the [Vt] map.
        With ``reindex=False`` (threestudio's layout) ``v_pos`` / ``t_pos_idx`` are unchanged and
        ``t_tex_idx`` indexes ``v_tex`` separately. Modifies the mesh in place; returns self.

        Options are xatlas ``ChartOptions`` / ``PackOptions`` attributes, e.g.
        ``{"max_iterations": 4}`` / ``{"padding": 2, "resolution": 1024}``.
        """
        try:
            import xatlas
        except ImportError as err:
            raise ImportError(
                "Mesh.unwrap_uv needs the 'xatlas' package (UV atlas generation): pip install xatlas"
            ) from err

        chart, pack = xatlas.ChartOptions(), xatlas.PackOptions()
        for obj, opts, kind in ((chart, xatlas_chart_options, "chart"), (pack, xatlas_pack_options, "pack")):
            for key, value in (opts or {}).items():
                valid = sorted(a for a in dir(obj) if not a.startswith("_"))
                if key not in valid:
                    raise ValueError(f"unwrap_uv: unknown xatlas {kind} option {key!r}; valid: {valid}")
                setattr(obj, key, value)

        v_np = self.v_pos.detach().cpu().numpy().astype(np.float32)
        f_np = self.t_pos_idx.detach().cpu().numpy().astype(np.uint32)
        atlas = xatlas.Atlas()
        atlas.add_mesh(v_np, f_np)
        atlas.generate(chart, pack)
        vmapping, indices, uvs = atlas.get_mesh(0)

        dev = self.device
        vmap = torch.from_numpy(vmapping.astype(np.int64)).to(dev)  # [Vt]
        tex_idx = torch.from_numpy(indices.astype(np.int64)).to(dev)  # [F, 3]
        tex_dtype = self.v_pos.dtype if self.v_pos.is_floating_point() else torch.float32
        self._v_tex = torch.from_numpy(uvs.astype(np.float32)).to(dev, tex_dtype)  # [Vt, 2]
        self._t_tex_idx = tex_idx
        self.extras["vmapping"] = vmap
        if reindex:
            v_nrm = self.v_nrm[vmap]
            self.v_pos = self.v_pos[vmap]
            self.t_pos_idx = tex_idx
            if self._v_rgb is not None:
                self._v_rgb = self._v_rgb[vmap]
            self._clear_cache()
            self._v_nrm = v_nrm
        return self

    def __repr__(self) -> str:
        uv = "" if self._v_tex is None else f", n_uv={self._v_tex.shape[0]}"
        return f"Mesh(n_verts={self.n_verts}, n_faces={self.n_faces}{uv}, device={self.device})"
