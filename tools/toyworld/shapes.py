"""The toy world's catalogue: five shapes × six colours, as triangle meshes (z up, centred at the origin).

Sizes are chosen so every shape fits a sphere of radius ~0.45: at the cameras of `dataset.py`
(distance ~2, fovy 40°) the object fills about 60 % of the frame, as object-centric priors expect.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

SHAPES = ("cube", "sphere", "cone", "cylinder", "torus")

# Albedo of each colour name (linear RGB in [0, 1]); the names are words of the tiny tokenizer.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.10),
    "green": (0.15, 0.68, 0.20),
    "blue": (0.14, 0.30, 0.88),
    "yellow": (0.95, 0.84, 0.14),
    "purple": (0.56, 0.20, 0.72),
    "orange": (0.96, 0.50, 0.10),
}


def caption(shape: str, colour: str) -> str:
    """The prompt of an object: 'a red cube'."""
    return f"a {colour} {shape}"


def parse_caption(prompt: str) -> tuple[str, str]:
    """(shape, colour) named in a prompt such as 'a red cube, front view'; ValueError if none."""
    words = prompt.lower().replace(",", " ").split()
    shapes = [w for w in words if w in SHAPES]
    colours = [w for w in words if w in COLOURS]
    if not shapes or not colours:
        raise ValueError(
            f"prompt {prompt!r} names no toy-world object: use '<colour> <shape>' with a colour from "
            f"{', '.join(COLOURS)} and a shape from {', '.join(SHAPES)}"
        )
    return shapes[0], colours[0]


def _trimesh_shape(name: str):
    import trimesh

    if name == "cube":
        return trimesh.creation.box(extents=(0.66, 0.66, 0.66))
    if name == "sphere":
        return trimesh.creation.icosphere(subdivisions=3, radius=0.42)
    if name == "cone":
        mesh = trimesh.creation.cone(radius=0.4, height=0.8, sections=48)
        mesh.apply_translation((0.0, 0.0, -0.4))  # base at z = -0.4, apex at +0.4
        return mesh
    if name == "cylinder":
        return trimesh.creation.cylinder(radius=0.34, height=0.72, sections=48)
    if name == "torus":
        return trimesh.creation.torus(major_radius=0.32, minor_radius=0.13, major_sections=48, minor_sections=24)
    raise ValueError(f"unknown toy-world shape {name!r}; choose one of {', '.join(SHAPES)}")


@lru_cache(maxsize=None)
def shape_mesh(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(vertices [V,3] float32, faces [F,3] long, face normals [F,3]) of a shape.

    Faces are unshared-vertex triangles (each face its own 3 vertices) so flat shading of the
    cube, cone base and cylinder caps stays crisp when interpolating per-vertex normals.
    """
    mesh = _trimesh_shape(name)
    v = np.asarray(mesh.vertices, dtype=np.float32)
    f = np.asarray(mesh.faces, dtype=np.int64)
    smooth = name in ("sphere", "torus")
    if smooth:
        normals = np.asarray(mesh.vertex_normals, dtype=np.float32)
        return torch.from_numpy(v), torch.from_numpy(f), torch.from_numpy(normals)
    # split vertices per face; curved sides of the cone / cylinder keep smooth normals where the
    # face normal is far from the vertex normal's direction only on hard edges
    vn = np.asarray(mesh.vertex_normals, dtype=np.float32)[f]  # [F,3,3]
    fn = np.asarray(mesh.face_normals, dtype=np.float32)[:, None, :].repeat(3, 1)  # [F,3,3]
    cos = (vn * fn).sum(-1, keepdims=True)
    normals = np.where(cos > 0.8, vn, fn)  # hard edge (cube, caps): the face normal
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    v_split = v[f].reshape(-1, 3)
    f_split = np.arange(len(v_split), dtype=np.int64).reshape(-1, 3)
    return torch.from_numpy(v_split), torch.from_numpy(f_split), torch.from_numpy(normals.reshape(-1, 3))


def shape_names_and_colours() -> list[tuple[str, str]]:
    """Every (shape, colour) object of the catalogue, in a fixed order."""
    return [(s, c) for s in SHAPES for c in COLOURS]
