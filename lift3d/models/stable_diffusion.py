"""Stable Diffusion 1.x / 2.x as a frozen component (Rombach et al., arXiv 2112.10752).

`StableDiffusion.load("stabilityai/stable-diffusion-2-1-base")` (or a local folder in the published
layout): UNet2DConditionModel + AutoencoderKL + the DDPM schedule of `scheduler/`. The text encoder
is not held here: prompts are encoded once by lift3d.prompt (cached), so the 1.4 GB encoder is not
kept in memory beside the UNet.

    predict_noise(z_t [N,4,h,w], t [N], text_embeddings [N,77,D]) -> eps [N,4,h,w]

Conditioned variants are subclasses in files of their own, same call with one more keyword: they
override `load_networks` and `unet_input` (what conv_in sees) or `unet_kwargs` (extra UNet inputs):
lift3d.models.stable_diffusion_depth (depth2img), lift3d.models.stable_diffusion_controlnet.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lift3d.models.diffusion import LatentDiffusionModel


class StableDiffusion(LatentDiffusionModel):
    KIND = "Stable Diffusion"
    UNET_IN_CHANNELS = 4

    def load_networks(self, path: str) -> dict[str, Any]:
        from diffusers import UNet2DConditionModel

        # loaded as stored, then cast by FrozenModels.to (the dtype keyword differs across diffusers versions)
        return {"unet": UNet2DConditionModel.from_pretrained(path, subfolder="unet"), "vae": self.load_vae(path)}

    def unet_input(self, z_t: Tensor, **conditioning: Any) -> Tensor:
        """What the UNet's conv_in sees (z_t itself for plain SD)."""
        return z_t

    def predict_noise(self, z_t: Tensor, t: Tensor, text_embeddings: Tensor = None, **conditioning: Any) -> Tensor:
        """UNet eps prediction: z_t [N,4,h,w], t [N], text [N,77,D] -> [N,4,h,w] (z_t's dtype).
        Extra keywords go to `unet_input` / `unet_kwargs` of the conditioned subclasses."""
        dtype = self.weights_dtype
        x = self.unet_input(z_t, **conditioning).to(dtype)
        extra = self.unet_kwargs(x, t, text_embeddings.to(dtype), **conditioning)
        return self.unet(x, t, encoder_hidden_states=text_embeddings.to(dtype), **extra).sample.to(z_t.dtype)

    def unet_kwargs(self, x: Tensor, t: Tensor, text_embeddings: Tensor, **conditioning: Any) -> dict[str, Any]:
        return {}


__all__ = ["StableDiffusion"]
