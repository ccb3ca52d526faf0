"""Target images for pose-labelled renders from a diffusion model (#17 point 2; docs/methods/gan-adaptation.md):

- PODIA-3D's pose-preserved generation: a depth-conditioned model (`StableDiffusionDepth`, SD-2-depth
  layout, or `StableDiffusionControlNet` with a depth ControlNet) sampled from (nearly) pure noise,
  strength ≈ 1, so that only the rendered depth carries the pose;
- DATID-3D's baseline: SDEdit of the source render with plain `StableDiffusion` (strength 0.7), the
  same call without depth.

One call for both, `generate_images(model, text, uncond, images, depth, strength, ...)`: DDIM from
t_start = round(strength · 999) (lift3d.models.ddim; at strength 1 from pure noise, the source image
unused), classifier-free guidance (lift3d.models.cfg), one noise generator per seed (a sample does not
depend on its batch). Each output keeps the camera label of the render it came from (the caller's
`labels[i]`).

PODIA-3D's specialized-to-general sampling (docs/methods/podia3d.md §"Step 3"): given `specialized`
(the pose-preserved model of lift3d.gan.pose_preserved_model) and `switch_timestep` s, every DDIM step
at t >= s asks `specialized` for ε and every step at t < s asks `model` (the general one): the high-
noise steps fix the layout (pose) from depth, the low-noise ones paint the target domain. One text
embedding per sample lets a debiasing prompt list (lift3d.gan.debias) vary across the batch.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.models.cfg import classifier_free_guidance
from lift3d.models.ddim import NUM_TRAIN_TIMESTEPS, ddim_sample, ddim_timesteps, seeded_noise
from lift3d.models.stable_diffusion_controlnet import StableDiffusionControlNet
from lift3d.models.stable_diffusion_depth import StableDiffusionDepth


def inverse_depth_image(depth: Tensor) -> Tensor:
    """depth [N,1,h,w] (ray distance, larger = farther) -> [N,1,h,w] in [0,1], near = 1, farthest = 0
    (per sample; the MiDaS-style relative inverse depth depth models and depth ControlNets are trained on)."""
    disparity = 1.0 / depth.clamp_min(1e-6)
    lo = disparity.amin(dim=(1, 2, 3), keepdim=True)
    hi = disparity.amax(dim=(1, 2, 3), keepdim=True)
    return (disparity - lo) / (hi - lo).clamp_min(1e-8)


def depth_conditioning(model: Any, depth: Optional[Tensor], image_size: tuple[int, int]) -> dict[str, Tensor]:
    """predict_noise keywords that condition `model` on depth [N,1,h,w] ({} for a model without depth)."""
    if depth is None:
        if isinstance(model, (StableDiffusionDepth, StableDiffusionControlNet)):
            raise ValueError(f"{type(model).__name__} is depth-conditioned: pass depth=[N,1,h,w] (the source renders' depth)")
        return {}
    near_is_one = inverse_depth_image(depth.float())
    if isinstance(model, StableDiffusionDepth):
        latent = (image_size[0] // model.downsample, image_size[1] // model.downsample)
        return {"depth": model.prepare_depth(near_is_one, latent)}  # [-1,1], near = 1
    if isinstance(model, StableDiffusionControlNet):
        control = F.interpolate(near_is_one, size=image_size, mode="bilinear", align_corners=False)
        return {"control_image": control.expand(-1, 3, -1, -1)}
    raise ValueError(f"{type(model).__name__} takes no depth: use StableDiffusionDepth or StableDiffusionControlNet, "
                     f"or pass depth=None (SDEdit, DATID-3D's baseline)")


@torch.no_grad()
def generate_images(model: Any, text_embeddings: Tensor, uncond_embeddings: Tensor, images: Optional[Tensor] = None,
                    depth: Optional[Tensor] = None, strength: float = 1.0, num_steps: int = 50,
                    guidance_scale: float = 7.5, seeds: Optional[Sequence[int]] = None,
                    image_size: Optional[tuple[int, int]] = None, specialized: Any = None,
                    switch_timestep: int = 0) -> Tensor:
    """-> images [N,3,H,W] in [0,1].

    text / uncond embeddings [N|1,77,D]; images [N,3,H,W] in [0,1] (the source renders, needed when
    strength < 1); depth [N,1,h,w] (ray distance); seeds: one per output (default 0..N-1); image_size:
    (H, W) when no images are given (default: the model's native resolution); specialized: a model of the
    same layout and schedule used for the steps at t >= switch_timestep (`model` for the others)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength {strength} must lie in [0, 1] (1: from pure noise; DATID-3D's SDEdit uses 0.7)")
    n = images.shape[0] if images is not None else depth.shape[0] if depth is not None else len(seeds or [])
    if n == 0:
        raise ValueError("generate_images needs images, depth or seeds to know how many images to make")
    if images is None and strength < 1.0:
        raise ValueError(f"strength {strength} < 1 starts from the source images: pass images=[N,3,H,W]")
    if image_size is None:
        image_size = tuple(images.shape[-2:]) if images is not None else (model.native_resolution,) * 2
    seeds = list(range(n)) if seeds is None else list(seeds)
    device, down = model.device, model.downsample
    latent_shape = (model.latent_channels, image_size[0] // down, image_size[1] // down)
    noise = seeded_noise(latent_shape, seeds, device)  # [N,4,h,w]
    t_start = int(round(strength * (NUM_TRAIN_TIMESTEPS - 1)))
    if strength >= 1.0:
        z = noise
    else:
        clean = model.encode_images(images.to(device).float(), sample=False)
        z = model.add_noise(clean, noise, torch.full((n,), t_start, dtype=torch.long, device=device))
    conditioning = depth_conditioning(model, None if depth is None else depth.to(device), image_size)
    text = text_embeddings.to(device).expand(n, -1, -1)
    uncond = uncond_embeddings.to(device).expand(n, -1, -1)

    if specialized is not None and not torch.allclose(specialized.alphas_cumprod, model.alphas_cumprod, atol=1e-6):
        raise ValueError("the specialized and the general model must share one noise schedule (one latent serves both)")

    def eps_fn(z_t: Tensor, t: Tensor) -> Tensor:
        doubled = {k: torch.cat([v, v]) for k, v in conditioning.items()}
        use_specialized = specialized is not None and int(t[0]) >= switch_timestep
        denoiser = specialized if use_specialized else model
        eps = denoiser.predict_noise(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([uncond, text]), **doubled)
        eps_uncond, eps_cond = eps.chunk(2)
        return classifier_free_guidance(eps_uncond, eps_cond, guidance_scale)

    latents = ddim_sample(z, ddim_timesteps(t_start, num_steps), eps_fn, model.alphas_cumprod.to(device))
    return model.decode_latents(latents).permute(0, 3, 1, 2).contiguous()  # [N,3,H,W]
