"""Regenerate the small test meshes shipped in load/shapes/ (z-up, inside a sphere of radius 0.6).

    python load/shapes/make_shapes.py

* capsule_bicolor.ply: a capsule along z, upper half orange, lower half teal (~1.4k faces, closed).
* blocks_union.ply: an asymmetric part assembly (overlapping, not boolean-merged): a red box base,
  a yellow sphere on top and a blue cylinder handle sticking out towards +x; colours differ by part
  (~1.6k faces).
Vertex colours are stored per vertex (uint8 RGBA in the PLY).
"""

from __future__ import annotations

import os

import numpy as np
import trimesh

HERE = os.path.dirname(os.path.abspath(__file__))


def _colored(mesh: trimesh.Trimesh, rgb) -> trimesh.Trimesh:
    rgba = np.array(list(rgb) + [255], dtype=np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.tile(rgba, (len(mesh.vertices), 1)))
    return mesh


def capsule_bicolor() -> trimesh.Trimesh:
    """Surface of revolution (hemispheres r = 0.25 joined by a cylinder, z in [-0.55, 0.55]).

    The profile has rings at z = +-0.01 so the colour switches sharply at the equator while the
    mesh stays one closed manifold (no seam edges, which antialiasing would see as boundaries).
    """
    r, hc = 0.25, 0.3
    arc = np.linspace(0.0, np.pi / 2, 9)
    bottom = np.stack([r * np.sin(arc), -hc - r * np.cos(arc)], 1)  # pole -> (r, -hc)
    top = np.stack([r * np.cos(arc), hc + r * np.sin(arc)], 1)  # (r, hc) -> pole
    side = np.stack([np.full(6, r), np.array([-0.18, -0.06, -0.01, 0.01, 0.06, 0.18])], 1)
    profile = np.concatenate([bottom, side, top], 0)  # counter-clockwise (r, z): outward normals
    mesh = trimesh.creation.revolve(profile, sections=32)
    top_rgb = np.array([235, 140, 40, 255], dtype=np.uint8)
    bottom_rgb = np.array([30, 150, 150, 255], dtype=np.uint8)
    colors = np.where(mesh.vertices[:, 2:3] >= 0.0, top_rgb, bottom_rgb).astype(np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=colors)
    return mesh


def blocks_union() -> trimesh.Trimesh:
    box = trimesh.creation.box(extents=[0.5, 0.36, 0.3])
    box = box.subdivide().subdivide()  # 192 faces, so the base deforms sensibly in tests
    box.apply_translation([-0.05, 0.0, -0.12])
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.17)
    sphere.apply_translation([-0.08, 0.0, 0.2])
    handle = trimesh.creation.cylinder(radius=0.06, height=0.3, sections=32)
    handle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    handle.apply_translation([0.32, 0.0, -0.08])
    parts = [
        _colored(box, (200, 50, 40)),
        _colored(sphere, (240, 210, 60)),
        _colored(handle, (50, 90, 210)),
    ]
    return trimesh.util.concatenate(parts)


def main() -> None:
    for name, fn in (("capsule_bicolor.ply", capsule_bicolor), ("blocks_union.ply", blocks_union)):
        mesh = fn()
        radius = float(np.linalg.norm(mesh.vertices, axis=1).max())
        assert radius <= 0.6, (name, radius)
        path = os.path.join(HERE, name)
        mesh.export(path, encoding="binary")
        print(f"{path}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, "
              f"radius {radius:.3f}, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
