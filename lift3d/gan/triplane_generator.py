"""`triplane-generator`: EG3D's tri-plane 3D-aware generator (arXiv 2112.07945 §4).

    z [B,z_dim], c_cond [B,25] --mapping--> ws [B,num_ws,w_dim]
    ws --synthesis (StyleGAN2, modulated convs)--> planes [B,3,C,R,R] (xy, xz, yz)
    rays of c_render [B,25] (lift3d.gan.camera_label), `samples_per_ray` stratified samples in
    [ray_start, ray_end] --tri-plane features, decoder MLP--> density σ = softplus(raw + density_bias),
    colour features [F] --lift3d.ops.volume_rendering--> feature image [B,F,r,r]
    (first 3 channels: raw RGB, composited on `background`) --optional super-resolution--> image.

Every render of one latent reads the same planes through the same decoder, so the object is the same
from every camera by construction (the camera label conditions only w, and only through the
mapping network; `condition_on_camera: false` removes even that).

Parameter names follow EG3D's `TriPlaneGenerator` so published checkpoints could be converted:
`backbone.mapping.{embed,fc<i>,w_avg}`, `backbone.synthesis.b<res>.{const,conv0,conv1,torgb}.{affine,weight,bias}`,
`decoder.net.{0,2}.{weight,bias}`, `superresolution.block<i>.{conv0,conv1,torgb}`. Not in EG3D's layout:
EG3D's second (importance) sampling pass, noise buffers and FIR filters are absent (docs/gan.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.gan.camera_label import LABEL_DIM, rays_from_label
from lift3d.gan.mapping_network import MappingNetwork
from lift3d.gan.superresolution import SuperResolution
from lift3d.gan.triplane_decoder import TriPlaneDecoder, sample_triplane
from lift3d.gan.triplane_synthesis import TriPlaneSynthesis
from lift3d.ops.volume_rendering import accumulate_along_rays, render_weight_from_density
from lift3d.registry import register
from lift3d.utils.base import BaseModule


def _power_of_two(n: int) -> bool:
    return n >= 4 and (n & (n - 1)) == 0


class TriPlaneBackbone(nn.Module):
    """mapping + synthesis (EG3D's `backbone`)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.synthesis = TriPlaneSynthesis(cfg.w_dim, cfg.plane_resolution, cfg.plane_channels, cfg.channel_base,
                                           cfg.channel_max)
        self.mapping = MappingNetwork(cfg.z_dim, LABEL_DIM if cfg.condition_on_camera else 0, cfg.w_dim,
                                      self.synthesis.num_ws + 1, cfg.mapping_layers)


@register("triplane-generator")
class TriPlaneGenerator(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        z_dim: int = 512
        w_dim: int = 512
        mapping_layers: int = 8
        condition_on_camera: bool = True  # EG3D's generator pose conditioning (through the mapping network)
        plane_resolution: int = 256
        plane_channels: int = 32
        channel_base: int = 32768
        channel_max: int = 512
        decoder_hidden: int = 64
        decoder_features: int = 32  # colour features per sample; the first 3 are RGB
        neural_rendering_resolution: int = 64
        image_resolution: int = 128  # > neural_rendering_resolution: 2D super-resolution
        superresolution_channels: int = 128
        samples_per_ray: int = 48
        ray_start: float = 2.25
        ray_end: float = 3.3
        box_warp: float = 1.0  # side of the cube the planes span, centred at the origin
        density_bias: float = -1.0  # σ = softplus(raw + density_bias) (EG3D: softplus(raw - 1))
        background: float = 1.0  # colour behind the object, in [0, 1] (1 = white)

    @classmethod
    def validate_config(cls, cfg: Any, path: str) -> None:
        for key in ("plane_resolution", "neural_rendering_resolution", "image_resolution"):
            if not _power_of_two(int(cfg[key])):
                raise ConfigError(f"{path}.{key} = {cfg[key]} must be a power of two >= 4 (e.g. 32, 64, 128).")
        if cfg.image_resolution < cfg.neural_rendering_resolution:
            raise ConfigError(
                f"{path}.image_resolution = {cfg.image_resolution} is below neural_rendering_resolution = "
                f"{cfg.neural_rendering_resolution}: set it equal (no super-resolution) or larger."
            )
        if cfg.decoder_features < 3:
            raise ConfigError(f"{path}.decoder_features = {cfg.decoder_features}: need at least 3 (RGB).")
        if not 0 < cfg.ray_start < cfg.ray_end:
            raise ConfigError(f"{path}.ray_start/ray_end = {cfg.ray_start}/{cfg.ray_end}: need 0 < ray_start < ray_end.")
        for key in ("z_dim", "w_dim", "plane_channels", "samples_per_ray", "decoder_hidden", "mapping_layers"):
            if cfg[key] < 1:
                raise ConfigError(f"{path}.{key} = {cfg[key]} must be >= 1.")

    def configure(self) -> None:
        cfg = self.cfg
        type(self).validate_config(cfg, "generator")
        self.backbone = TriPlaneBackbone(cfg)
        self.decoder = TriPlaneDecoder(cfg.plane_channels, cfg.decoder_hidden, cfg.decoder_features)
        self.superresolution: Optional[SuperResolution] = None
        if cfg.image_resolution > cfg.neural_rendering_resolution:
            self.superresolution = SuperResolution(cfg.decoder_features, cfg.superresolution_channels, cfg.w_dim,
                                                   cfg.neural_rendering_resolution, cfg.image_resolution)

    # ------------------------------------------------------------------ pieces
    @property
    def z_dim(self) -> int:
        return self.cfg.z_dim

    def mapping(self, z: Tensor, c: Tensor, truncation_psi: float = 1.0, update_w_avg: bool = False) -> Tensor:
        """z [B,z_dim], c [B,25] -> ws [B,num_ws,w_dim] (c ignored without camera conditioning)."""
        return self.backbone.mapping(z, c if self.cfg.condition_on_camera else None, truncation_psi, update_w_avg)

    def planes(self, ws: Tensor) -> Tensor:
        """ws [B,num_ws,w_dim] -> planes [B,3,C,R,R]."""
        return self.backbone.synthesis(ws)

    def query(self, planes: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        """planes [B,3,C,R,R], points [B,P,3] -> (density σ [B,P,1] ≥ 0, colour features [B,P,F])."""
        raw, colour = self.decoder(sample_triplane(planes, points, self.cfg.box_warp))
        return F.softplus(raw + self.cfg.density_bias), colour

    def render_planes(self, planes: Tensor, c: Tensor, perturb: bool = False) -> dict[str, Tensor]:
        """Volume-render planes [B,3,C,R,R] from cameras c [B,25] at the neural rendering resolution r.

        Returns feature_image [B,F,r,r] (channels 0..2: RGB in [0,1] composited on `background`),
        mask [B,1,r,r] (opacity), depth [B,1,r,r] (expected ray distance, `ray_end` where empty)."""
        cfg, b, r, n = self.cfg, planes.shape[0], self.cfg.neural_rendering_resolution, self.cfg.samples_per_ray
        origins, dirs = rays_from_label(c, r)  # [B,r²,3] each
        n_rays = b * r * r
        delta = (cfg.ray_end - cfg.ray_start) / n
        bins = cfg.ray_start + delta * torch.arange(n, device=c.device, dtype=c.dtype)  # [n] bin starts
        jitter = torch.rand(b, r * r, n, device=c.device, dtype=c.dtype) if perturb else torch.full(
            (b, r * r, n), 0.5, device=c.device, dtype=c.dtype)
        t_mid = bins + delta * jitter  # [B,r²,n] stratified samples, one per bin
        points = origins[:, :, None, :] + dirs[:, :, None, :] * t_mid[..., None]  # [B,r²,n,3]
        sigma, colour = self.query(planes, points.reshape(b, -1, 3))  # [B,r²n,1], [B,r²n,F]
        t_starts = bins.expand(b, r * r, n).reshape(-1)  # [S] packed, sorted by ray
        ray_indices = torch.arange(n_rays, device=c.device).repeat_interleave(n)  # [S]
        weights, _, _ = render_weight_from_density(t_starts, t_starts + delta, sigma.reshape(-1), ray_indices, n_rays)
        features = accumulate_along_rays(weights, colour.reshape(-1, colour.shape[-1]), ray_indices, n_rays)  # [n_rays,F]
        opacity = accumulate_along_rays(weights, None, ray_indices, n_rays)  # [n_rays,1]
        depth = accumulate_along_rays(weights, t_mid.reshape(-1), ray_indices, n_rays) + (1 - opacity) * cfg.ray_end
        rgb = features[:, :3] + (1.0 - opacity) * cfg.background
        features = torch.cat([rgb, features[:, 3:]], dim=1)

        def image(x: Tensor) -> Tensor:  # [n_rays,K] -> [B,K,r,r]
            return x.reshape(b, r, r, -1).permute(0, 3, 1, 2).contiguous()

        return {"feature_image": image(features), "mask": image(opacity), "depth": image(depth)}

    # ------------------------------------------------------------------ the whole generator
    def synthesis(self, ws: Tensor, c: Tensor, perturb: bool = False) -> dict[str, Tensor]:
        """ws [B,num_ws,w_dim], c [B,25] (render camera) -> image [B,3,H,W] and image_raw [B,3,r,r] in
        [-1,1], image_mask / image_depth [B,1,r,r], planes [B,3,C,R,R]."""
        planes = self.planes(ws)
        out = self.render_planes(planes, c, perturb)
        raw = out["feature_image"][:, :3] * 2.0 - 1.0  # [B,3,r,r] in [-1,1]
        if self.superresolution is not None:
            sr_input = torch.cat([raw, out["feature_image"][:, 3:]], dim=1)
            image = self.superresolution(sr_input, ws[:, -1])
        else:
            image = raw
        return {"image": image, "image_raw": raw, "image_mask": out["mask"], "image_depth": out["depth"],
                "planes": planes}

    def forward(self, z: Tensor, c: Tensor, c_cond: Optional[Tensor] = None, truncation_psi: float = 1.0,
                perturb: bool = False, update_w_avg: bool = False) -> dict[str, Tensor]:
        """z [B,z_dim]; c [B,25] the camera rendered; c_cond [B,25] the camera w is conditioned on
        (default c; EG3D swaps it for a random one during training)."""
        ws = self.mapping(z, c if c_cond is None else c_cond, truncation_psi, update_w_avg)
        out = self.synthesis(ws, c, perturb)
        out["ws"] = ws
        return out
