"""Geometry bases: implicit fields (density or SDF) and explicit meshes.

Contract (threestudio-compatible):
- `forward(points [N,3], output_normal=False) -> {"density" or "sdf": [N,1], "features": [N,F],
  "normal": [N,3] (if asked)}`; points are world coordinates inside the bbox [-radius, radius]^3.
- `isosurface() -> lift3d.mesh.Mesh` extracts the surface (for export and stage chaining).
- `create_from(other, cfg, ...)` builds this geometry from a previous stage's geometry
  (docs/DESIGN.md "Stage chaining"); the default refuses with a clear error.
- `export(points [N,3]) -> {"features": ...}` gives what an exporter needs to colour a mesh.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from lift3d.errors import ConfigError, SurfaceError
from lift3d.utils.base import BaseModule


class BaseGeometry(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pass

    # registered geometry types this class's create_from accepts
    convertible_from: tuple[str, ...] = ()

    @classmethod
    def can_convert_from(cls, type_name: str) -> bool:
        return type_name in cls.convertible_from

    @staticmethod
    def create_from(other: "BaseGeometry", cfg: Any = None, **kwargs: Any) -> "BaseGeometry":
        raise ConfigError(
            f"cannot convert a {type(other).__name__} geometry into this geometry type; "
            f"check system.geometry_type and system.geometry_convert_from."
        )

    def export(self, points: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        return {}


class BaseImplicitGeometry(BaseGeometry):
    """A field on the cube [-radius, radius]^3 with a marching-cubes isosurface."""

    @dataclass
    class Config(BaseGeometry.Config):
        radius: float = 1.0
        isosurface: bool = True
        isosurface_method: str = "mc"  # marching cubes on a regular grid
        isosurface_resolution: int = 128
        # the level of the surface: a number, or "auto" (density: mean of the field; sdf: 0)
        isosurface_threshold: Union[float, str] = 0.0
        isosurface_chunk: int = 1 << 18  # grid points per field query (issue #24); 0 = all at once
        isosurface_remove_outliers: bool = True
        isosurface_outlier_n_faces_threshold: Union[int, float] = 0.01
        # threestudio's: extract once over the whole cube, then again at the same resolution over the
        # coarse mesh's box grown by 10% of its size per side (finer cells on the object; marching cubes)
        isosurface_coarse_to_fine: bool = False

    # field_kind is "density" (inside: field > level) or "sdf" (inside: field < level)
    field_kind: str = "density"

    def configure(self) -> None:
        r = self.cfg.radius
        self.register_buffer(
            "bbox", torch.tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32), persistent=False
        )

    def forward_field(self, points: torch.Tensor) -> torch.Tensor:
        """The raw field at world points [N,3] → [N,1] (density or sdf)."""
        raise NotImplementedError

    def isosurface_level(self, field: torch.Tensor) -> float:
        thr = self.cfg.isosurface_threshold
        if thr == "auto":
            return float(field.mean()) if self.field_kind == "density" else 0.0
        return float(thr)

    @torch.no_grad()
    def grid_field(self, res: int, chunk: int = 0, bbox: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The field on the res³ lattice over the bbox (both corners included; `bbox` [2,3] another box)
        → [res,res,res] float32.

        Grid points are made per chunk of `chunk` flat indices (0: all at once), so the peak is
        chunk × (field query cost) plus the 4·res³-byte result, not res³ × 12-byte points."""
        n = res**3
        chunk = chunk if chunk > 0 else n
        box = self.bbox if bbox is None else bbox
        lo, size = box[0], box[1] - box[0]
        field = torch.empty(n, dtype=torch.float32, device=self.bbox.device)
        for i0 in range(0, n, chunk):
            idx = torch.arange(i0, min(i0 + chunk, n), device=self.bbox.device)
            ijk = torch.stack([idx // (res * res), (idx // res) % res, idx % res], dim=-1)  # [c,3], "ij" order
            points = lo + ijk.to(lo.dtype) / (res - 1) * size  # [c,3]
            field[i0 : i0 + idx.shape[0]] = self.forward_field(points).reshape(-1).float()
        return field.reshape(res, res, res)

    @torch.no_grad()
    def isosurface(self):
        """Marching cubes on a `isosurface_resolution`³ grid over the bbox → Mesh (world coords)."""
        from lift3d.mesh import Mesh
        from lift3d.ops.marching_cubes import marching_cubes

        res = self.cfg.isosurface_resolution
        box = self.bbox
        field = self.grid_field(res, self.cfg.isosurface_chunk)  # [res,res,res]
        level = self.isosurface_level(field)
        for fine in ((False, True) if self.cfg.isosurface_coarse_to_fine else (False,)):
            if fine:  # the coarse mesh's box + 10% of its size per side, within the cube; same level
                vmin, vmax = v_pos.amin(dim=0).to(box), v_pos.amax(dim=0).to(box)
                margin = (vmax - vmin) * 0.1
                box = torch.stack([(vmin - margin).maximum(self.bbox[0]), (vmax + margin).minimum(self.bbox[1])])
                field = self.grid_field(res, self.cfg.isosurface_chunk, bbox=box)
            try:
                v_pos, faces = marching_cubes(
                    field.float().cpu(), level, bbox=box.cpu(), inside_is_greater=self.field_kind == "density"
                )
            except ValueError as exc:
                raise SurfaceError(
                    f"{exc} Set system.geometry.isosurface_threshold (a number, or auto for the field's mean) "
                    f"on the --export command line, or train longer."
                ) from None
        mesh = Mesh(v_pos.to(self.bbox.device), faces.to(self.bbox.device))
        if self.cfg.isosurface_remove_outliers:
            mesh = mesh.remove_outlier(self.cfg.isosurface_outlier_n_faces_threshold)
        return mesh


class BaseExplicitGeometry(BaseGeometry):
    """A geometry whose surface is an explicit mesh (DMTet grid, a fixed mesh) in [-radius, radius]^3.

    Subclasses that carry a texture field evaluate it at world points mapped to [0, 1]^3 with
    `normalize_points` (threestudio's `contract_to_unisphere` on the bbox, without contraction).
    """

    @dataclass
    class Config(BaseGeometry.Config):
        radius: float = 1.0

    def configure(self) -> None:
        r = self.cfg.radius
        self.register_buffer(
            "bbox", torch.tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32), persistent=False
        )

    def normalize_points(self, points: torch.Tensor) -> torch.Tensor:
        """World points [N,3] → [0,1]^3 over the bbox (clamped)."""
        return ((points - self.bbox[0]) / (self.bbox[1] - self.bbox[0])).clamp(0.0, 1.0)

    def isosurface(self):
        raise NotImplementedError
