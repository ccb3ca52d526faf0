"""Sketch-Shape: a guiding mesh loss that keeps a NeRF's density inside a user's coarse mesh
(Latent-NeRF, Metzer et al., arXiv 2211.07600 §3.3; docs/methods/latent-nerf.md §4).

For the NeRF's samples x with density sigma(x) (the points the renderer marched this step):

    occ(x)    = clamp(1 - exp(-delta sigma(x)), 0, 1.1)               the NeRF's occupancy, delta = 0.2
    inside(x) = 1 if x is inside the guide mesh else 0                (clamped to [1e-4, 1 - 1e-4])
    w(x)      = 1 - exp(-d(x)^2 / (2 s^2))                            d: distance to the mesh surface, s = 0.3
    loss_shape = sum_x  -w(x) [occ log inside + (1 - occ) log(1 - inside)]

The loss is linear in occ: it raises the density inside the mesh and lowers it outside, and w leaves
the neighbourhood of the surface (within ~s) free for the text guidance to refine: the mesh is a
sketch, not a target. The sum (not mean) over samples is threestudio's.

The guide mesh is read with lift3d.ops.mesh_io and placed as threestudio does: centred, its largest
|coordinate| scaled to `scale` (0.7), mesh +y up (world +z) and +z front (world +x). Its signed
distance (lift3d.geometry.sdf_init.MeshSDF, exact, negative inside) is tabulated once on a
`resolution`³ grid over the cube [-radius, radius]³ and read by trilinear interpolation, on any
device; inside = (sdf < 0), d = |sdf|. Points outside the cube read the border value (outside).
threestudio instead queries igl's winding number and squared distance at every point and step; the
grid is what makes the loss cheap on a GPU, at the cost of the mesh's detail below one grid cell.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

SKETCH_DELTA = 0.2  # density -> occupancy scale of Latent-NeRF
SKETCH_PROXIMAL_SURFACE = 0.3  # s: the free band around the surface
INSIDE_CLAMP = 1e-4


def sketch_shape_loss(density: Tensor, sdf: Tensor, delta: float = SKETCH_DELTA,
                      proximal_surface: float = SKETCH_PROXIMAL_SURFACE) -> Tensor:
    """loss_shape (module docstring) for densities [N] at points whose guide-mesh signed distances are sdf [N]."""
    occ = (1.0 - torch.exp(-delta * density.reshape(-1))).clamp(0.0, 1.1)
    inside = (sdf.reshape(-1) < 0).to(occ.dtype).clamp(INSIDE_CLAMP, 1.0 - INSIDE_CLAMP)
    ce = -(occ * torch.log(inside) + (1.0 - occ) * torch.log(1.0 - inside))
    if proximal_surface > 0:
        ce = ce * (1.0 - torch.exp(-sdf.reshape(-1).to(occ.dtype) ** 2 / (2.0 * proximal_surface**2)))
    return ce.sum()


class GuideShape:
    """The guide mesh's signed distance on a grid: `sdf(points [N,3]) -> [N]` (negative inside)."""

    def __init__(self, path: str, scale: float = 0.7, up: str = "+y", front: str = "+z", radius: float = 1.0,
                 resolution: int = 64) -> None:
        from lift3d.geometry.sdf_init import MeshSDF, load_init_mesh

        v, f = load_init_mesh(path, scale, up, front)
        self.radius = float(radius)
        axis = torch.linspace(-self.radius, self.radius, int(resolution))
        # grid_sample reads a volume [1,1,D,H,W] at (x, y, z) = (W, H, D): index the table as [z, y, x]
        z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
        points = torch.stack([x, y, z], -1).reshape(-1, 3)
        self.table = MeshSDF(v, f)(points).reshape(1, 1, *z.shape)  # [1,1,R,R,R]

    def sdf(self, points: Tensor) -> Tensor:
        table = self.table.to(points.device, torch.float32)
        coords = (points.detach().float() / self.radius).reshape(1, -1, 1, 1, 3)
        return F.grid_sample(table, coords, mode="bilinear", padding_mode="border", align_corners=True).reshape(-1)


def guide_shape_loss(shape: GuideShape, points: Tensor, density: Tensor) -> Optional[Tensor]:
    """loss_shape at the renderer's sample points [S,3] with densities [S] (None when there are no samples)."""
    if points.shape[0] == 0:
        return None
    return sketch_shape_loss(density, shape.sdf(points))


__all__ = ["GuideShape", "SKETCH_DELTA", "SKETCH_PROXIMAL_SURFACE", "guide_shape_loss", "sketch_shape_loss"]
