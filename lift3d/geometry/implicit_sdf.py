"""`implicit-sdf`: a signed distance field and a feature field on a shared hash-grid encoding
(threestudio's ImplicitSDF; Fantasia3D's geometry).

sdf(x) = MLP_s(enc(x)) + bias(x), features(x) = MLP_f(enc(x)), x normalised from the bbox
[-radius, radius]^3 to [0,1]^3 for the encoding; negative inside. `sdf_bias`: a number, "sphere"
(|x| − r, r = sdf_bias_params, default 0.5) or "ellipsoid" (sdf_bias_params = semi-axes).
Normals are ∇sdf / |∇sdf| (outward), by central finite differences or autograd ("analytic");
either way `sdf_grad` (∇sdf) is returned too, for the eikonal regularizer and NeuS's cos term.

Isosurface: `isosurface_method: mt` (default, as threestudio) runs differentiable marching
tetrahedra on a generated tet grid of `isosurface_resolution` over the bbox (optionally deformed by
a predicted offset, `isosurface_deformable_grid`) — what the mesh rasterizer trains through;
`mc` is marching cubes (export only, not differentiable).

`shape_init` (sphere | ellipsoid | mesh:<path>, see `lift3d.geometry.sdf_init`) fits the SDF
network by MSE to the shape's signed distance for `shape_init_steps` Adam steps when training
starts (unless the geometry was converted, resumed or loaded), or when `initialize_shape()` is
called.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from lift3d.errors import ConfigError
from lift3d.geometry.base import BaseGeometry, BaseImplicitGeometry
from lift3d.geometry.finite_difference_eps import finite_difference_eps, validate_finite_difference_eps
from lift3d.geometry.implicit_volume import default_hash_grid, default_mlp
from lift3d.mesh import Mesh
from lift3d.networks.encodings import get_encoding
from lift3d.networks.mlp import get_mlp
from lift3d.ops.marching_tets import marching_tets
from lift3d.registry import register

log = logging.getLogger(__name__)


@register("implicit-sdf")
class ImplicitSDF(BaseImplicitGeometry):
    @dataclass
    class Config(BaseImplicitGeometry.Config):
        n_input_dims: int = 3
        n_feature_dims: int = 3
        pos_encoding_config: dict = field(default_factory=default_hash_grid)
        mlp_network_config: dict = field(default_factory=default_mlp)
        normal_type: str = "finite_difference"  # finite_difference | analytic
        # a number, or "progressive": the finest active hash-grid cell (lift3d.geometry.finite_difference_eps)
        finite_difference_normal_eps: Union[float, str] = 0.01
        sdf_bias: Union[float, str] = 0.0  # number | sphere | ellipsoid
        sdf_bias_params: Any = None
        shape_init: Optional[str] = None  # sphere | ellipsoid | mesh:<path>
        shape_init_params: Any = None
        shape_init_mesh_up: str = "+z"
        shape_init_mesh_front: str = "+x"
        force_shape_init: bool = False
        shape_init_steps: int = 1000
        shape_init_lr: float = 1e-3
        shape_init_batch_size: int = 10000
        isosurface_method: str = "mt"  # mt (differentiable marching tets) | mc (marching cubes)
        isosurface_deformable_grid: bool = False
        isosurface_threshold: Union[float, str] = 0.0
        isosurface_remove_outliers: bool = False

    field_kind = "sdf"
    convertible_from = ("implicit-sdf",)

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.geometry") -> None:
        from lift3d.geometry.sdf_init import validate_shape_init

        if cfg.normal_type not in ("finite_difference", "analytic"):
            raise ConfigError(f"{path}.normal_type '{cfg.normal_type}': use finite_difference or analytic.")
        if cfg.isosurface_method not in ("mt", "mc"):
            raise ConfigError(f"{path}.isosurface_method '{cfg.isosurface_method}': use mt or mc.")
        bias = cfg.sdf_bias
        if isinstance(bias, str) and bias not in ("sphere", "ellipsoid"):
            raise ConfigError(f"{path}.sdf_bias '{bias}': use a number, sphere or ellipsoid.")
        if bias == "ellipsoid" and (cfg.sdf_bias_params is None or len(list(cfg.sdf_bias_params)) != 3):
            raise ConfigError(f"{path}.sdf_bias_params must be the 3 semi-axes for sdf_bias=ellipsoid.")
        validate_shape_init(cfg.shape_init, cfg.shape_init_params, cfg.shape_init_mesh_up, cfg.shape_init_mesh_front, path)
        validate_finite_difference_eps(cfg.finite_difference_normal_eps, cfg.pos_encoding_config, path)

    def configure(self) -> None:
        super().configure()
        self.validate_config(self.cfg)
        self.encoding = get_encoding(self.cfg.n_input_dims, self.cfg.pos_encoding_config)
        self.sdf_network = get_mlp(self.encoding.n_output_dims, 1, self.cfg.mlp_network_config)
        self.feature_network = (
            get_mlp(self.encoding.n_output_dims, self.cfg.n_feature_dims, self.cfg.mlp_network_config)
            if self.cfg.n_feature_dims > 0 else None
        )
        if self.cfg.isosurface_deformable_grid:
            self.deformation_network = get_mlp(self.encoding.n_output_dims, 3, self.cfg.mlp_network_config)
        self.register_buffer("shape_initialized", torch.zeros((), dtype=torch.bool))
        self._tet_grid: Optional[tuple] = None
        self._forced = False

    # ------------------------------------------------------------------ field
    def sdf_bias(self, points: torch.Tensor) -> torch.Tensor:
        bias = self.cfg.sdf_bias
        if bias == "sphere":
            r = 0.5 if self.cfg.sdf_bias_params is None else float(self.cfg.sdf_bias_params)
            return points.norm(dim=-1, keepdim=True) - r
        if bias == "ellipsoid":
            from lift3d.geometry.sdf_init import _ellipsoid_sdf

            radii = torch.tensor([float(x) for x in self.cfg.sdf_bias_params], device=points.device, dtype=points.dtype)
            return _ellipsoid_sdf(points, radii)[..., None]
        return torch.full_like(points[..., :1], float(bias))

    def _normalise(self, points: torch.Tensor) -> torch.Tensor:
        return ((points - self.bbox[0]) / (self.bbox[1] - self.bbox[0])).clamp(0.0, 1.0)

    def _sdf_and_encoding(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encoding(self._normalise(points))  # [N,E]
        return self.sdf_network(enc) + self.sdf_bias(points), enc  # [N,1]

    def forward_field(self, points: torch.Tensor) -> torch.Tensor:
        return self._sdf_and_encoding(points)[0]

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> dict[str, torch.Tensor]:
        # points [N,3] world
        grad_enabled = torch.is_grad_enabled()
        analytic = output_normal and self.cfg.normal_type == "analytic"
        with torch.set_grad_enabled(grad_enabled or analytic):
            if analytic and not points.requires_grad:
                points = points.detach().requires_grad_(True)
            sdf, enc = self._sdf_and_encoding(points)
            out = {"sdf": sdf, "features": self._features(enc)}
            if output_normal:
                if analytic:
                    grad = torch.autograd.grad(sdf.sum(), points, create_graph=grad_enabled)[0]
                    out["sdf_grad"] = grad
                else:
                    eps = finite_difference_eps(self.cfg.finite_difference_normal_eps, self.encoding, self.cfg.radius)
                    offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps  # [3,3]
                    probe = torch.cat([points[:, None] + offsets, points[:, None] - offsets], 1)  # [N,6,3]
                    s = self.forward_field(probe.reshape(-1, 3)).reshape(-1, 6)
                    grad = (s[:, :3] - s[:, 3:]) / (2.0 * eps)  # [N,3]
                    out["sdf_grad"] = grad  # differentiable w.r.t. the parameters (eikonal)
                out["normal"] = F.normalize(grad, dim=-1)
        return out

    def export(self, points: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        _, enc = self._sdf_and_encoding(points)
        return {"features": self._features(enc)}

    def _features(self, enc: torch.Tensor) -> torch.Tensor:
        if self.feature_network is None:  # n_feature_dims = 0 (Fantasia3D's geometry stage)
            return enc.new_zeros(enc.shape[0], 0)
        return self.feature_network(enc)

    # ------------------------------------------------------------------ isosurface
    def _grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        from lift3d.ops.tet_grid import make_tet_grid

        if self._tet_grid is None or self._tet_grid[0].device != self.bbox.device:
            verts, tets = make_tet_grid(self.cfg.isosurface_resolution, scale=2.0 * self.cfg.radius, device=self.bbox.device)
            self._tet_grid = (verts, tets)
        return self._tet_grid

    def isosurface(self) -> Mesh:
        if self.cfg.isosurface_method == "mc":
            return super().isosurface()
        verts, tets = self._grid()
        step = 2.0 * self.cfg.radius / self.cfg.isosurface_resolution
        if torch.is_grad_enabled():  # training through the surface: one graph over the grid
            sdf, enc = self._sdf_and_encoding(verts)
            offset = 0.5 * step * torch.tanh(self.deformation_network(enc)) if self.cfg.isosurface_deformable_grid else None
        else:  # evaluation / export: the field in chunks of isosurface_chunk vertices (issue #24)
            sdf, offset = self._grid_values_chunked(verts, step)
        level = self.isosurface_level(sdf.detach())
        if offset is not None:
            verts = verts + offset
        v_pos, faces = marching_tets(verts, sdf - level, tets)
        mesh = Mesh(v_pos, faces)
        if self.cfg.isosurface_remove_outliers and faces.shape[0] > 0:
            mesh = mesh.remove_outlier(self.cfg.isosurface_outlier_n_faces_threshold)
        return mesh

    def _grid_values_chunked(self, verts: torch.Tensor, step: float) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """sdf [V,1] and deformation offsets [V,3] (or None) at the grid vertices, chunk by chunk."""
        chunk = self.cfg.isosurface_chunk if self.cfg.isosurface_chunk > 0 else verts.shape[0]
        sdfs, offsets = [], []
        for part in verts.split(chunk):
            sdf, enc = self._sdf_and_encoding(part)
            sdfs.append(sdf)
            if self.cfg.isosurface_deformable_grid:
                offsets.append(0.5 * step * torch.tanh(self.deformation_network(enc)))
        return torch.cat(sdfs, 0), (torch.cat(offsets, 0) if offsets else None)

    # ------------------------------------------------------------------ shape initialisation
    def initialize_shape(self) -> None:
        """Fit the SDF network to `shape_init` by MSE (threestudio's initialize_shape)."""
        from lift3d.geometry.sdf_init import ShapeInitSDF

        if self.cfg.shape_init is None:
            return
        if bool(self.shape_initialized) and not self.cfg.force_shape_init:
            return
        target = ShapeInitSDF(self.cfg.shape_init, self.cfg.shape_init_params, self.cfg.shape_init_mesh_up, self.cfg.shape_init_mesh_front)
        gen = torch.Generator().manual_seed(0)
        lo, hi = self.bbox[0].cpu(), self.bbox[1].cpu()
        n_pool = min(200_000, self.cfg.shape_init_steps * self.cfg.shape_init_batch_size)
        pool = lo + torch.rand(n_pool, 3, generator=gen) * (hi - lo)
        if target.mesh_sdf is not None:  # half the pool near the surface, where precision matters
            near = torch.from_numpy(target.mesh_sdf._tree.data[: n_pool // 2]).float()
            near = near + torch.randn(near.shape, generator=gen) * 0.02 * float(self.cfg.radius)
            pool = torch.cat([pool[: n_pool - near.shape[0]], near.clamp(lo, hi)], 0)
        sdf_gt = target(pool)[:, None]  # [P,1]
        pool, sdf_gt = pool.to(self.bbox.device), sdf_gt.to(self.bbox.device)
        params = [p for n, p in self.named_parameters() if not n.startswith("feature_network")]
        optim = torch.optim.Adam(params, lr=self.cfg.shape_init_lr)
        with torch.enable_grad():
            for _ in range(self.cfg.shape_init_steps):
                idx = torch.randint(0, pool.shape[0], (self.cfg.shape_init_batch_size,), generator=gen).to(pool.device)
                loss = F.mse_loss(self.forward_field(pool[idx]), sdf_gt[idx])
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
        self.shape_initialized.fill_(True)
        log.info("implicit-sdf: fitted shape_init=%s (final MSE %.3g)", self.cfg.shape_init, float(loss.detach()))

    def update_step(self, epoch: int, global_step: int) -> None:
        if not self.training or self.cfg.shape_init is None:
            return
        if self.cfg.force_shape_init and global_step == 0 and not self._forced:  # a fresh run, not a resumed one
            self._forced = True
            self.initialize_shape()
        elif not bool(self.shape_initialized):
            self.initialize_shape()

    # ------------------------------------------------------------------ stage chaining
    @classmethod
    def create_from(cls, other: BaseGeometry, cfg: Any = None, copy_net: bool = False, **kwargs: Any) -> "ImplicitSDF":
        """From another implicit-sdf: the SDF (encoding, sdf network, deformation network) is
        copied; the feature network too with `copy_net`, else it starts fresh."""
        if not isinstance(other, ImplicitSDF):
            raise ConfigError(f"cannot convert a {type(other).__name__} geometry into implicit-sdf.")
        instance = cls(cfg)
        state = {k: v for k, v in other.state_dict().items() if copy_net or not k.startswith("feature_network.")}
        try:
            instance.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot convert implicit-sdf → implicit-sdf: the network configs differ ({str(exc).splitlines()[0]}). "
                f"Keep pos_encoding_config / mlp_network_config as in the previous stage."
            ) from None
        instance.shape_initialized.fill_(True)
        return instance
