"""Stable Diffusion 1.x / 2.x as a frozen component (Rombach et al., arXiv 2112.10752).

`StableDiffusion.load("stabilityai/stable-diffusion-2-1-base")` (or a local folder in the published
layout): UNet2DConditionModel + AutoencoderKL + the DDPM schedule of `scheduler/`. The text encoder
is not held here: prompts are encoded once by lift3d.prompt (cached), so the 1.4 GB encoder is not
kept in memory beside the UNet.

    predict_noise(z_t [N,4,h,w], t [N], text_embeddings [N,77,D]) -> eps [N,4,h,w]

Conditioned variants, one class each, same call with one more keyword:
- `StableDiffusionDepth` (stabilityai/stable-diffusion-2-depth): the UNet takes 5 channels,
  concat(z_t, depth) with the depth map normalised to [-1, 1] per sample at latent size
  (`prepare_depth`), as diffusers' StableDiffusionDepth2ImgPipeline feeds it;
- `StableDiffusionControlNet` (Zhang et al., arXiv 2302.05543 §3): SD plus a ControlNetModel
  (`controlnet_name_or_path`) whose residuals are added to the UNet's skip connections:
  predict_noise(..., control_image [N,3,H,W] in [0,1], conditioning_scale).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.models.diffusion import LatentDiffusionModel
from lift3d.models.frozen import freeze, resolve_model


class StableDiffusion(LatentDiffusionModel):
    KIND = "Stable Diffusion"

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


class StableDiffusionDepth(StableDiffusion):
    """Depth-conditioned SD 2 (stabilityai/stable-diffusion-2-depth): UNet input concat(z_t, depth) [N,5,h,w]."""

    KIND = "Stable Diffusion 2 depth"

    def load_networks(self, path: str) -> dict[str, Any]:
        networks = super().load_networks(path)
        channels = int(networks["unet"].config.in_channels)
        if channels != self.latent_channels + 1:
            from lift3d.errors import ConfigError

            raise ConfigError(
                f"'{path}' is not a depth-conditioned Stable Diffusion: its UNet takes {channels} input channels, "
                f"a depth model takes {self.latent_channels + 1} (latents + depth). Use stabilityai/stable-diffusion-2-depth "
                f"or a folder in its layout."
            )
        return networks

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


class StableDiffusionControlNet(StableDiffusion):
    """SD with one ControlNet (lllyasviel/sd-controlnet-*, thibaud/controlnet-sd21-*, or a local folder)."""

    KIND = "Stable Diffusion with ControlNet"
    CONTROLNET_FILES = ("config.json",)

    def __init__(self, path: str, precision: str = "auto", attention_slicing: bool = False,
                 channels_last: bool = False, device: Optional[torch.device | str] = None,
                 controlnet_name_or_path: str = "", controlnet_what: str = "the ControlNet") -> None:
        self.controlnet_path = resolve_model(str(controlnet_name_or_path), controlnet_what, self.CONTROLNET_FILES)
        super().__init__(path, precision, attention_slicing, channels_last, device)

    def load_networks(self, path: str) -> dict[str, Any]:
        from diffusers import ControlNetModel

        return {**super().load_networks(path), "controlnet": freeze(ControlNetModel.from_pretrained(self.controlnet_path))}

    @property
    def controlnet(self) -> Any:
        return self.models.controlnet

    def unet_kwargs(self, x: Tensor, t: Tensor, text_embeddings: Tensor, control_image: Optional[Tensor] = None,
                    conditioning_scale: float = 1.0, **conditioning: Any) -> dict[str, Any]:
        """The ControlNet's residuals for the UNet's down blocks and mid block; control_image [N|1,3,H,W] in [0,1]
        at the image resolution (H = h × 8)."""
        if control_image is None:
            raise ValueError("StableDiffusionControlNet.predict_noise needs control_image=[N,3,H,W] in [0,1]")
        cond = control_image.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1, -1)
        down, mid = self.controlnet(x, t, encoder_hidden_states=text_embeddings, controlnet_cond=cond,
                                    conditioning_scale=float(conditioning_scale), return_dict=False)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


__all__ = ["StableDiffusion", "StableDiffusionControlNet", "StableDiffusionDepth"]
