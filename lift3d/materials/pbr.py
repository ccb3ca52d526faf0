"""`pbr-material`: physically based shading with albedo, roughness, metallic and a tangent-space bump
normal under a fixed HDR environment, by split-sum image-based lighting in PyTorch
(`lift3d.materials.split_sum`; threestudio's PBRMaterial, Fantasia3D / X-Dreamer's appearance stage,
docs/methods/xdreamer.md §4).

Features [..., 8] (threestudio's layout), raw network outputs:
    albedo    kd = sigmoid(f[0:3])                                  sRGB-encoded base colour
    metallic  m  = min_metallic + (max_metallic − min_metallic) sigmoid(f[3])
    roughness ρ  = min_roughness + (max_roughness − min_roughness) sigmoid(f[4])
    bump      n_t = normalize(2 sigmoid(f[5:8]) − 1 + (0, 0, 1))     tangent space; f = 0 gives (0, 0, 1)

Shading of a surface point with normal n (the bump-perturbed shading normal), view vector
v = −viewdir and reflection r = 2 (n·v) n − v, in linear colour:

    diffuse  = kd_lin (1 − m) E(n)/π
    specular = Lpre(r, ρ) (F0 A(n·v, ρ) + B(n·v, ρ)),   F0 = lerp(0.04, kd_lin, m)
    rgb      = linear_to_srgb(clamp(diffuse + specular, 0, 1))

The tangent frame of the bump map is built from the shading normal alone (Frisvad 2012,
continuous everywhere but at n = −z): the bump field is a 3D field evaluated at surface points,
so it only needs a frame that varies smoothly with n; the exporter re-expresses the perturbed
normal in the UV tangent frame of the exported mesh (`lift3d.export.pbr_textures`).

The environment (`environment_texture`, a Radiance .hdr, × `environment_scale`) is prefiltered
when the material is built; it is held in non-persistent buffers, so checkpoints stay small.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from lift3d.errors import ConfigError
from lift3d.materials.base import BaseMaterial
from lift3d.materials.split_sum import EnvironmentLight, linear_to_srgb, srgb_to_linear
from lift3d.registry import register
from lift3d.utils.hdr_io import read_hdr

KEY = "system.material"


def tangent_frame(n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal tangent and bitangent [..., 3] for unit normals n [..., 3] (Frisvad 2012).

    t = (1 − x²/(1+z), −xy/(1+z), −x), b = (−xy/(1+z), 1 − y²/(1+z), −y); (t, b, n) is right-handed.
    At n = (0, 0, 1): t = +x, b = +y. Singular only at n = −z (the denominator is clamped there).
    """
    x, y, z = n.unbind(-1)
    a = 1.0 / (1.0 + z).clamp_min(1e-4)
    xy = -x * y * a
    t = torch.stack([1.0 - x * x * a, xy, -x], dim=-1)
    b = torch.stack([xy, 1.0 - y * y * a, -y], dim=-1)
    return t, b


@register("pbr-material")
class PBRMaterial(BaseMaterial):
    @dataclass
    class Config(BaseMaterial.Config):
        environment_texture: str = "load/lights/studio_sky.hdr"
        environment_scale: float = 2.0
        min_metallic: float = 0.0
        max_metallic: float = 0.9
        min_roughness: float = 0.08
        max_roughness: float = 0.9
        use_bump: bool = True
        # split-sum tables: base height of the prefiltered levels (equirect H x 2H), number of
        # roughness levels, irradiance map height, BRDF table size and samples per texel
        environment_resolution: int = 64
        n_roughness_levels: int = 6
        irradiance_resolution: int = 16
        brdf_lut_size: int = 32
        brdf_lut_samples: int = 512
        material_activation: str = "sigmoid"  # accepted for threestudio configs; only sigmoid

    requires_normal = True
    n_features = 8

    @classmethod
    def validate_config(cls, cfg: Any, path: str = KEY) -> None:
        from lift3d.utils.paths import resolve_file

        texture = resolve_file(cfg.environment_texture, f"{path}.environment_texture", "HDR environment map")
        if texture.suffix.lower() != ".hdr":
            raise ConfigError(f"{path}.environment_texture '{cfg.environment_texture}': give a Radiance .hdr file.")
        for lo, hi in (("min_metallic", "max_metallic"), ("min_roughness", "max_roughness")):
            if not 0.0 <= cfg[lo] <= cfg[hi] <= 1.0:
                raise ConfigError(f"{path}.{lo} / {hi} = {cfg[lo]} / {cfg[hi]}: need 0 <= {lo} <= {hi} <= 1.")
        if cfg.environment_scale <= 0:
            raise ConfigError(f"{path}.environment_scale must be > 0, got {cfg.environment_scale}.")
        if cfg.material_activation != "sigmoid":
            raise ConfigError(f"{path}.material_activation '{cfg.material_activation}': only sigmoid is supported.")
        if cfg.n_roughness_levels < 2 or cfg.environment_resolution < 8:
            raise ConfigError(f"{path}.n_roughness_levels must be >= 2 and environment_resolution >= 8.")

    def configure(self) -> None:
        from lift3d.utils.paths import resolve_file

        self.validate_config(self.cfg)
        cfg = self.cfg
        env = torch.from_numpy(read_hdr(resolve_file(cfg.environment_texture, f"{KEY}.environment_texture")))
        self.light = EnvironmentLight(
            env, scale=cfg.environment_scale, base_resolution=cfg.environment_resolution,
            n_levels=cfg.n_roughness_levels, min_roughness=cfg.min_roughness,
            irradiance_resolution=cfg.irradiance_resolution, lut_size=cfg.brdf_lut_size,
            lut_samples=cfg.brdf_lut_samples,
        )

    # ------------------------------------------------------------------ features -> material
    def decode(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """features [..., >=8] -> albedo [...,3] (sRGB), metallic [...,1], roughness [...,1], bump [...,3] (tangent space)."""
        if features.shape[-1] < 8:
            raise ConfigError(
                f"pbr-material needs 8 geometry features (albedo 3, metallic 1, roughness 1, bump 3), got "
                f"{features.shape[-1]}: set system.geometry.n_feature_dims=8."
            )
        cfg = self.cfg
        s = torch.sigmoid(features[..., :8])
        out = {
            "albedo": s[..., 0:3],
            "metallic": cfg.min_metallic + (cfg.max_metallic - cfg.min_metallic) * s[..., 3:4],
            "roughness": cfg.min_roughness + (cfg.max_roughness - cfg.min_roughness) * s[..., 4:5],
        }
        if cfg.use_bump:
            flat = torch.tensor([0.0, 0.0, 1.0], dtype=s.dtype, device=s.device)
            out["bump"] = F.normalize(s[..., 5:8] * 2.0 - 1.0 + flat, dim=-1)
        return out

    def perturbed_normal(self, shading_normal: torch.Tensor, bump: Optional[torch.Tensor]) -> torch.Tensor:
        """World normal [..., 3] from the shading normal and a tangent-space bump normal."""
        n = F.normalize(shading_normal, dim=-1)
        if bump is None:
            return n
        t, b = tangent_frame(n)
        return F.normalize(t * bump[..., 0:1] + b * bump[..., 1:2] + n * bump[..., 2:3], dim=-1)

    def shade(self, albedo, metallic, roughness, normal, viewdirs) -> torch.Tensor:
        """Split-sum shading (module docstring); all [N, C]; returns sRGB [N, 3] in [0, 1]."""
        kd = srgb_to_linear(albedo.clamp(0.0, 1.0))
        v = -F.normalize(viewdirs, dim=-1)
        n_dot_v = (normal * v).sum(-1, keepdim=True)
        # normals facing away from the camera (interpolation, bumps): use the view-facing mirror
        normal = torch.where(n_dot_v < 0, normal - 2.0 * n_dot_v * v, normal)
        n_dot_v = (normal * v).sum(-1, keepdim=True).clamp(1e-4, 1.0)
        reflected = F.normalize(2.0 * n_dot_v * normal - v, dim=-1)
        diffuse = kd * (1.0 - metallic) * self.light.diffuse(normal)
        f0 = 0.04 * (1.0 - metallic) + kd * metallic
        ab = self.light.brdf(n_dot_v[..., 0], roughness[..., 0])  # [N,2]
        specular = self.light.specular_radiance(reflected, roughness[..., 0]) * (f0 * ab[..., 0:1] + ab[..., 1:2])
        return linear_to_srgb((diffuse + specular).clamp(0.0, 1.0))

    def forward(
        self,
        features: torch.Tensor,  # [..., 8]
        viewdirs: torch.Tensor,  # [..., 3] camera -> point
        shading_normal: torch.Tensor,  # [..., 3]
        **kwargs: Any,
    ) -> torch.Tensor:
        shape = features.shape[:-1]
        mat = self.decode(features.reshape(-1, features.shape[-1]))
        normal = self.perturbed_normal(shading_normal.reshape(-1, 3).to(features), mat.get("bump"))
        rgb = self.shade(mat["albedo"], mat["metallic"], mat["roughness"], normal, viewdirs.reshape(-1, 3).to(features))
        return rgb.reshape(*shape, 3)

    def export(self, features: torch.Tensor, shading_normal: Optional[torch.Tensor] = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """albedo [...,3], roughness [...,1], metallic [...,1], bump [...,3] (tangent space, when use_bump)
        and, given the shading normal, the bump-perturbed world normal "normal" [...,3]."""
        mat = self.decode(features)
        out = {"albedo": mat["albedo"].clamp(0.0, 1.0), "roughness": mat["roughness"], "metallic": mat["metallic"]}
        if "bump" in mat:
            out["bump"] = mat["bump"]
        if shading_normal is not None:
            out["normal"] = self.perturbed_normal(shading_normal, mat.get("bump"))
        return out
