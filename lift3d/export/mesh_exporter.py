"""`mesh-exporter`: the geometry's surface as a mesh users can open.

The surface comes from `geometry.isosurface()`; vertex colours from the material's albedo at the
vertices (`geometry.export` → `material.export`). Formats: `obj` (vertex colours as OBJ's
`v x y z r g b` extension), `ply`, `glb`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lift3d.errors import ConfigError
from lift3d.export.base import BaseExporter
from lift3d.registry import register


@register("mesh-exporter")
class MeshExporter(BaseExporter):
    @dataclass
    class Config(BaseExporter.Config):
        fmt: str = "obj"  # obj | ply | glb
        save_name: str = "model"
        save_vertex_color: bool = True
        chunk_size: int = 65536

    FORMATS = ("obj", "ply", "glb")

    @classmethod
    def validate_config(cls, cfg) -> None:
        if cfg.fmt not in cls.FORMATS:
            raise ConfigError(f"system.exporter.fmt '{cfg.fmt}' is not supported: use one of {', '.join(cls.FORMATS)}.")

    @torch.no_grad()
    def vertex_colors(self, v_pos: torch.Tensor) -> torch.Tensor:
        colors = []
        for points in v_pos.split(self.cfg.chunk_size):
            features = self.geometry.export(points)["features"]
            colors.append(self.material.export(features)["albedo"])
        return torch.cat(colors, 0).clamp(0.0, 1.0)  # [V,3]

    @torch.no_grad()
    def export(self, folder: Path) -> list[Path]:
        import trimesh

        mesh = self.geometry.isosurface()
        v = mesh.v_pos.detach()
        colors = None
        if self.cfg.save_vertex_color:
            rgb = (self.vertex_colors(v).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
            colors = np.concatenate([rgb, np.full_like(rgb[:, :1], 255)], axis=1)
        tm = trimesh.Trimesh(v.cpu().numpy(), mesh.t_pos_idx.cpu().numpy(), vertex_colors=colors, process=False)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.cfg.save_name}.{self.cfg.fmt}"
        tm.export(path)
        return [path]
