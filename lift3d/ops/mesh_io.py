"""Triangle-mesh loading (OBJ / PLY / GLB / GLTF / OFF / STL via trimesh) and normalisation.

``load_mesh(path) -> (v_pos float32 [V,3], faces int64 [F,3], v_color float32 [V,3] in [0,1] or None)``
as numpy arrays. Scenes (GLB with several nodes) are merged into one mesh with their node
transforms applied; vertices are kept as stored in the file (no merging, no reordering).
"""

from __future__ import annotations

import os
from typing import Optional, Tuple, Union

import numpy as np

__all__ = ["load_mesh", "normalize_mesh", "MESH_EXTENSIONS"]

MESH_EXTENSIONS = (".obj", ".ply", ".glb", ".gltf", ".off", ".stl")


def _vertex_colors(mesh) -> Optional[np.ndarray]:
    visual = getattr(mesh, "visual", None)
    kind = getattr(visual, "kind", None)
    if kind is None:
        return None
    try:
        if kind == "texture":
            visual = visual.to_color()  # samples the texture at the vertex UVs
        colors = np.asarray(visual.vertex_colors)
    except Exception:  # a texture that cannot be sampled: no colours rather than a failure
        return None
    if colors.ndim != 2 or colors.shape[0] != len(mesh.vertices) or colors.shape[1] < 3:
        return None
    colors = colors[:, :3].astype(np.float32)
    if colors.max(initial=0.0) > 1.0:  # trimesh stores uint8
        colors = colors / 255.0
    return colors


def load_mesh(path: Union[str, os.PathLike]) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Load a triangle mesh. Returns ``(v_pos [V,3] float32, faces [F,3] int64, v_color [V,3] float32 | None)``.

    Raises FileNotFoundError when ``path`` does not exist and ValueError (naming the path) when the
    format is unsupported, the file cannot be parsed, or it holds no triangles.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mesh file not found: {path!r}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in MESH_EXTENSIONS:
        raise ValueError(
            f"unsupported mesh format {ext or '(no extension)'!r} for {path!r}; "
            f"supported: {', '.join(MESH_EXTENSIONS)}"
        )
    try:
        import trimesh
    except ImportError as e:  # pragma: no cover - trimesh is a requirement
        raise ImportError(f"loading {path!r} needs trimesh: pip install trimesh") from e
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as e:
        raise ValueError(f"could not read mesh {path!r}: {type(e).__name__}: {e}") from e
    if isinstance(mesh, trimesh.Scene):  # older trimesh versions may still return a scene
        geoms = [g for g in mesh.dump() if isinstance(g, trimesh.Trimesh)]
        if not geoms:
            raise ValueError(f"mesh file {path!r} contains no triangle geometry")
        mesh = trimesh.util.concatenate(geoms)
    if not isinstance(mesh, trimesh.Trimesh):
        raise ValueError(f"mesh file {path!r} holds a {type(mesh).__name__}, not a triangle mesh")
    faces = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)
    verts = np.asarray(mesh.vertices, dtype=np.float32).reshape(-1, 3)
    if faces.shape[0] == 0 or verts.shape[0] == 0:
        raise ValueError(f"mesh file {path!r} has no triangles ({verts.shape[0]} vertices, 0 faces)")
    if faces.min() < 0 or faces.max() >= verts.shape[0]:
        raise ValueError(f"mesh file {path!r} has face indices outside [0, {verts.shape[0]})")
    if not np.isfinite(verts).all():
        raise ValueError(f"mesh file {path!r} has non-finite vertex positions")
    return verts, faces, _vertex_colors(mesh)


def normalize_mesh(v_pos, scale: float = 0.5):
    """Centre vertices on their bounding-box centre and scale so the longest bbox half-extent = ``scale``.

    Accepts a numpy array or a torch tensor ``[V,3]`` and returns the same type.
    """
    lo = v_pos.min(0)
    hi = v_pos.max(0)
    if not isinstance(lo, np.ndarray):  # torch returns (values, indices)
        lo, hi = lo.values, hi.values
    center = (lo + hi) / 2
    half = float(((hi - lo) / 2).max())
    if not half > 0:
        raise ValueError("cannot normalize a mesh whose bounding box has zero size")
    return (v_pos - center) * (scale / half)
