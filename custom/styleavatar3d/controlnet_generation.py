"""ControlNet generation of one image per render (StyleAvatar3D data generation; docs/methods/styleavatar3d.md): from pure
noise (the render's pixels are not used, only its conditions carry the pose), DDIM (lift3d.models.ddim) with
classifier-free guidance (lift3d.models.cfg) against a per-image negative prompt, one noise generator per
seed so an image does not depend on its batch. `model` is lift3d's StableDiffusionControlNet (one condition)
or custom/styleavatar3d/multi_controlnet.StableDiffusionMultiControlNet (several, "hybrid").
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from lift3d.models.cfg import classifier_free_guidance
from lift3d.models.ddim import NUM_TRAIN_TIMESTEPS, ddim_sample, ddim_timesteps, seeded_noise

from .multi_controlnet import StableDiffusionMultiControlNet


@torch.no_grad()
def generate_controlled(model: Any, text: Tensor, uncond: Tensor, controls: Sequence[Tensor],
                        scales: Sequence[float], seeds: Sequence[int], num_steps: int = 30,
                        guidance_scale: float = 7.5) -> Tensor:
    """text / uncond [N,77,D]; controls: one [N,3,H,W] in [0,1] per ControlNet; -> images [N,3,H,W] in [0,1]."""
    n, (h, w) = len(seeds), controls[0].shape[-2:]
    device, down = model.device, model.downsample
    z = seeded_noise((model.latent_channels, h // down, w // down), list(seeds), device)
    multi = isinstance(model, StableDiffusionMultiControlNet)
    if not multi and len(controls) != 1:
        raise ValueError(f"{type(model).__name__} takes one control image; {len(controls)} given (use several ControlNets)")
    doubled = [torch.cat([c, c]).to(device) for c in controls]
    keywords = ({"control_image": doubled, "conditioning_scale": list(scales)} if multi
                else {"control_image": doubled[0], "conditioning_scale": float(scales[0])})
    text, uncond = text.to(device).expand(n, -1, -1), uncond.to(device).expand(n, -1, -1)

    def eps_fn(z_t: Tensor, t: Tensor) -> Tensor:
        eps = model.predict_noise(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([uncond, text]), **keywords)
        eps_uncond, eps_cond = eps.chunk(2)
        return classifier_free_guidance(eps_uncond, eps_cond, guidance_scale)

    latents = ddim_sample(z, ddim_timesteps(NUM_TRAIN_TIMESTEPS - 1, num_steps), eps_fn, model.alphas_cumprod.to(device))
    return model.decode_latents(latents).permute(0, 3, 1, 2).contiguous()
