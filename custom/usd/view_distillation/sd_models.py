"""Stable Diffusion pieces the view-distillation steps share (docs/methods/usd.md §4.2, §4.4).

- `load_stable_diffusion`: a `SamplingModel`, the frozen Stable Diffusion of lift3d.models (same
  loading, model lookup and precision handling as every SD component; a private copy, since the
  DreamBooth-LoRA adapters go into its UNet) with the CFG scale `guided_noise` applies and the image
  size its samplers use.
- `text_embeddings`: [N,77,D] embeddings of prompts with the SD folder's text encoder
  (lift3d.prompt.stable_diffusion.encode_prompts; loaded for the call, freed afterwards).
- `prompts`: the DreamBooth prompts "photo of a [V] <class>", "photo of a [S] [V] <class>",
  "photo of a <class>".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lift3d.models.cfg import classifier_free_guidance
from lift3d.models.stable_diffusion import StableDiffusion
from lift3d.prompt.stable_diffusion import encode_prompts


@dataclass
class SamplingModel:
    """Stable Diffusion with a CFG scale and an image size; other attributes are the model's
    (device, unet, alphas_cumprod, encode_images, decode_latents, weights_dtype)."""

    model: StableDiffusion
    guidance_scale: float
    resolution: int

    def __getattr__(self, name: str):
        if name == "model":  # not set yet (copy / unpickle)
            raise AttributeError(name)
        return getattr(self.model, name)

    @property
    def latent_resolution(self) -> int:
        return self.resolution // self.model.downsample

    def guided_noise(self, z_t: Tensor, t: Tensor, text_embeddings: Tensor) -> Tensor:
        """eps_u + s (eps_c - eps_u) from one UNet call on [z_t; z_t]; text_embeddings [2B,77,D] (cond, uncond)."""
        eps = self.model.predict_noise(torch.cat([z_t, z_t]), torch.cat([t, t]), text_embeddings)
        eps_cond, eps_uncond = eps.chunk(2)
        return classifier_free_guidance(eps_uncond, eps_cond, self.guidance_scale)


def load_stable_diffusion(path: str, guidance_scale: float = 7.5, half_precision_weights: str = "auto",
                          resolution: int | None = None) -> SamplingModel:
    model = StableDiffusion.load(str(path), "Stable Diffusion (view distillation models.sd)",
                                 half_precision_weights=half_precision_weights, shared=False)
    return SamplingModel(model, float(guidance_scale), int(resolution or model.native_resolution))


def text_embeddings(path: str, prompts: list[str]) -> Tensor:
    """[N,77,D] float32 CPU."""
    return encode_prompts(str(path), list(prompts))


@dataclass(frozen=True)
class DreamBoothPrompts:
    class_name: str
    token_v: str
    token_s: str

    @property
    def instance(self) -> str:  # step (a) instances; step (b) prior (the Zero-1-to-3 views)
        return f"photo of a {self.token_v} {self.class_name}"

    @property
    def specialised(self) -> str:  # step (b) instance (the input view); the SDEdit prompt
        return f"photo of a {self.token_s} {self.token_v} {self.class_name}"

    @property
    def class_prompt(self) -> str:  # the class images (prior preservation of step a)
        return f"photo of a {self.class_name}"


def load_rgb_on_white(path: str) -> tuple[Tensor, Tensor]:
    """An image file -> (rgb [H,W,3] composited on white, alpha [H,W,1]) float32 in [0,1];
    images without alpha get alpha 1."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    t = torch.from_numpy(arr.copy())
    rgb, alpha = t[..., :3], t[..., 3:]
    return rgb * alpha + (1.0 - alpha), alpha


def resize_hw(x: Tensor, height: int, width: int) -> Tensor:
    """[B,C,H,W] -> [B,C,height,width]: antialiased bilinear (area-like when shrinking)."""
    if tuple(x.shape[-2:]) == (height, width):
        return x
    return torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                                           antialias=True)


__all__ = ["DreamBoothPrompts", "SamplingModel", "load_rgb_on_white", "load_stable_diffusion", "resize_hw", "text_embeddings"]
