"""Regenerate the sample reference images in load/images/ by rendering shipped meshes with lift3d.

    python load/images/make_images.py

* capsule_rgba.png (256×256 RGBA): load/shapes/capsule_bicolor.ply seen from elevation 15°,
  azimuth 0° (the +x axis), distance 3.8, vertical fov 20° — the reference camera of
  configs/zero123.yaml (threestudio's Zero-1-to-3 framing: the object fills about 80 % of the
  frame). Vertex colours shaded by a fixed light (Lambert + ambient), straight (not premultiplied)
  colour, antialiased alpha, transparent background.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# the reference camera of configs/zero123.yaml
ELEVATION_DEG, AZIMUTH_DEG, DISTANCE, FOVY_DEG = 15.0, 0.0, 3.8, 20.0


def render_rgba(mesh_path: str, size: int = 256, elevation_deg: float = ELEVATION_DEG, azimuth_deg: float = AZIMUTH_DEG,
                distance: float = DISTANCE, fovy_deg: float = FOVY_DEG, light=(0.6, 0.3, 0.75)) -> np.ndarray:
    """uint8 [size, size, 4] RGBA render of a vertex-coloured mesh (see the module docstring)."""
    from lift3d.data.cameras import spherical_to_cartesian
    from lift3d.data.random_camera import camera_batch
    from lift3d.guidance.reference_mesh import ReferenceMeshGuidance, _vertex_normals
    from lift3d.ops.rasterize import render_mesh_attributes

    mesh = ReferenceMeshGuidance({"mesh_path": mesh_path})
    position = spherical_to_cartesian(torch.tensor([elevation_deg]), torch.tensor([azimuth_deg]), torch.tensor([distance]))
    batch = camera_batch(position, torch.deg2rad(torch.tensor([fovy_deg])), size, size, position,
                         torch.tensor([elevation_deg]), torch.tensor([azimuth_deg]), torch.tensor([distance]))
    normals = _vertex_normals(mesh.v_pos, mesh.faces)
    shade = (normals @ F.normalize(torch.tensor(light), dim=0)).clamp(min=0.0)[:, None]  # [V,1]
    color = mesh.v_color * (0.35 + 0.65 * shade)
    with torch.no_grad():
        out = render_mesh_attributes(mesh.v_pos, mesh.faces, batch["mvp_mtx"], size, size,
                                     attrs={"color": color}, antialias_attrs=True)
    alpha = out["mask"][0].clamp(0, 1)  # [H,W,1]
    rgb = torch.where(alpha > 1e-4, out["color"][0] / alpha.clamp(min=1e-4), torch.zeros_like(out["color"][0]))
    rgba = torch.cat([rgb.clamp(0, 1), alpha], dim=-1)
    return (rgba.numpy() * 255.0 + 0.5).astype(np.uint8)


def main() -> None:
    out = os.path.join(HERE, "capsule_rgba.png")
    Image.fromarray(render_rgba(os.path.join(REPO, "load", "shapes", "capsule_bicolor.ply")), mode="RGBA").save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
