"""UV texture baking: the colour of a 3D field on a UV-unwrapped mesh, as a texture image.

The mesh is rasterized in UV space with `lift3d.ops.rasterize.rasterize` (clip position of a UV
vertex = (2u − 1, 2v − 1, 0, 1)); each covered texel gets the 3D surface point of its centre by
perspective-free barycentric interpolation, and `query(points [N,3]) -> [N,C]` colours it. Texels
no triangle covers are filled by `dilate` rounds of "mean of the filled 8-neighbours", so bilinear
lookups and mipmaps near chart borders do not bleed the empty background into the surface.

Image convention: the returned texture has row 0 = the top of the image = v = 1 (OBJ/glTF readers
put v = 0 at the bottom row), ready to be saved as a PNG.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from lift3d.mesh import Mesh
from lift3d.ops.rasterize import interpolate, rasterize

__all__ = ["bake_texture", "dilate_texture", "uv_rasterize"]


def uv_rasterize(v_tex: torch.Tensor, t_tex_idx: torch.Tensor, size: int) -> torch.Tensor:
    """Rasterize UV triangles into a size × size grid → rast [1,size,size,4], row 0 = v ≈ 0."""
    uv = v_tex.float()
    clip = torch.cat([uv * 2.0 - 1.0, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], dim=-1)  # [Vt,4]
    return rasterize(clip, t_tex_idx, (size, size))


def dilate_texture(texture: torch.Tensor, mask: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grow the filled region: texture [H,W,C], mask [H,W] bool → (texture, mask) after `iterations`
    rounds in which every empty texel with filled 8-neighbours takes their mean."""
    tex = texture.permute(2, 0, 1)[None] * mask[None, None]  # [1,C,H,W]
    m = mask[None, None].to(tex.dtype)
    kernel_c = torch.ones(tex.shape[1], 1, 3, 3, dtype=tex.dtype, device=tex.device)
    kernel_1 = torch.ones(1, 1, 3, 3, dtype=tex.dtype, device=tex.device)
    for _ in range(iterations):
        total = F.conv2d(tex, kernel_c, padding=1, groups=tex.shape[1])
        count = F.conv2d(m, kernel_1, padding=1)
        grow = (m == 0) & (count > 0)
        if not bool(grow.any()):
            break
        tex = torch.where(grow, total / count.clamp_min(1.0), tex)
        m = torch.where(grow, torch.ones_like(m), m)
    return tex[0].permute(1, 2, 0), m[0, 0] > 0


@torch.no_grad()
def bake_texture(
    mesh: Mesh,
    query: Callable[[torch.Tensor], torch.Tensor],
    size: int = 1024,
    dilate: int = 8,
    chunk: int = 262144,
    fill_value: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bake `query` (3D points [N,3] → values [N,C]) into a texture of `mesh`'s UV atlas.

    The mesh needs `v_tex` / `t_tex_idx` (`Mesh.unwrap_uv`); its positions are taken per UV vertex
    through `t_pos_idx` ↔ `t_tex_idx` face correspondence, so both layouts (reindexed or not) work.
    Returns texture [size,size,C] (row 0 = top = v = 1) and the covered mask [size,size] (before
    dilation). Texels still empty after dilation hold `fill_value`.
    """
    if mesh.v_tex is None or mesh.t_tex_idx is None:
        raise ValueError("bake_texture: the mesh has no UVs; call mesh.unwrap_uv() first")
    v_tex, t_tex = mesh.v_tex, mesh.t_tex_idx
    # 3D position of each UV vertex (a UV vertex belongs to one position vertex)
    pos_of_uv = torch.zeros(v_tex.shape[0], 3, dtype=mesh.v_pos.dtype, device=mesh.v_pos.device)
    pos_of_uv[t_tex.reshape(-1)] = mesh.v_pos[mesh.t_pos_idx.reshape(-1)]
    rast = uv_rasterize(v_tex, t_tex, size)  # [1,S,S,4]
    points = interpolate(pos_of_uv.float(), rast, t_tex)[0]  # [S,S,3]
    covered = rast[0, ..., 3] > 0  # [S,S]
    idx = torch.nonzero(covered.reshape(-1)).squeeze(1)
    flat_points = points.reshape(-1, 3)[idx]
    values = torch.cat([query(p) for p in flat_points.split(chunk)], 0) if idx.numel() else None
    channels = values.shape[-1] if values is not None else 3
    texture = torch.full((size * size, channels), float(fill_value), dtype=torch.float32, device=points.device)
    if values is not None:
        texture[idx] = values.float()
    texture = texture.view(size, size, channels)
    if dilate > 0:
        texture, grown = dilate_texture(texture, covered, dilate)
        texture = torch.where(grown[..., None], texture, torch.full_like(texture, float(fill_value)))
    # rasterizer row 0 is v ≈ 0 (bottom of the image): flip so that row 0 is the top
    return torch.flip(texture, dims=[0]), torch.flip(covered, dims=[0])
