"""`pbr-mesh-exporter`: `mesh-exporter` plus the PBR textures of `pbr-material`
(threestudio / nvdiffrec layout; X-Dreamer's export, docs/methods/xdreamer.md §4).

For `fmt: obj-mtl` it writes, beside `model.obj` (UV atlas by xatlas):
- `texture_kd.png`  albedo (sRGB), `map_Kd`;
- `texture_ks.png`  roughness-metallic, channels (0, roughness, metallic) as glTF's
  metallicRoughness (G = roughness, B = metallic), `map_Ks` (threestudio's convention);
- `texture_nrm.png` the bump-perturbed normal as a tangent-space normal map, (n + 1)/2 in the
  frame (T, B, N) of the exported mesh — T, B from its UVs (per-vertex sums of the face tangents,
  Gram-Schmidt against the vertex normal, handedness kept), so OBJ/glTF viewers that derive
  tangents from UVs reproduce the shading; `map_Bump` (and `norm`, the PBR extension of MTL).
`fmt: glb` writes a glTF binary with baseColor, metallicRoughness and normal textures. Other
formats and materials without roughness/metallic fall back to `mesh-exporter`.

Baking (`bake_pbr_textures`): the mesh is rasterized in UV space (`texture_baking.uv_rasterize`);
per covered texel the surface point, vertex normal and UV tangent frame are interpolated, the
geometry's features are queried at the point and the material's `export(features,
shading_normal=n)` gives albedo, roughness, metallic and the perturbed world normal. Chart borders
are dilated as in `texture_baking` (seam padding). Row 0 of every texture is the top (v = 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from lift3d.export.mesh_exporter import MeshExporter
from lift3d.export.texture_baking import dilate_texture, uv_rasterize
from lift3d.mesh import Mesh
from lift3d.ops.rasterize import interpolate
from lift3d.registry import register

__all__ = ["PBRMeshExporter", "bake_pbr_textures", "uv_tangent_frames", "to_png"]


def _per_uv_vertex(mesh: Mesh) -> tuple[torch.Tensor, torch.Tensor]:
    """Position [Vt,3] and vertex normal [Vt,3] of each UV vertex (through the face correspondence)."""
    t_tex, t_pos = mesh.t_tex_idx.reshape(-1), mesh.t_pos_idx.reshape(-1)
    pos_idx = torch.zeros(mesh.v_tex.shape[0], dtype=torch.long, device=t_tex.device)
    pos_idx[t_tex] = t_pos
    return mesh.v_pos[pos_idx].float(), mesh.v_nrm[pos_idx].float()


def uv_tangent_frames(mesh: Mesh) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per UV vertex: normal [Vt,3], unit tangent [Vt,3] (along +u, orthogonal to the normal) and
    handedness [Vt,1] (±1: bitangent = handedness · n × t points along +v)."""
    pos, nrm = _per_uv_vertex(mesh)
    uv, f = mesh.v_tex.float(), mesh.t_tex_idx
    p0, p1, p2 = pos[f[:, 0]], pos[f[:, 1]], pos[f[:, 2]]
    w0, w1, w2 = uv[f[:, 0]], uv[f[:, 1]], uv[f[:, 2]]
    e1, e2 = p1 - p0, p2 - p0
    d1, d2 = w1 - w0, w2 - w0
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    r = torch.where(det.abs() > 1e-12, 1.0 / det, torch.zeros_like(det))[:, None]
    t_face = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) * r  # dp/du, weighted by the UV area (det)
    b_face = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) * r  # dp/dv
    tan = torch.zeros_like(pos).index_add_(0, f.reshape(-1), t_face.repeat_interleave(3, 0))
    bit = torch.zeros_like(pos).index_add_(0, f.reshape(-1), b_face.repeat_interleave(3, 0))
    n = F.normalize(nrm, dim=-1)
    tan = tan - n * (n * tan).sum(-1, keepdim=True)
    # degenerate UVs: any tangent orthogonal to n
    fallback = F.normalize(torch.linalg.cross(n, torch.where(n[:, :1].abs() < 0.9, torch.tensor([[1.0, 0, 0]]).to(n),
                                                            torch.tensor([[0, 1.0, 0]]).to(n)).expand_as(n)), dim=-1)
    tan = torch.where(tan.norm(dim=-1, keepdim=True) > 1e-12, F.normalize(tan, dim=-1), fallback)
    handed = torch.where((torch.linalg.cross(n, tan) * bit).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(n)
    return n, tan, handed


def to_png(texture: torch.Tensor) -> np.ndarray:
    """[S,S,C] float in [0,1] -> uint8 [S,S,C]."""
    return (texture.clamp(0.0, 1.0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


@torch.no_grad()
def bake_pbr_textures(
    mesh: Mesh,
    material_query: Callable[[torch.Tensor, torch.Tensor], dict],
    size: int = 1024,
    dilate: int = 8,
    chunk: int = 262144,
) -> dict[str, torch.Tensor]:
    """Bake albedo, roughness-metallic and tangent-space normal textures of a UV-unwrapped mesh.

    material_query(points [N,3], normals [N,3]) -> {"albedo" [N,3], "roughness" [N,1], "metallic" [N,1],
    optionally "normal" [N,3] (the perturbed world normal)}.
    Returns {"kd" [S,S,3], "ks" [S,S,3] = (0, roughness, metallic), "nrm" [S,S,3] = (n_ts + 1)/2,
    "mask" [S,S] bool}, row 0 = top (v = 1), values in [0, 1].
    """
    if mesh.v_tex is None or mesh.t_tex_idx is None:
        raise ValueError("bake_pbr_textures: the mesh has no UVs; call mesh.unwrap_uv() first")
    pos, _ = _per_uv_vertex(mesh)
    n_v, t_v, s_v = uv_tangent_frames(mesh)
    attrs = torch.cat([pos, n_v, t_v, s_v], dim=-1)  # [Vt,10]
    rast = uv_rasterize(mesh.v_tex, mesh.t_tex_idx, size)  # [1,S,S,4], row 0 = v ≈ 0
    texel = interpolate(attrs, rast, mesh.t_tex_idx)[0].reshape(-1, 10)  # [S*S,10]
    covered = rast[0, ..., 3] > 0
    idx = torch.nonzero(covered.reshape(-1)).squeeze(1)
    out = torch.zeros(size * size, 8, device=texel.device)  # albedo 3, roughness, metallic, normal 3
    out[:, 7] = 1.0  # flat normal (0, 0, 1) where nothing is baked
    for part in idx.split(chunk):
        a = texel[part]
        p, n = a[:, 0:3], F.normalize(a[:, 3:6], dim=-1)
        t = F.normalize(a[:, 6:9] - n * (n * a[:, 6:9]).sum(-1, keepdim=True), dim=-1)
        b = torch.where(a[:, 9:10] < 0, -1.0, 1.0).to(n) * torch.linalg.cross(n, t)
        res = material_query(p, n)
        world = res.get("normal", n)
        n_ts = torch.stack([(world * t).sum(-1), (world * b).sum(-1), (world * n).sum(-1)], dim=-1)
        out[part] = torch.cat([res["albedo"][..., :3].float(), res["roughness"][..., :1].float(),
                               res["metallic"][..., :1].float(), F.normalize(n_ts, dim=-1).float()], dim=-1)
    tex = out.view(size, size, 8)
    if dilate > 0:
        tex, _ = dilate_texture(tex, covered, dilate)
    tex = torch.flip(tex, dims=[0])  # row 0 = top
    zeros = torch.zeros_like(tex[..., :1])
    return {
        "kd": tex[..., 0:3].clamp(0.0, 1.0),
        "ks": torch.cat([zeros, tex[..., 3:4], tex[..., 4:5]], dim=-1).clamp(0.0, 1.0),
        "nrm": (F.normalize(tex[..., 5:8], dim=-1) + 1.0) * 0.5,
        "mask": torch.flip(covered, dims=[0]),
    }


@register("pbr-mesh-exporter")
class PBRMeshExporter(MeshExporter):
    @dataclass
    class Config(MeshExporter.Config):
        fmt: str = "obj-mtl"
        save_roughness_metallic: bool = True  # texture_ks.png (0, roughness, metallic)
        save_normal_map: bool = True  # texture_nrm.png (tangent space)

    def _material_query(self, points: torch.Tensor, normals: torch.Tensor) -> dict:
        features = self.geometry.export(points).get("features")
        if features is None or features.shape[-1] == 0:
            grey = torch.full_like(points, 0.7)
            return {"albedo": grey, "roughness": grey[:, :1], "metallic": torch.zeros_like(grey[:, :1])}
        out = self.material.export(features, shading_normal=normals)
        if "roughness" not in out:  # not a PBR material: diffuse, rough, non-metallic
            out = dict(out, roughness=torch.ones_like(points[:, :1]), metallic=torch.zeros_like(points[:, :1]))
        return out

    def _pbr_images(self, mesh: Mesh) -> Optional[dict[str, np.ndarray]]:
        if not self.cfg.save_texture:
            return None
        baked = bake_pbr_textures(mesh, self._material_query, size=self.cfg.texture_size,
                                  dilate=self.cfg.texture_dilation, chunk=self.cfg.chunk_size)
        return {k: to_png(v) for k, v in baked.items() if k != "mask"}

    def _export_textured(self, mesh: Mesh, folder: Path) -> list[Path]:
        from PIL import Image

        if not self.cfg.save_uv:
            return super()._export_textured(mesh, folder)
        mesh.unwrap_uv(dict(self.cfg.xatlas_chart_options), dict(self.cfg.xatlas_pack_options), reindex=True)
        images = self._pbr_images(mesh)
        if self.cfg.fmt == "glb":
            return self._write_glb(mesh, folder, images)
        written = self._write_obj_mtl(mesh, folder, None if images is None else images["kd"])
        if images is None:
            return written
        ext = self.cfg.texture_format
        lines = []
        if self.cfg.save_roughness_metallic:
            Image.fromarray(images["ks"]).save(folder / f"texture_ks.{ext}")
            written.append(folder / f"texture_ks.{ext}")
            lines.append(f"map_Ks texture_ks.{ext}\n")
        if self.cfg.save_normal_map:
            Image.fromarray(images["nrm"]).save(folder / f"texture_nrm.{ext}")
            written.append(folder / f"texture_nrm.{ext}")
            lines += [f"map_Bump texture_nrm.{ext}\n", f"norm texture_nrm.{ext}\n"]
        mtl = folder / f"{self.cfg.save_name}.mtl"
        mtl.write_text(mtl.read_text() + "".join(lines))
        return written

    def _write_glb(self, mesh: Mesh, folder: Path, images: Optional[dict]) -> list[Path]:
        import trimesh
        from PIL import Image

        kwargs = {"metallicFactor": 0.0, "roughnessFactor": 1.0}
        if images is not None:
            kwargs["baseColorTexture"] = Image.fromarray(images["kd"])
            if self.cfg.save_roughness_metallic:  # factors multiply the texture
                kwargs.update(metallicRoughnessTexture=Image.fromarray(images["ks"]), metallicFactor=1.0)
            if self.cfg.save_normal_map:
                kwargs["normalTexture"] = Image.fromarray(images["nrm"])
        material = trimesh.visual.material.PBRMaterial(**kwargs)
        visual = trimesh.visual.TextureVisuals(uv=mesh.v_tex.cpu().numpy(), material=material)
        tm = trimesh.Trimesh(mesh.v_pos.cpu().numpy(), mesh.t_pos_idx.cpu().numpy(), visual=visual, process=False)
        path = folder / f"{self.cfg.save_name}.glb"
        tm.export(path)
        return [path]
