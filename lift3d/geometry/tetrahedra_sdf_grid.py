"""`tetrahedra-sdf-grid`: DMTet — an SDF and a vertex deformation on a tetrahedral grid, plus a
hash-grid texture field (threestudio's TetrahedraSDFGrid, with the grid generated in code).

Surface: marching tetrahedra (`lift3d.ops.marching_tets`) of `sdf` on the grid vertices moved by
`deformation`; differentiable in both. The grid is the Kuhn tetrahedralisation of an
`isosurface_resolution`³ cube lattice over [-radius, radius]³ (`lift3d.ops.tet_grid`), so any
resolution works. Deformed vertex = rest vertex + 0.5 · step · tanh(deformation), step = 2 radius /
resolution (at most half a lattice step, so neighbouring vertices never swap places along an axis).

Per-vertex SDF and deformation are free parameters (buffers when `fix_geometry`); the texture field
features(x) = MLP(HashGrid(x normalised to [0,1]³)) is evaluated at surface points by the
rasterizer (`forward`) and by the exporter (`export`); `geometry_only` drops it.

Initialisation, in order of precedence:
1. `create_from` a previous stage (stage chaining; see `create_from` for signs and thresholds);
2. `shape_init` (sphere | ellipsoid | mesh:<path>): the SDF is computed directly at the grid
   vertices (`lift3d.geometry.sdf_init`) when training starts (first training step), unless the
   geometry was converted, resumed or loaded (the `shape_initialized` buffer is saved in
   checkpoints), or right away with `initialize_shape()`;
   `force_shape_init` applies shape_init at the first step of a fresh run even after a conversion;
3. otherwise SDF 0 (no surface): training refuses to start with a message naming both options.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from lift3d.errors import ConfigError
from lift3d.geometry.base import BaseExplicitGeometry, BaseGeometry, BaseImplicitGeometry
from lift3d.geometry.implicit_volume import default_hash_grid, default_mlp
from lift3d.mesh import Mesh
from lift3d.networks.encodings import get_encoding
from lift3d.networks.mlp import get_mlp
from lift3d.ops.marching_tets import marching_tets
from lift3d.ops.tet_grid import make_tet_grid
from lift3d.registry import register

log = logging.getLogger(__name__)

# keys that define a texture field; they must agree for its weights to be inherited (copy_net)
TEXTURE_FIELD_KEYS = ("n_input_dims", "n_feature_dims", "pos_encoding_config", "mlp_network_config")
# a progressive-band hash grid holds a hash grid's weights: its schedule keys do not change them
# (threestudio's coarse ProgressiveBandHashGrid NeRF -> HashGrid DMTet stages, e.g. Magic123)
_SCHEDULE_ONLY = {"ProgressiveBandHashGrid": ("HashGrid", ("start_level", "start_step", "update_steps"))}


def _weight_config(value: Any) -> Any:
    """A texture-field config value as far as it shapes the weights (see _SCHEDULE_ONLY)."""
    v = OmegaConf.to_container(OmegaConf.create({"v": value}))["v"]
    if isinstance(v, dict) and v.get("otype") in _SCHEDULE_ONLY:
        otype, dropped = _SCHEDULE_ONLY[v["otype"]]
        v = {**{k: x for k, x in v.items() if k not in dropped}, "otype": otype}
    if isinstance(v, dict):  # floats equal to 12 digits are the same (threestudio's configs write
        # per_level_scale as 1.447269237440378 in one stage and 1.4472692374403782 in the next)
        v = {k: float(f"{x:.12g}") if isinstance(x, float) else x for k, x in v.items()}
    return v


def copy_texture_field(target: nn.Module, other: nn.Module, target_name: str) -> None:
    """Load `other`'s encoding and feature network into `target` (system.geometry_convert_inherit_texture).

    The texture-field config keys must be the same in both stages (the checkpoint of the new stage
    is rebuilt from its own config on resume/--export), else a ConfigError names the keys.
    """
    if getattr(other, "feature_network", None) is None or getattr(other, "encoding", None) is None:
        raise ConfigError(
            f"system.geometry_convert_inherit_texture: the previous {type(other).__name__} geometry has no "
            f"texture field to copy into '{target_name}'; set geometry_convert_inherit_texture=false."
        )
    differ = [
        k for k in TEXTURE_FIELD_KEYS
        if k in other.cfg and _weight_config(other.cfg[k]) != _weight_config(target.cfg[k])
    ]
    try:
        target.encoding.load_state_dict(other.encoding.state_dict())
        target.feature_network.load_state_dict(other.feature_network.state_dict())
    except RuntimeError:
        differ = differ or ["pos_encoding_config", "mlp_network_config"]
    if differ:
        raise ConfigError(
            f"system.geometry_convert_inherit_texture: the texture field of the previous {type(other).__name__} "
            f"differs from this {target_name}'s in system.geometry.{', system.geometry.'.join(differ)}; copy those "
            f"keys from the previous stage's config, or set geometry_convert_inherit_texture=false."
        )


@torch.no_grad()
def query_field(geometry: BaseImplicitGeometry, points: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """An implicit geometry's raw field at world points [N,3] → [N] (chunked, no grad)."""
    return torch.cat([geometry.forward_field(p).reshape(-1) for p in points.split(chunk)])


@register("tetrahedra-sdf-grid")
class TetrahedraSDFGrid(BaseExplicitGeometry):
    @dataclass
    class Config(BaseExplicitGeometry.Config):
        isosurface_resolution: int = 128
        isosurface_deformable_grid: bool = True
        isosurface_remove_outliers: bool = False
        isosurface_outlier_n_faces_threshold: Union[int, float] = 0.01
        n_input_dims: int = 3
        n_feature_dims: int = 3
        pos_encoding_config: dict = field(default_factory=default_hash_grid)
        mlp_network_config: dict = field(default_factory=default_mlp)
        shape_init: Optional[str] = None  # sphere | ellipsoid | mesh:<path>
        shape_init_params: Any = None
        shape_init_mesh_up: str = "+z"
        shape_init_mesh_front: str = "+x"
        force_shape_init: bool = False  # run shape_init at the start of a fresh run even when converted
        geometry_only: bool = False  # no texture field (features are empty)
        fix_geometry: bool = False  # sdf and deformation are frozen (buffers); the mesh is cached
        # conversion from an implicit field (create_from): the source level (null: the source's
        # isosurface_threshold) and how the grid SDF is made from it (see create_from)
        convert_threshold: Optional[float] = None
        convert_sdf: str = "distance"  # distance | clamp

    convertible_from = ("implicit-volume", "implicit-sdf", "tetrahedra-sdf-grid", "custom-mesh")

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.geometry") -> None:
        from lift3d.geometry.sdf_init import validate_shape_init

        if cfg.isosurface_resolution < 1:
            raise ConfigError(f"{path}.isosurface_resolution must be a positive integer (tet grid cubes per axis).")
        if cfg.convert_sdf not in ("distance", "clamp"):
            raise ConfigError(f"{path}.convert_sdf '{cfg.convert_sdf}': use distance or clamp.")
        validate_shape_init(cfg.shape_init, cfg.shape_init_params, cfg.shape_init_mesh_up, cfg.shape_init_mesh_front, path)

    def configure(self) -> None:
        super().configure()
        self.validate_config(self.cfg)
        res, r = self.cfg.isosurface_resolution, self.cfg.radius
        verts, tets = make_tet_grid(res, scale=2.0 * r)
        self.register_buffer("grid_vertices", verts, persistent=False)  # [V,3] rest positions
        self.register_buffer("tets", tets, persistent=False)  # [T,4]
        self.grid_step = 2.0 * r / res
        n = verts.shape[0]
        sdf = torch.zeros(n, 1)
        deformation = torch.zeros(n, 3) if self.cfg.isosurface_deformable_grid else None
        if self.cfg.fix_geometry:
            self.register_buffer("sdf", sdf)
            self.register_buffer("deformation", deformation)
        else:
            self.sdf = nn.Parameter(sdf)
            self.deformation = nn.Parameter(deformation) if deformation is not None else None
        self.register_buffer("shape_initialized", torch.zeros((), dtype=torch.bool))
        if not self.cfg.geometry_only:
            self.encoding = get_encoding(self.cfg.n_input_dims, self.cfg.pos_encoding_config)
            self.feature_network = get_mlp(self.encoding.n_output_dims, self.cfg.n_feature_dims, self.cfg.mlp_network_config)
        self._mesh: Optional[Mesh] = None
        self._forced = False

    # ------------------------------------------------------------------ initialisation
    def set_sdf(self, sdf: torch.Tensor, deformation: Optional[torch.Tensor] = None) -> None:
        """Overwrite the grid SDF [V] or [V,1] (and deformation [V,3], default zeros) in place."""
        with torch.no_grad():
            self.sdf.copy_(sdf.reshape(-1, 1).to(self.sdf))
            if self.deformation is not None:
                self.deformation.copy_(torch.zeros_like(self.deformation) if deformation is None else deformation.to(self.deformation))
            self.shape_initialized.fill_(True)
        self._mesh = None

    def initialize_shape(self) -> None:
        """Set the SDF from `shape_init` (threestudio's initialize_shape); no-op without shape_init."""
        from lift3d.geometry.sdf_init import ShapeInitSDF

        if self.cfg.shape_init is None:
            return
        if bool(self.shape_initialized) and not self.cfg.force_shape_init:
            return
        fn = ShapeInitSDF(self.cfg.shape_init, self.cfg.shape_init_params, self.cfg.shape_init_mesh_up, self.cfg.shape_init_mesh_front)
        self.set_sdf(fn(self.grid_vertices.cpu()))
        log.info("tetrahedra-sdf-grid: SDF initialised from shape_init=%s", self.cfg.shape_init)

    def update_step(self, epoch: int, global_step: int) -> None:
        if not self.training:
            return
        if self.cfg.force_shape_init and global_step == 0 and not self._forced:  # a fresh run, not a resumed one
            self._forced = True
            self.initialize_shape()
        if bool(self.shape_initialized):
            return
        if self.cfg.shape_init is None:
            raise ConfigError(
                "tetrahedra-sdf-grid has no surface to train (its SDF was neither converted nor initialised): "
                "set system.geometry_convert_from=<previous stage's ckpts/last.ckpt or trial folder> or "
                "system.geometry.shape_init (sphere | ellipsoid | mesh:<path>)."
            )
        self.initialize_shape()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._mesh = None
        super()._load_from_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------ surface
    def deformed_vertices(self) -> torch.Tensor:
        if self.deformation is None:
            return self.grid_vertices
        return self.grid_vertices + 0.5 * self.grid_step * torch.tanh(self.deformation)  # [V,3]

    def isosurface(self) -> Mesh:
        """Marching tets → Mesh (world coordinates), differentiable in sdf and deformation."""
        if self.cfg.fix_geometry and self._mesh is not None and self._mesh.device == self.sdf.device:
            return self._mesh
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.fix_geometry):
            v_pos, faces = marching_tets(self.deformed_vertices(), self.sdf, self.tets)
            mesh = Mesh(v_pos, faces)
            if self.cfg.isosurface_remove_outliers and faces.shape[0] > 0:
                mesh = mesh.remove_outlier(self.cfg.isosurface_outlier_n_faces_threshold)
        if self.cfg.fix_geometry:
            self._mesh = mesh
        return mesh

    # ------------------------------------------------------------------ texture field
    def forward(self, points: torch.Tensor, output_normal: bool = False) -> dict[str, torch.Tensor]:
        # points [N,3] world → {"features": [N,F]} ({} when geometry_only)
        if self.cfg.geometry_only:
            return {}
        enc = self.encoding(self.normalize_points(points).reshape(-1, self.cfg.n_input_dims))
        return {"features": self.feature_network(enc).reshape(*points.shape[:-1], self.cfg.n_feature_dims)}

    def export(self, points: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        return self(points)

    # ------------------------------------------------------------------ stage chaining
    @classmethod
    def create_from(cls, other: BaseGeometry, cfg: Any = None, copy_net: bool = False, **kwargs: Any) -> "TetrahedraSDFGrid":
        """Build a DMTet grid from a previous stage's geometry.

        - implicit-volume (density, inside where density > t): s = t − density at the grid
          vertices, t = `convert_threshold` or the source's `isosurface_threshold` ("auto": mean of
          the density on the grid). `convert_sdf: distance` (default) stores sign(s) × the distance
          to the marching-cubes surface of s = 0 on the same lattice — a true SDF with the same
          zero set, well scaled for optimisation; `convert_sdf: clamp` stores clamp(s, −1, 1),
          threestudio's conversion (e.g. clamp(25 − density)). Grid vertices outside the source's
          bbox count as outside.
        - implicit-sdf (inside where sdf < t): s = sdf − t, then the same two modes.
        - tetrahedra-sdf-grid: SDF and deformation copied (same resolution and radius), else the
          SDF is resampled trilinearly on the new lattice and the deformation reset.
        - custom-mesh: the signed distance to the mesh at the grid vertices.
        `copy_net` (system.geometry_convert_inherit_texture) copies the encoding and feature
        network; their config keys (TEXTURE_FIELD_KEYS) and the radius must match the source's.
        """
        from lift3d.geometry.sdf_init import MeshSDF, lattice_sdf_from_field

        instance = cls(cfg)
        copy_net = copy_net and not instance.cfg.geometry_only
        pts = instance.grid_vertices
        other_type = type(other).__name__
        if copy_net and float(getattr(other.cfg, "radius", instance.cfg.radius)) != float(instance.cfg.radius):
            raise ConfigError(
                f"system.geometry_convert_inherit_texture: the texture field of the previous {other_type} spans "
                f"radius {other.cfg.radius}, this tetrahedra-sdf-grid radius {instance.cfg.radius}; set "
                f"system.geometry.radius={other.cfg.radius} or geometry_convert_inherit_texture=false."
            )
        if isinstance(other, TetrahedraSDFGrid):
            same = (
                other.cfg.isosurface_resolution == instance.cfg.isosurface_resolution
                and other.cfg.radius == instance.cfg.radius
            )
            if same:
                instance.set_sdf(other.sdf.detach(), None if other.deformation is None else other.deformation.detach())
            else:
                instance.set_sdf(other.sample_sdf(pts))
        elif isinstance(other, BaseImplicitGeometry):
            field_vals = query_field(other, pts)  # [V]
            level = instance.cfg.convert_threshold
            if level is None:
                level = other.isosurface_level(field_vals)
            s = (level - field_vals) if other.field_kind == "density" else (field_vals - level)
            outside_src = (pts.abs() > other.cfg.radius).any(-1)
            s = torch.where(outside_src, s.abs().max().clamp_min(1.0).expand_as(s), s)
            if not bool((s < 0).any()) or not bool((s > 0).any()):
                raise ConfigError(
                    f"cannot convert the {other_type} into tetrahedra-sdf-grid: its field never crosses the level "
                    f"{level:g} on the grid (field min {float(field_vals.min()):g}, max {float(field_vals.max()):g}). "
                    f"Set system.geometry.convert_threshold, or train the previous stage longer."
                )
            instance.set_sdf(lattice_sdf_from_field(s, pts, instance.cfg.isosurface_resolution, instance.cfg.radius, instance.cfg.convert_sdf))
        elif hasattr(other, "isosurface"):  # an explicit mesh (custom-mesh)
            mesh = other.isosurface()
            instance.set_sdf(MeshSDF(mesh.v_pos, mesh.t_pos_idx)(pts))
        else:
            raise ConfigError(f"cannot convert a {other_type} geometry into tetrahedra-sdf-grid.")
        if copy_net:
            copy_texture_field(instance, other, "tetrahedra-sdf-grid")
        return instance

    @torch.no_grad()
    def sample_sdf(self, points: torch.Tensor) -> torch.Tensor:
        """Trilinear interpolation of the grid SDF (rest lattice) at world points [N,3] → [N]."""
        n = self.cfg.isosurface_resolution + 1
        vol = self.sdf.detach().reshape(1, 1, n, n, n)  # indices (x, y, z)
        # grid_sample's last coordinate indexes the first spatial dim: pass (z, y, x)
        g = (points / self.cfg.radius).flip(-1).reshape(1, -1, 1, 1, 3).to(vol)
        outside = self.sdf.detach().abs().max()
        val = F.grid_sample(vol, g, align_corners=True, padding_mode="border").reshape(-1)
        far = (points.abs() > self.cfg.radius).any(-1)
        return torch.where(far, outside.expand_as(val), val)
