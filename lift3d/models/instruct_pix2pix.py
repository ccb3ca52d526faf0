"""InstructPix2Pix (Brooks et al., arXiv 2211.09800) as a frozen component: an image-editing Stable
Diffusion 1.5 whose UNet takes 8 input channels, concat(z_t, image latents) (§3.2).

`InstructPix2Pix.load("timbrooks/instruct-pix2pix")` (or a local folder in the published
StableDiffusionInstructPix2PixPipeline layout): UNet2DConditionModel (in_channels 8) + AutoencoderKL +
the DDPM schedule of `scheduler/`. The text encoder is not held (prompts come from lift3d.prompt).

    image_latents = encode_condition_images(images [B,3,H,W] in [0,1])   # VAE posterior mode, NOT scaled
    predict_noise(z_t [N,4,h,w], t [N], text_embeddings [N,77,D], image_latents=[N,4,h,w]) -> eps [N,4,h,w]

The edit instruction guides twice (§3.2.1, eq. 3): with c_T the text and c_I the image condition,

    eps = eps(z_t, 0, 0) + s_I (eps(z_t, c_I, 0) - eps(z_t, 0, 0)) + s_T (eps(z_t, c_I, c_T) - eps(z_t, c_I, 0))

(`dual_guidance`; threestudio's `condition_scale` is s_I, `guidance_scale` s_T). `guided_noise` gets the
three predictions from one UNet call on [z_t; z_t; z_t] with text [c_T; 0; 0] and image latents
[c_I; c_I; 0] (the "no image" condition is zero latents, as diffusers' pipeline and the paper's
training-time dropout).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from lift3d.models.stable_diffusion import StableDiffusion


def dual_guidance(eps_uncond: Tensor, eps_image: Tensor, eps_text: Tensor, text_scale: float,
                  image_scale: float) -> Tensor:
    """InstructPix2Pix's classifier-free guidance over two conditions (arXiv 2211.09800 eq. 3):
    eps_u + s_I (eps_I - eps_u) + s_T (eps_TI - eps_I); eps_text is the text-and-image prediction."""
    return eps_uncond + image_scale * (eps_image - eps_uncond) + text_scale * (eps_text - eps_image)


class InstructPix2Pix(StableDiffusion):
    """InstructPix2Pix (timbrooks/instruct-pix2pix): UNet input concat(z_t, image latents) [N,8,h,w]."""

    KIND = "InstructPix2Pix"
    UNET_IN_CHANNELS = 8

    @torch.no_grad()
    def encode_condition_images(self, images: Tensor) -> Tensor:
        """images [B,3,H,W] in [0,1] -> image latents [B,4,H/8,W/8]: the VAE posterior's mode, unscaled
        (the pipeline's `prepare_image_latents`; the UNet was trained on these)."""
        x = (images * 2.0 - 1.0).to(self.weights_dtype)
        return self.vae.encode(x).latent_dist.mode().to(images.dtype)

    def unet_input(self, z_t: Tensor, image_latents: Optional[Tensor] = None, **conditioning: Any) -> Tensor:
        """concat(z_t [N,4,h,w], image_latents [N,4,h,w])."""
        if image_latents is None:
            raise ValueError("InstructPix2Pix.predict_noise needs image_latents=[N,4,h,w] (encode_condition_images)")
        return torch.cat([z_t, image_latents.to(z_t)], dim=1)

    def guided_noise(self, z_t: Tensor, t: Tensor, text_cond: Tensor, text_uncond: Tensor, image_latents: Tensor,
                     text_scale: float, image_scale: float) -> Tensor:
        """`dual_guidance` of z_t [B,4,h,w], t [B], text [B,77,D] each, image latents [B,4,h,w] -> [B,4,h,w]."""
        eps = self.predict_noise(
            torch.cat([z_t, z_t, z_t]), torch.cat([t, t, t]),
            torch.cat([text_cond, text_uncond, text_uncond]),
            image_latents=torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)]),
        )
        eps_text, eps_image, eps_uncond = eps.chunk(3)
        return dual_guidance(eps_uncond, eps_image, eps_text, text_scale, image_scale)


__all__ = ["InstructPix2Pix", "dual_guidance"]
