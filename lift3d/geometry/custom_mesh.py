"""`custom-mesh`: a fixed triangle mesh read from a file, plus a hash-grid texture field
(threestudio's CustomMesh: texture a given mesh).

`shape_init: mesh:<path>` names the file (OBJ, PLY, GLB, ... via `lift3d.ops.mesh_io`);
`shape_init_params` = null keeps the coordinates as stored, a number centres the mesh and scales
its largest |coordinate| to it; `shape_init_mesh_up` / `_front` name the mesh axes that become
world +z / +x. The mesh is kept in the checkpoint (buffers), so a later stage or --export does not
depend on the file staying unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lift3d.errors import ConfigError
from lift3d.geometry.base import BaseExplicitGeometry
from lift3d.geometry.implicit_volume import default_hash_grid, default_mlp
from lift3d.mesh import Mesh
from lift3d.networks.encodings import get_encoding
from lift3d.networks.mlp import get_mlp
from lift3d.registry import register


@register("custom-mesh")
class CustomMesh(BaseExplicitGeometry):
    @dataclass
    class Config(BaseExplicitGeometry.Config):
        n_input_dims: int = 3
        n_feature_dims: int = 3
        pos_encoding_config: dict = field(default_factory=default_hash_grid)
        mlp_network_config: dict = field(default_factory=default_mlp)
        shape_init: str = ""  # mesh:<path>
        shape_init_params: Any = None
        shape_init_mesh_up: str = "+z"
        shape_init_mesh_front: str = "+x"

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.geometry") -> None:
        from lift3d.geometry.sdf_init import validate_shape_init

        if not str(cfg.shape_init).startswith("mesh:"):
            raise ConfigError(
                f"{path}.shape_init '{cfg.shape_init}': custom-mesh needs mesh:<path to an OBJ/PLY/GLB file>."
            )
        validate_shape_init(cfg.shape_init, cfg.shape_init_params, cfg.shape_init_mesh_up, cfg.shape_init_mesh_front, path)

    def configure(self) -> None:
        from lift3d.geometry.sdf_init import load_init_mesh

        super().configure()
        self.validate_config(self.cfg)
        scale = None if self.cfg.shape_init_params is None else float(self.cfg.shape_init_params)
        v, f = load_init_mesh(self.cfg.shape_init[len("mesh:"):], scale, self.cfg.shape_init_mesh_up, self.cfg.shape_init_mesh_front)
        self.register_buffer("v_pos", torch.from_numpy(v))  # [V,3]
        self.register_buffer("t_pos_idx", torch.from_numpy(f))  # [F,3]
        self.encoding = get_encoding(self.cfg.n_input_dims, self.cfg.pos_encoding_config)
        self.feature_network = get_mlp(self.encoding.n_output_dims, self.cfg.n_feature_dims, self.cfg.mlp_network_config)
        self._mesh = None

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        # the stored mesh may differ in size from the file's (it is the checkpoint's that counts)
        for name in ("v_pos", "t_pos_idx"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        self._mesh = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def isosurface(self) -> Mesh:
        if self._mesh is None or self._mesh.v_pos.device != self.v_pos.device:
            self._mesh = Mesh(self.v_pos, self.t_pos_idx)
        return self._mesh

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> dict[str, torch.Tensor]:
        enc = self.encoding(self.normalize_points(points).reshape(-1, self.cfg.n_input_dims))
        return {"features": self.feature_network(enc).reshape(*points.shape[:-1], self.cfg.n_feature_dims)}

    def export(self, points: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        return self(points)
