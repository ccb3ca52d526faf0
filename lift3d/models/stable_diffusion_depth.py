"""Depth-conditioned Stable Diffusion 2 (stabilityai/stable-diffusion-2-depth) as a frozen component.

The UNet takes 5 input channels: concat(z_t, depth), the depth map at latent size normalised to
[-1, 1] per sample (`prepare_depth`), as diffusers' StableDiffusionDepth2ImgPipeline feeds it. Its
published folder also holds a DPT depth estimator for photos; lift3d conditions on depth it renders.

    predict_noise(z_t [N,4,h,w], t [N], text_embeddings [N,77,D], depth=[N,1,h,w]) -> eps [N,4,h,w]
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.models.stable_diffusion import StableDiffusion


class StableDiffusionDepth(StableDiffusion):
    """Depth-conditioned SD 2 (stabilityai/stable-diffusion-2-depth): UNet input concat(z_t, depth) [N,5,h,w]."""

    KIND = "Stable Diffusion 2 depth"
    UNET_IN_CHANNELS = 5

    @staticmethod
    def prepare_depth(depth: Tensor, size: tuple[int, int]) -> Tensor:
        """depth [N,1,H,W] (any units; larger = farther or nearer, only the order matters per sample) ->
        [N,1,h,w] at latent size, min-max normalised to [-1, 1] per sample (as the depth2img pipeline)."""
        d = F.interpolate(depth.float(), size=size, mode="bicubic", align_corners=False)
        lo = d.amin(dim=(1, 2, 3), keepdim=True)
        hi = d.amax(dim=(1, 2, 3), keepdim=True)
        return 2.0 * (d - lo) / (hi - lo).clamp_min(1e-8) - 1.0

    def unet_input(self, z_t: Tensor, depth: Optional[Tensor] = None, **conditioning: Any) -> Tensor:
        """concat(z_t [N,4,h,w], depth [N|1,1,h,w] already at latent size, e.g. from `prepare_depth`)."""
        if depth is None:
            raise ValueError("StableDiffusionDepth.predict_noise needs depth=[N,1,h,w] (see prepare_depth)")
        return torch.cat([z_t, depth.to(z_t).expand(z_t.shape[0], -1, -1, -1)], dim=1)


__all__ = ["StableDiffusionDepth"]
