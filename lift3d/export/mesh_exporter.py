"""`mesh-exporter`: the geometry's surface as a mesh users can open.

The surface comes from `geometry.isosurface()` (marching cubes for NeRF / implicit fields,
marching tetrahedra for DMTet, the mesh itself for custom-mesh); colours are the material's
albedo of the geometry's features (`geometry.export` → `material.export`).

Formats (`fmt`):
- `obj`: vertex colours as OBJ's `v x y z r g b` extension (no texture);
- `obj-mtl`: threestudio's textured export — xatlas UV atlas (`save_uv`), albedo baked into
  `texture_kd.<texture_format>` (`save_texture`, `texture_size`², see
  `lift3d.export.texture_baking`), `<save_name>.obj` + `<save_name>.mtl` (`map_Kd`);
- `glb`: with `save_uv` and `save_texture` a textured glTF binary (trimesh TextureVisuals), else
  vertex colours;
- `ply`: vertex colours.
`context_type` (threestudio's nvdiffrast context) is accepted and ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lift3d.errors import ConfigError
from lift3d.export.base import BaseExporter
from lift3d.registry import register

_MATERIAL_NAME = "defaultMat"


@register("mesh-exporter")
class MeshExporter(BaseExporter):
    @dataclass
    class Config(BaseExporter.Config):
        fmt: str = "obj"  # obj | obj-mtl | glb | ply
        save_name: str = "model"
        save_vertex_color: bool = True
        save_normal: bool = False  # OBJ formats: write vertex normals (vn)
        save_uv: bool = True  # obj-mtl / glb: UV atlas with xatlas
        save_texture: bool = True  # obj-mtl / glb: bake the albedo into a texture image
        texture_size: int = 1024
        texture_format: str = "png"  # png | jpg
        texture_dilation: int = 8  # texels grown around UV charts (seam padding)
        xatlas_chart_options: dict = field(default_factory=dict)
        xatlas_pack_options: dict = field(default_factory=dict)
        context_type: str = "cuda"  # ignored (threestudio's nvdiffrast context)
        chunk_size: int = 65536

    FORMATS = ("obj", "obj-mtl", "ply", "glb")
    TEXTURE_FORMATS = ("png", "jpg")

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.exporter") -> None:
        if cfg.fmt not in cls.FORMATS:
            raise ConfigError(f"{path}.fmt '{cfg.fmt}' is not supported: use one of {', '.join(cls.FORMATS)}.")
        if cfg.texture_format not in cls.TEXTURE_FORMATS:
            raise ConfigError(
                f"{path}.texture_format '{cfg.texture_format}': use one of {', '.join(cls.TEXTURE_FORMATS)}."
            )
        if cfg.texture_size < 8:
            raise ConfigError(f"{path}.texture_size must be at least 8, got {cfg.texture_size}.")

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        self.validate_config(self.cfg)

    # ------------------------------------------------------------------ colours
    @torch.no_grad()
    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """Albedo [N,3] in [0,1] at world points [N,3] (grey where the geometry has no texture)."""
        features = self.geometry.export(points).get("features")
        if features is None or features.shape[-1] == 0:
            return torch.full_like(points, 0.7)
        return self.material.export(features)["albedo"][..., :3].clamp(0.0, 1.0)

    @torch.no_grad()
    def vertex_colors(self, v_pos: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.albedo(p) for p in v_pos.split(self.cfg.chunk_size)], 0)  # [V,3]

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def export(self, folder: Path) -> list[Path]:
        mesh = self.geometry.isosurface()
        if mesh.n_faces == 0:
            raise ConfigError(
                "mesh-exporter: the geometry's surface is empty (no faces) — nothing to export. "
                "Train longer or check the isosurface threshold."
            )
        mesh = type(mesh)(mesh.v_pos.detach().float(), mesh.t_pos_idx.detach())
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        textured = self.cfg.fmt == "obj-mtl" or (self.cfg.fmt == "glb" and self.cfg.save_uv and self.cfg.save_texture)
        if textured:
            return self._export_textured(mesh, folder)
        return self._export_vertex_colored(mesh, folder)

    def _export_vertex_colored(self, mesh, folder: Path) -> list[Path]:
        import trimesh

        v = mesh.v_pos
        colors = None
        if self.cfg.save_vertex_color:
            rgb = (self.vertex_colors(v).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
            colors = np.concatenate([rgb, np.full_like(rgb[:, :1], 255)], axis=1)
        tm = trimesh.Trimesh(v.cpu().numpy(), mesh.t_pos_idx.cpu().numpy(), vertex_colors=colors, process=False)
        path = folder / f"{self.cfg.save_name}.{self.cfg.fmt}"
        if self.cfg.fmt == "obj":
            tm.export(path, include_normals=self.cfg.save_normal)
        else:
            tm.export(path)
        return [path]

    def _bake(self, mesh) -> Optional[np.ndarray]:
        from lift3d.export.texture_baking import bake_texture

        if not self.cfg.save_texture:
            return None
        texture, _ = bake_texture(
            mesh, self.albedo, size=self.cfg.texture_size, dilate=self.cfg.texture_dilation, chunk=self.cfg.chunk_size
        )
        return (texture.clamp(0.0, 1.0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)  # [S,S,3], row 0 = top

    def _export_textured(self, mesh, folder: Path) -> list[Path]:
        from PIL import Image

        if self.cfg.save_uv:
            mesh.unwrap_uv(dict(self.cfg.xatlas_chart_options), dict(self.cfg.xatlas_pack_options), reindex=True)
        image = self._bake(mesh) if self.cfg.save_uv else None
        if self.cfg.fmt == "glb":
            import trimesh

            visual = trimesh.visual.TextureVisuals(
                uv=mesh.v_tex.cpu().numpy(),
                material=trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(image), metallicFactor=0.0, roughnessFactor=1.0),
            )
            tm = trimesh.Trimesh(mesh.v_pos.cpu().numpy(), mesh.t_pos_idx.cpu().numpy(), visual=visual, process=False)
            path = folder / f"{self.cfg.save_name}.glb"
            tm.export(path)
            return [path]
        return self._write_obj_mtl(mesh, folder, image)

    def _write_obj_mtl(self, mesh, folder: Path, image: Optional[np.ndarray]) -> list[Path]:
        from PIL import Image

        name = self.cfg.save_name
        obj_path, mtl_path = folder / f"{name}.obj", folder / f"{name}.mtl"
        written = [obj_path, mtl_path]
        texture_name = None
        if image is not None:
            texture_name = f"texture_kd.{self.cfg.texture_format}"
            Image.fromarray(image).save(folder / texture_name)
            written.append(folder / texture_name)
        v = mesh.v_pos.cpu().numpy()
        f = mesh.t_pos_idx.cpu().numpy() + 1
        uv = mesh.v_tex.cpu().numpy() if mesh.v_tex is not None else None
        lines = [f"# lift3d mesh-exporter\nmtllib {mtl_path.name}\n"]
        lines += [f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in v]
        if uv is not None:
            lines += [f"vt {a:.6f} {b:.6f}\n" for a, b in uv]
        if self.cfg.save_normal:
            lines += [f"vn {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in mesh.v_nrm.cpu().numpy()]
        lines.append(f"usemtl {_MATERIAL_NAME}\n")
        # reindexed atlas: one index per corner serves v, vt and vn alike
        if uv is not None and self.cfg.save_normal:
            lines += [f"f {a}/{a}/{a} {b}/{b}/{b} {c}/{c}/{c}\n" for a, b, c in f]
        elif uv is not None:
            lines += [f"f {a}/{a} {b}/{b} {c}/{c}\n" for a, b, c in f]
        elif self.cfg.save_normal:
            lines += [f"f {a}//{a} {b}//{b} {c}//{c}\n" for a, b, c in f]
        else:
            lines += [f"f {a} {b} {c}\n" for a, b, c in f]
        obj_path.write_text("".join(lines))
        kd = "1.000000 1.000000 1.000000"
        if texture_name is None:  # no texture: the mean albedo as a flat colour
            mean = self.vertex_colors(mesh.v_pos).mean(0).cpu().numpy()
            kd = " ".join(f"{c:.6f}" for c in mean)
        mtl = [
            f"newmtl {_MATERIAL_NAME}\n",
            "Ka 0.000000 0.000000 0.000000\n",
            f"Kd {kd}\n",
            "Ks 0.000000 0.000000 0.000000\n",
            "illum 1\n",
        ]
        if texture_name is not None:
            mtl.append(f"map_Kd {texture_name}\n")
        mtl_path.write_text("".join(mtl))
        return written
