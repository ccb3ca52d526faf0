"""A generated object's mesh: marching cubes of the tri-plane density of one latent, coloured by the
decoder's RGB at the vertices, written as OBJ (vertex colours) and/or GLB with trimesh."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from lift3d.errors import SurfaceError
from lift3d.ops.marching_cubes import marching_cubes

EXPORT_FORMATS = ("obj", "glb", "ply")


@torch.no_grad()
def density_grid(query: Callable[[Tensor], tuple[Tensor, Tensor]], resolution: int, box_warp: float,
                 chunk: int = 65536) -> Tensor:
    """σ on a resolution³ grid over the cube [-box_warp/2, box_warp/2]³ -> [R,R,R] (axis order x, y, z,
    the corners included, as lift3d.ops.marching_cubes expects). `query(points [1,P,3]) -> (σ [1,P,1], colour)`."""
    axis = torch.linspace(-box_warp / 2, box_warp / 2, resolution)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(1, -1, 3)  # [1,R³,3]
    sigma = torch.cat([query(p)[0] for p in points.split(chunk, dim=1)], dim=1)  # [1,R³,1]
    return sigma.reshape(resolution, resolution, resolution)


@torch.no_grad()
def export_triplane_mesh(query: Callable[[Tensor], tuple[Tensor, Tensor]], folder: Path, name: str,
                         resolution: int, box_warp: float, level: float, formats: Sequence[str]) -> list[Path]:
    """Marching cubes of σ at `level`; vertex colours = decoder RGB. Writes `<folder>/<name>.<fmt>`."""
    import trimesh

    field = density_grid(query, resolution, box_warp)
    half = box_warp / 2
    try:
        v_pos, faces = marching_cubes(field, level, bbox=((-half,) * 3, (half,) * 3), inside_is_greater=True)
    except ValueError as exc:
        raise SurfaceError(f"GAN export: {exc} (system.export_level sets the density level)") from None
    rgb = query(v_pos[None])[1][0, :, :3].clamp(0, 1)  # [V,3]
    colours = np.concatenate([(rgb.numpy() * 255 + 0.5).astype(np.uint8), np.full((len(rgb), 1), 255, np.uint8)], 1)
    mesh = trimesh.Trimesh(v_pos.numpy(), faces.numpy(), vertex_colors=colours, process=False)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = folder / f"{name}.{fmt}"
        mesh.export(path)
        written.append(path)
    return written
