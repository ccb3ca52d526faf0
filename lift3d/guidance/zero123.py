"""`zero123-guidance` / `stable-zero123-guidance`: score distillation with Zero-1-to-3 (image-to-3D).

Zero-1-to-3 predicts the noise of a novel view of a reference image at a relative camera
(docs/methods/usd.md §2, extern/zero123):
  - UNet input  = concat(z_t, reference latent)   (8 channels; reference latent = VAE mode, unscaled)
  - context     = Linear(concat(CLIP image embedding of the reference, T))       [B,1,D]
  - T           = [Δpolar, sin Δazimuth, cos Δazimuth, Δradius]   (zero123-guidance)
                  [Δpolar, sin Δazimuth, cos Δazimuth, polar of the reference]   (stable-zero123-guidance)
    relative to the reference view (`cond_elevation_deg`, `cond_azimuth_deg`, `cond_camera_distance`,
    normally interpolated from data.default_*), one T per sample of the batch.
  - unconditional = zero reference latent and zero context (classifier-free guidance against the
    zero image / zero pose), computed in the same UNet call: eps = eps_u + s (eps_c - eps_u).
The render is resized to `resolution`² (native 256), encoded (x 0.18215), and the SDS step of
lift3d.guidance.sds gives `loss_sds`.

The reference image is `cond_image_path` (an RGBA image, composited on white as the model was
trained; the configs set it to "${data.image_path}"), checked in `validate_config` with the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from lift3d.data.image_io import load_rgba, read_rgba
from lift3d.guidance.diffusion_loading import (
    ZERO123_FILES,
    FrozenModels,
    default_device,
    freeze,
    resolve_model,
    weights_dtype,
)
from lift3d.guidance.sds import ScoreDistillationGuidance, classifier_free_guidance, half_precision_mode, resize_nchw
from lift3d.registry import register

KEY = "system.guidance"


@register("zero123-guidance")
class Zero123Guidance(ScoreDistillationGuidance):
    @dataclass
    class Config(ScoreDistillationGuidance.Config):
        pretrained_model_name_or_path: str = "bennyguo/zero123-xl-diffusers"
        guidance_scale: float = 3.0
        cond_image_path: str = ""  # the reference RGBA image; configs use "${data.image_path}"
        cond_elevation_deg: float = 0.0  # the reference camera; configs use "${data.default_*}"
        cond_azimuth_deg: float = 0.0
        cond_camera_distance: float = 1.2
        cond_background: Optional[list] = None  # RGB the reference is composited on; null: white [1, 1, 1]

    camera_variant = "zero123"  # extern.zero123.camera.relative_camera_embedding variant
    WHAT = f"Zero-1-to-3 for {KEY}.pretrained_model_name_or_path"

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        super().validate_config(cfg)
        read_rgba(cfg.cond_image_path, key=f"{KEY}.cond_image_path")
        if cfg.cond_background is not None and len(cfg.cond_background) != 3:
            from lift3d.errors import ConfigError

            raise ConfigError(f"{KEY}.cond_background = {list(cfg.cond_background)}: give an RGB triple in [0, 1] or null.")
        resolve_model(cfg.pretrained_model_name_or_path, cls.WHAT, ZERO123_FILES)

    def configure(self) -> None:
        from extern.zero123.pipeline import Zero123Pipeline

        self.validate_config(self.cfg)
        self.model_path = resolve_model(self.cfg.pretrained_model_name_or_path, self.WHAT, ZERO123_FILES)
        self.precision_mode = half_precision_mode(self.cfg.half_precision_weights)
        self.device = default_device()
        self.weights_dtype = weights_dtype(self.precision_mode, self.device)
        pipe = Zero123Pipeline.from_pretrained(self.model_path)  # cast below (see stable_diffusion.py)
        pipe.set_progress_bar_config(disable=True)
        for name in ("unet", "vae", "image_encoder", "clip_camera_projection"):
            freeze(getattr(pipe, name))
        # a DiffusionPipeline is not an nn.Module: holding it keeps the models out of the module tree
        self.models = FrozenModels(
            pipe=pipe, unet=pipe.unet, vae=pipe.vae, image_encoder=pipe.image_encoder,
            clip_camera_projection=pipe.clip_camera_projection,
        )
        self.models.apply_memory_options(self.cfg.enable_attention_slicing, self.cfg.enable_channels_last)
        self.models.to(self.device, self.weights_dtype)
        self.set_noise_schedule(pipe.scheduler.alphas_cumprod)
        self.scaling_factor = float(pipe.vae.config.scaling_factor)
        vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self.resolution = int(self.cfg.resolution or pipe.unet.config.sample_size * vae_factor)
        self.latent_resolution = self.resolution // vae_factor
        self.prepare_reference()

    @property
    def pipe(self) -> Any:
        return self.models.pipe

    def to(self, device: torch.device | str) -> "Zero123Guidance":
        device = torch.device(device)
        dtype = weights_dtype(self.precision_mode, device)
        self.models.to(device, dtype)
        self.device, self.weights_dtype = device, dtype
        self.reference_embedding = self.reference_embedding.to(device)
        self.reference_latents = self.reference_latents.to(device)
        return self

    # ------------------------------------------------------------------ reference view
    def reference_image(self) -> Tensor:
        """The reference [1,3,res,res] in [0,1], composited on `cond_background` (white)."""
        rgb, mask = load_rgba(self.cfg.cond_image_path, self.resolution, self.resolution, key=f"{KEY}.cond_image_path")
        background = torch.tensor(self.cfg.cond_background or [1.0, 1.0, 1.0], dtype=torch.float32)
        image = rgb * mask + background * (1.0 - mask)  # [H,W,3]
        return image.permute(2, 0, 1)[None].contiguous()

    @torch.no_grad()
    def prepare_reference(self) -> None:
        image = self.reference_image().to(self.device)
        self.reference_embedding = self.pipe.encode_image_embedding(image).float()  # [1,1,D]
        self.reference_latents = self.pipe.encode_image_latents(image).float()  # [1,4,h,w] unscaled

    def camera_embedding(self, batch: dict[str, Any]) -> Tensor:
        """T [B,4] of each camera relative to the reference view (see the module docstring)."""
        from extern.zero123.camera import relative_camera_embedding

        elevation = torch.as_tensor(batch["elevation"]).float()
        return relative_camera_embedding(
            elevation, torch.as_tensor(batch["azimuth"]).float(),
            torch.as_tensor(batch["camera_distances"]).float(),
            self.cfg.cond_elevation_deg, self.cfg.cond_azimuth_deg, self.cfg.cond_camera_distance,
            variant=self.camera_variant,
        ).to(self.device)

    # ------------------------------------------------------------------ model calls
    def encode_images(self, images: Tensor) -> Tensor:
        """images [B,3,H,W] in [0,1] -> scaled latents [B,4,h,w] (differentiable)."""
        x = (images * 2.0 - 1.0).to(self.weights_dtype)
        return (self.models.vae.encode(x).latent_dist.sample() * self.scaling_factor).to(images.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        x = self.models.vae.decode((latents / self.scaling_factor).to(self.weights_dtype)).sample
        return (x.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)

    def conditioning(self, camera: Tensor) -> tuple[Tensor, Tensor]:
        """(reference latents [B,4,h,w], context [B,1,D]) of the conditional branch for cameras [B,4]."""
        B = camera.shape[0]
        context = self.pipe.conditioning(self.reference_embedding.to(self.weights_dtype), camera)  # [B,1,D]
        return self.reference_latents.expand(B, -1, -1, -1), context

    def noise_predictions(
        self, z_t: Tensor, t: Tensor, camera: Tensor, with_uncond: bool = True
    ) -> tuple[Tensor, Optional[Tensor]]:
        """(eps_cond, eps_uncond or None) in one UNet call: conditional = (reference, pose),
        unconditional = (zero image latent, zero context), batched [cond; uncond]."""
        image_latents, context = self.conditioning(camera)
        if not with_uncond:
            return self.pipe.predict_noise(z_t, t, image_latents, context), None
        eps = self.pipe.predict_noise(
            torch.cat([z_t, z_t]), torch.cat([t, t]),
            torch.cat([image_latents, torch.zeros_like(image_latents)]),
            torch.cat([context, torch.zeros_like(context)]),
        )
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_cond, eps_uncond

    def guided_noise(self, z_t: Tensor, t: Tensor, camera: Tensor) -> Tensor:
        """eps_u + s (eps_c - eps_u) of Zero-1-to-3's own classifier-free guidance."""
        eps_cond, eps_uncond = self.noise_predictions(z_t, t, camera)
        return classifier_free_guidance(eps_uncond, eps_cond, self.cfg.guidance_scale)

    # ------------------------------------------------------------------ SDS
    def sds_from_latents(
        self, latents: Tensor, camera: Tensor, t: Optional[Tensor] = None, noise: Optional[Tensor] = None,
        render: Optional[Tensor] = None,
    ) -> dict[str, Any]:
        """The SDS step on latents [B,4,h,w] for relative cameras [B,4] (see `camera_embedding`)."""
        camera = camera.to(latents.device)
        if camera.shape[0] != latents.shape[0]:
            camera = camera.expand(latents.shape[0], -1)
        return self.distill(
            latents, lambda z_t, tt, _noise: self.guided_noise(z_t, tt, camera),
            t=t, noise=noise, decode=self.decode_latents, render=render,
        )

    def __call__(
        self,
        image: Tensor,
        batch: dict[str, Any],
        prompt_utils: Any = None,
        render_out: Optional[dict[str, Tensor]] = None,
        t: Optional[Tensor] = None,
        noise: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        x = resize_nchw(image.permute(0, 3, 1, 2)[:, :3], self.resolution)
        latents = self.encode_images(x)  # [B,4,h,w]
        return self.sds_from_latents(latents, self.camera_embedding(batch), t=t, noise=noise, render=image)


@register("stable-zero123-guidance")
class StableZero123Guidance(Zero123Guidance):
    """Stable Zero123: the 4th camera entry is the reference view's polar angle instead of Δradius."""

    @dataclass
    class Config(Zero123Guidance.Config):
        pretrained_model_name_or_path: str = "ashawkey/stable-zero123-diffusers"

    camera_variant = "stable-zero123"
    WHAT = f"Stable Zero123 for {KEY}.pretrained_model_name_or_path"


__all__ = ["Zero123Guidance", "StableZero123Guidance"]
