"""Stable Diffusion with a ControlNet (Zhang et al., arXiv 2302.05543 §3) as a frozen component.

SD plus a ControlNetModel (`controlnet_name_or_path`: lllyasviel/sd-controlnet-*, thibaud/controlnet-sd21-*
or a local folder) whose residuals are added to the UNet's skip connections and middle block:

    predict_noise(z_t, t, text_embeddings, control_image=[N,3,H,W] in [0,1], conditioning_scale=1.0)
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from lift3d.models.frozen import freeze, resolve_model
from lift3d.models.stable_diffusion import StableDiffusion


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


__all__ = ["StableDiffusionControlNet"]
