"""`volume-grid`: a dense voxel grid of density and features, read by trilinear interpolation
(SJC's voxel radiance field, Wang et al., arXiv 2212.00774 §5; docs/methods/sjc.md §3).

The grid [1, 1 + n_feature_dims, G1, G2, G3] covers the cube [-radius, radius]^3 (points are mapped to
[-1, 1]^3 for `grid_sample`, align_corners=True, the grid's last axis along x):

    density(x)  = act(g_0(x) * exp(s) + bias(x))        features(x) = g_1..F(x)

with `density_bias: blob` (threestudio's name of lift3d's blob_magic3d, scale (1 - |x|/std); s is fixed
at 0) or a number (then s is a learned log-scale, as threestudio's). The grid starts at zero.
Normals: finite differences of the density (threestudio's `pred` normals are not supported).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from lift3d.errors import ConfigError
from lift3d.geometry.base import BaseImplicitGeometry
from lift3d.geometry.implicit_volume import ImplicitVolume
from lift3d.networks.mlp import get_activation
from lift3d.registry import register


@register("volume-grid")
class VolumeGrid(ImplicitVolume):
    @dataclass
    class Config(ImplicitVolume.Config):
        grid_size: list = field(default_factory=lambda: [100, 100, 100])
        density_bias: Union[float, str] = "blob"  # blob (= blob_magic3d) | blob_magic3d | blob_dreamfusion | a number
        density_blob_scale: float = 5.0
        density_blob_std: float = 0.5
        # threestudio's volume-grid inherits 0 (every point of a softplus density is inside: no surface);
        # the field's mean finds the grid's surface whatever its density scale (sjc.yaml's bias -1 keeps it < 1)
        isosurface_threshold: Union[float, str] = "auto"

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.geometry") -> None:
        if cfg.normal_type not in ("finite_difference", None):
            raise ConfigError(f"{path}.normal_type '{cfg.normal_type}': volume-grid supports finite_difference or null.")
        if len(cfg.grid_size) != 3 or any(int(g) < 2 for g in cfg.grid_size):
            raise ConfigError(f"{path}.grid_size {list(cfg.grid_size)}: give three sides of at least 2 voxels.")
        bias = cfg.density_bias
        if isinstance(bias, str) and bias not in ("blob", "blob_magic3d", "blob_dreamfusion"):
            raise ConfigError(f"{path}.density_bias '{bias}': use blob, blob_magic3d, blob_dreamfusion or a number.")
        if isinstance(cfg.finite_difference_normal_eps, str):  # progressive follows hash-grid levels: a grid has none
            raise ConfigError(f"{path}.finite_difference_normal_eps = '{cfg.finite_difference_normal_eps}': volume-grid "
                              f"has no hash-grid levels to follow; give a number (e.g. 0.01).")

    def configure(self) -> None:
        BaseImplicitGeometry.configure(self)  # bbox; no hash grid or MLPs
        self.grid = nn.Parameter(torch.zeros(1, self.cfg.n_feature_dims + 1, *[int(g) for g in self.cfg.grid_size]))
        if isinstance(self.cfg.density_bias, str):
            self.register_buffer("density_scale", torch.tensor(0.0))
        else:
            self.density_scale = nn.Parameter(torch.tensor(0.0))
        self.feature_network = nn.Identity()  # ImplicitVolume.forward: features = feature_network(encoding)
        self.density_act = get_activation(self.cfg.density_activation)

    def density_bias(self, points: torch.Tensor) -> torch.Tensor:
        if self.cfg.density_bias == "blob":  # threestudio's volume-grid name of the Magic3D blob
            return self.cfg.density_blob_scale * (1.0 - points.norm(dim=-1, keepdim=True) / self.cfg.density_blob_std)
        return super().density_bias(points)

    def trilinear(self, points: torch.Tensor) -> torch.Tensor:
        """points [N,3] world -> grid values [N, 1 + F]."""
        unit = ((points - self.bbox[0]) / (self.bbox[1] - self.bbox[0])) * 2.0 - 1.0  # [-1,1]^3
        out = F.grid_sample(self.grid, unit.reshape(1, 1, 1, -1, 3).to(self.grid), mode="bilinear", align_corners=True)
        return out.reshape(self.grid.shape[1], -1).T  # [N, 1+F]

    def _density_and_encoding(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values = self.trilinear(points)
        raw = values[:, :1] * torch.exp(self.density_scale) + self.density_bias(points)
        return self.density_act(raw), values[:, 1:]


__all__ = ["VolumeGrid"]
