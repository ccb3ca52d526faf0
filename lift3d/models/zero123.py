"""Zero-1-to-3 and Stable Zero123 as frozen components (Liu et al., arXiv 2303.11328 §3.2; docs/methods/usd.md §2).

Loaded through extern.zero123.Zero123Pipeline (the published zero123-xl-diffusers layout: unet (8 input
channels), vae, image_encoder (CLIP vision), clip_camera_projection, scheduler). A novel view of a
reference image at a relative camera T is predicted as

    eps = UNet(concat(z_t, reference latent), t, context),   context = Linear(concat(CLIP(reference), T))

with the reference latent the VAE mode (unscaled). The unconditional branch of classifier-free
guidance is the zero reference latent with a zero context.

- `reference(image [1,3,H,W])` -> `ReferenceConditioning` (CLIP embedding [1,1,D], latent [1,4,h,w]);
- `camera_embedding(elevation, azimuth, distance, reference camera)` -> T [B,4]:
    Zero123        [Δpolar, sin Δazimuth, cos Δazimuth, Δradius]
    StableZero123  [Δpolar, sin Δazimuth, cos Δazimuth, polar of the reference view]
- `predict_noise(z_t, t, image_latents, context)`; `noise_predictions(z_t, t, reference, camera)`
  gives (eps_cond, eps_uncond) in one UNet call of batch 2N (or eps_cond alone).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from lift3d.models.diffusion import LatentDiffusionModel


@dataclass
class ReferenceConditioning:
    """What Zero-1-to-3 needs of its input view: CLIP embedding [1,1,D] and unscaled VAE latent [1,4,h,w]."""

    embedding: Tensor
    latents: Tensor

    def to(self, device: torch.device | str) -> "ReferenceConditioning":
        return ReferenceConditioning(self.embedding.to(device), self.latents.to(device))


class Zero123(LatentDiffusionModel):
    KIND = "Zero-1-to-3"
    UNET_IN_CHANNELS = 8
    REQUIRED_FILES = (
        "model_index.json", "unet/config.json", "vae/config.json", "image_encoder/config.json",
        "clip_camera_projection/config.json", "scheduler/scheduler_config.json",
    )
    camera_variant = "zero123"  # extern.zero123.camera.relative_camera_embedding variant

    def load_networks(self, path: str) -> dict[str, Any]:
        from extern.zero123.pipeline import Zero123Pipeline

        pipe = Zero123Pipeline.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        # a DiffusionPipeline is not an nn.Module: holding it keeps its networks out of the module tree
        return {"pipe": pipe, "unet": pipe.unet, "vae": pipe.vae, "image_encoder": pipe.image_encoder,
                "clip_camera_projection": pipe.clip_camera_projection}

    def load_alphas_cumprod(self, path: str) -> Tensor:
        return self.pipe.scheduler.alphas_cumprod

    @property
    def pipe(self) -> Any:
        return self.models.pipe

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def reference(self, image: Tensor) -> ReferenceConditioning:
        """image [1,3,H,W] in [0,1] (composited on the background the model was trained with: white)."""
        image = image.to(self.device)
        return ReferenceConditioning(self.pipe.encode_image_embedding(image).float(),  # [1,1,D]
                                     self.pipe.encode_image_latents(image).float())  # [1,4,h,w] unscaled

    def camera_embedding(self, elevation: Tensor, azimuth: Tensor, distance: Tensor, ref_elevation: float,
                         ref_azimuth: float, ref_distance: float) -> Tensor:
        """T [B,4] of cameras (degrees, degrees, radius; [B] each) relative to the reference view."""
        from extern.zero123.camera import relative_camera_embedding

        return relative_camera_embedding(
            torch.as_tensor(elevation).float(), torch.as_tensor(azimuth).float(), torch.as_tensor(distance).float(),
            ref_elevation, ref_azimuth, ref_distance, variant=self.camera_variant,
        ).to(self.device)

    def conditioning(self, reference: ReferenceConditioning, camera: Tensor) -> tuple[Tensor, Tensor]:
        """(reference latents [B,4,h,w], context [B,1,D]) of the conditional branch for cameras T [B,4]."""
        B = camera.shape[0]
        context = self.pipe.conditioning(reference.embedding.to(self.weights_dtype), camera)  # [B,1,D]
        return reference.latents.expand(B, -1, -1, -1), context

    # ------------------------------------------------------------------ the denoiser
    def predict_noise(self, z_t: Tensor, t: Tensor, image_latents: Tensor = None, context: Tensor = None,
                      **conditioning: Any) -> Tensor:
        """eps: UNet(concat(z_t [N,4,h,w], image_latents [N|1,4,h,w]), t [N], context [N,1,D]) -> [N,4,h,w]."""
        return self.pipe.predict_noise(z_t, t, image_latents, context)

    def noise_predictions(self, z_t: Tensor, t: Tensor, reference: ReferenceConditioning, camera: Tensor,
                          with_uncond: bool = True) -> tuple[Tensor, Optional[Tensor]]:
        """(eps_cond, eps_uncond or None) for z_t [B,4,h,w], cameras T [B,4], in one UNet call:
        conditional = (reference, pose), unconditional = (zero image latent, zero context), batched [cond; uncond]."""
        image_latents, context = self.conditioning(reference, camera)
        if not with_uncond:
            return self.predict_noise(z_t, t, image_latents, context), None
        eps = self.predict_noise(
            torch.cat([z_t, z_t]), torch.cat([t, t]),
            torch.cat([image_latents, torch.zeros_like(image_latents)]),
            torch.cat([context, torch.zeros_like(context)]),
        )
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_cond, eps_uncond


class StableZero123(Zero123):
    """Stable Zero123: the 4th camera entry is the reference view's polar angle instead of Δradius."""

    KIND = "Stable Zero123"
    camera_variant = "stable-zero123"


__all__ = ["ReferenceConditioning", "StableZero123", "Zero123"]
