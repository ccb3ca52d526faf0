"""`gan-volume-renderer`: Control4D's GAN-based super-resolution renderer, static variant
(Shao et al., arXiv 2305.20082 v1 §3: the 4D GAN, multi-level guidance; threestudio's renderer of the same
name; docs/methods/control4d.md §"GAN renderer").

A base volume renderer (`base_renderer_type`, e.g. nerf-volume-renderer) renders the view at 1/s of its
size (s = 2^(len(channel_mult)-1) = 4: rays bilinearly resized) with a material of 3 + 2z channels
(hybrid-rgb-latent-material): colour `lr_rgb` [B,3,H/s,W/s] and the parameters of a diagonal Gaussian over
a latent code z_map [B,z,H/s,W/s]. The generator (lift3d.gan.latent_sr_generator) turns [lr_rgb; z_map] and
a global appearance code g (lift3d.gan.global_encoder) into `comp_gan_rgb` [B,H,W,3].

Training with a target view (`gt_rgb` in the batch and `multi_level_guidance: true`, set by
control4d-multiview-system) draws a generator level per call, uniformly in {0, 1, 2}:
  level 0: z_map ~ the render's posterior, g from lr_rgb (what evaluation does, with the posterior mean);
  level 1: the same z_map, g from the target image;
  level 2: g from the target, z_map ~ the local encoder's posterior of the target (`posterior` is then that one);
and also renders the full-resolution rays of one pixel in `sample_interval`² (a random offset):
`comp_int_rgb` [B,H/k,W/k,3] with the target's pixels `comp_gt_rgb` — the render's own L1 supervision.

Outputs: the base renderer's outputs at H/s (opacity, comp_normal, depth, weights ...), `comp_rgb`
(colour upsampled to H×W), `comp_lr_rgb` [B,H/s,W/s,3], `comp_gan_rgb` [B,H,W,3], `posterior`,
`generator_level`, and in training with a target `comp_int_rgb`, `comp_gt_rgb`.

The generator, encoders and discriminator (`generator`, `local_encoder`, `global_encoder`, `discriminator`,
the names the config's optimizer groups use) stay in training mode whatever the system's mode, as in
threestudio: their batch norms use the batch's statistics at evaluation too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from lift3d.config import parse_structured
from lift3d.errors import ConfigError
from lift3d.gan.diagonal_gaussian import DiagonalGaussian
from lift3d.gan.global_encoder import GlobalEncoder
from lift3d.gan.latent_sr_generator import LatentSRGenerator, LocalEncoder
from lift3d.gan.patch_discriminator import PatchDiscriminator
from lift3d.registry import find, register
from lift3d.renderers.base import BaseRenderer

GAN_MODULES = ("generator", "local_encoder", "global_encoder", "discriminator")


@register("gan-volume-renderer")
class GANVolumeRenderer(BaseRenderer):
    @dataclass
    class Config(BaseRenderer.Config):
        base_renderer_type: str = "nerf-volume-renderer"
        base_renderer: dict = field(default_factory=dict)
        z_channels: int = 4  # latent code channels; the material gives 3 + 2 z_channels
        channel_mult: list = field(default_factory=lambda: [1, 2, 4])  # levels: upsampling 2^(len-1)
        generator_channels: int = 64
        local_encoder_channels: int = 32
        res_blocks: int = 1
        global_code_dims: int = 64
        global_encoder_size: int = 224
        discriminator_channels: int = 64
        discriminator_layers: int = 3
        sample_interval: int = 8  # full-resolution rays: one pixel in sample_interval² per training call

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.renderer") -> None:
        base = find(cfg.base_renderer_type)
        if not issubclass(base, BaseRenderer) or base is cls:
            raise ConfigError(f"{path}.base_renderer_type = '{cfg.base_renderer_type}': name a volume renderer "
                              f"such as nerf-volume-renderer.")
        base_path = f"{path}.base_renderer"
        base.validate_config(parse_structured(base.Config, cfg.base_renderer, base_path,
                                              f"renderer '{cfg.base_renderer_type}'"), base_path)
        if len(cfg.channel_mult) < 1 or cfg.z_channels < 1 or cfg.sample_interval < 1 or cfg.res_blocks < 1:
            raise ConfigError(f"{path}: channel_mult needs one level or more; z_channels, res_blocks and "
                              f"sample_interval must be >= 1.")

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        cfg = self.cfg
        self.base_renderer = find(cfg.base_renderer_type)(cfg.base_renderer, geometry=geometry, material=material,
                                                          background=background)
        mult = tuple(int(m) for m in cfg.channel_mult)
        self.generator = LatentSRGenerator(3 + cfg.z_channels, cfg.generator_channels, mult, cfg.res_blocks,
                                           cfg.global_code_dims)
        self.local_encoder = LocalEncoder(3, cfg.local_encoder_channels, mult, cfg.res_blocks, cfg.z_channels)
        self.global_encoder = GlobalEncoder(cfg.global_code_dims, cfg.global_encoder_size)
        self.discriminator = PatchDiscriminator(3, cfg.discriminator_channels, cfg.discriminator_layers)
        self.scale = 2 ** (len(mult) - 1)

    def train(self, mode: bool = True) -> "GANVolumeRenderer":
        """Only the base renderer follows the mode (see the module docstring)."""
        self.training = mode
        self.base_renderer.train(mode)
        for name in GAN_MODULES:
            getattr(self, name).train(True)
        return self

    def update_step(self, epoch: int, global_step: int) -> None:
        pass  # the base renderer is a child module: do_update_step reaches it

    def check_material(self, comp_rgb: torch.Tensor) -> None:
        want = 3 + 2 * self.cfg.z_channels
        if comp_rgb.shape[-1] != want:
            raise ConfigError(
                f"gan-volume-renderer needs {want} rendered channels (RGB + mean and log-variance of {self.cfg.z_channels} "
                f"latent channels), got {comp_rgb.shape[-1]}: set system.geometry.n_feature_dims, "
                f"system.material.n_output_dims and system.background.n_output_dims to {want} "
                f"(material hybrid-rgb-latent-material).")

    def forward(
        self,
        rays_o: torch.Tensor,  # [B,H,W,3]
        rays_d: torch.Tensor,  # [B,H,W,3]
        light_positions: torch.Tensor,  # [B,3]
        bg_color: Optional[torch.Tensor] = None,
        gt_rgb: Optional[torch.Tensor] = None,  # [B,H,W,3] the target view (training)
        multi_level_guidance: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        B, H, W, _ = rays_o.shape
        s = self.scale
        if H % s or W % s:
            raise ValueError(f"gan-volume-renderer renders at 1/{s} of the image: {H}x{W} is not divisible by {s}")
        targeted = gt_rgb is not None and multi_level_guidance
        extra: dict[str, Any] = {}
        level = 0
        if targeted:
            level = int(torch.randint(0, 3, (1,)))
            k = self.cfg.sample_interval
            dy, dx = int(torch.randint(0, k, (1,))), int(torch.randint(0, k, (1,)))
            sparse = self.base_renderer(rays_o[:, dy::k, dx::k], rays_d[:, dy::k, dx::k], light_positions, bg_color,
                                        **kwargs)
            extra = {"comp_int_rgb": sparse["comp_rgb"][..., :3], "comp_gt_rgb": gt_rgb[:, dy::k, dx::k]}

        def low(x: torch.Tensor) -> torch.Tensor:  # [B,H,W,3] -> [B,H/s,W/s,3] (bilinear)
            return F.interpolate(x.permute(0, 3, 1, 2), size=(H // s, W // s), mode="bilinear",
                                 align_corners=False).permute(0, 2, 3, 1)

        out = self.base_renderer(low(rays_o), low(rays_d), light_positions, bg_color, **kwargs)
        self.check_material(out["comp_rgb"])
        lr_rgb = out["comp_rgb"][..., :3].permute(0, 3, 1, 2)  # [B,3,H/s,W/s]
        posterior = DiagonalGaussian(out["comp_rgb"][..., 3:].permute(0, 3, 1, 2))
        z_map = posterior.sample() if multi_level_guidance else posterior.mode()
        if level == 0:
            code = self.global_encoder(lr_rgb)
        else:
            target = gt_rgb.permute(0, 3, 1, 2)
            code = self.global_encoder(target)
            if level == 2:
                posterior = DiagonalGaussian(self.local_encoder(target))
                z_map = posterior.sample()
        gan_rgb = self.generator(torch.cat([lr_rgb, z_map], dim=1), code)  # [B,3,H,W]
        if gan_rgb.shape[-2:] != (H, W):
            gan_rgb = F.interpolate(gan_rgb, size=(H, W), mode="bilinear", align_corners=False)
        out.update({
            "comp_lr_rgb": lr_rgb.permute(0, 2, 3, 1),
            "comp_rgb": F.interpolate(lr_rgb, size=(H, W), mode="bilinear", align_corners=False).permute(0, 2, 3, 1),
            "comp_gan_rgb": gan_rgb.permute(0, 2, 3, 1),
            "posterior": posterior,
            "generator_level": level,
            **extra,
        })
        return out


__all__ = ["GAN_MODULES", "GANVolumeRenderer"]
