"""3D consistency of a generated object: its mesh (marching cubes of the tri-plane density) rasterised
from the cameras it was rendered from, against the volume renders' silhouettes (opacity > 0.5).

A view-consistent generator whose density is sharp gives IoU near 1 for every camera; this is the
check of #17's acceptance list ("a fixed z's mesh re-rendered matches its renders")."""
from __future__ import annotations

import torch
from torch import Tensor

from lift3d.data.cameras import get_mvp_matrix, get_projection_matrix
from lift3d.gan.camera_label import split_label
from lift3d.gan.mesh_export import density_grid
from lift3d.ops.marching_cubes import marching_cubes
from lift3d.ops.rasterize import render_mesh_attributes

_OPENCV_TO_OPENGL = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def label_mvp(labels: Tensor, near: float = 0.01, far: float = 100.0) -> Tensor:
    """labels [B,25] (square images, centred principal point) -> OpenGL model-view-projection [B,4,4]."""
    cam2world, k = split_label(labels)
    fovy = 2 * torch.atan(0.5 / k[:, 1, 1])  # [B] radians, from fy/H
    return get_mvp_matrix(cam2world @ _OPENCV_TO_OPENGL.to(labels), get_projection_matrix(fovy, 1.0, near, far))


@torch.no_grad()
def mesh_render_iou(generator, ws: Tensor, labels: Tensor, level: float, grid_resolution: int = 64) -> Tensor:
    """ws [1,num_ws,w_dim] (one latent), labels [V,25] -> IoU [V] between the rasterised silhouette of the
    latent's density mesh at `level` and its volume-rendered opacity > 0.5, at the neural rendering size."""
    planes = generator.planes(ws)  # [1,3,C,R,R]
    field = density_grid(lambda p: generator.query(planes, p), grid_resolution, generator.cfg.box_warp)
    half = generator.cfg.box_warp / 2
    v_pos, faces = marching_cubes(field, level, bbox=((-half,) * 3, (half,) * 3))
    r = generator.cfg.neural_rendering_resolution
    mesh_mask = render_mesh_attributes(v_pos, faces, label_mvp(labels), r, r)["face_id"][..., 0] >= 0  # [V,r,r]
    render_mask = generator.synthesis(ws.expand(labels.shape[0], -1, -1), labels)["image_mask"][:, 0] > 0.5
    inter = (mesh_mask & render_mask).flatten(1).sum(1).float()
    union = (mesh_mask | render_mask).flatten(1).sum(1).float().clamp_min(1)
    return inter / union
