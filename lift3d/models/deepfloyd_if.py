"""DeepFloyd IF stage I as a frozen component (pixel-space cascaded diffusion; DeepFloyd IF model card,
built on Imagen, Saharia et al., arXiv 2205.11487 §2).

DeepFloyd/IF-I-XL-v1.0 (or a local folder in its layout): a UNet2DConditionModel on 64² RGB pixels
conditioned on T5-XXL text embeddings [N,77,4096] (projected inside the UNet by `encoder_hid_proj`),
and a DDPM schedule. There is no VAE: the denoiser's space is the image in [-1, 1] at 64².
IF's UNet predicts the noise and a variance (6 output channels, "learned_range"); the noise is the
first 3.

    encode_images(images [N,3,H,W] in [0,1]) -> x [N,3,64,64] in [-1, 1]   (bilinear resize)
    predict_noise(x_t [N,3,64,64], t [N], text_embeddings [N,77,D_t5]) -> eps [N,3,64,64]
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from lift3d.models.diffusion import DiffusionModel


class DeepFloydIF(DiffusionModel):
    KIND = "DeepFloyd IF (stage I)"
    UNET_IN_CHANNELS = 3
    latent_channels = 3

    def load_networks(self, path: str) -> dict[str, Any]:
        from diffusers import UNet2DConditionModel

        return {"unet": UNet2DConditionModel.from_pretrained(path, subfolder="unet")}

    def encode_images(self, images: Tensor, sample: bool = True) -> Tensor:
        size = self.native_resolution
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        return images * 2.0 - 1.0

    def predict_noise(self, x_t: Tensor, t: Tensor, text_embeddings: Tensor = None, **conditioning: Any) -> Tensor:
        dtype = self.weights_dtype
        out = self.unet(x_t.to(dtype), t, encoder_hidden_states=text_embeddings.to(dtype)).sample
        return out[:, : x_t.shape[1]].to(x_t.dtype)  # [N,3,h,w]: the noise half of (noise, variance)


__all__ = ["DeepFloydIF"]
