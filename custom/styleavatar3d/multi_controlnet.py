"""Stable Diffusion with several ControlNets at once (StyleAvatar3D's "hybrid" conditioning, arXiv 2305.19012
data generation: depth + pose/landmark maps): diffusers' MultiControlNetModel sums the residuals of every ControlNet,
each scaled by its conditioning scale (Zhang et al., arXiv 2302.05543, "multiple conditions").

    model = StableDiffusionMultiControlNet.load("runwayml/stable-diffusion-v1-5", "system.pretrained_model_name_or_path",
                controlnet_names_or_paths=("lllyasviel/sd-controlnet-depth", "lllyasviel/sd-controlnet-openpose"))
    eps = model.predict_noise(z_t, t, text, control_image=[depth_rgb, pose_rgb], conditioning_scale=[1.0, 0.8])

Each control image is [N|1,3,H,W] in [0,1] at the image resolution, in the order of the ControlNets.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from lift3d.models.frozen import freeze, resolve_model
from lift3d.models.stable_diffusion import StableDiffusion


class StableDiffusionMultiControlNet(StableDiffusion):
    KIND = "Stable Diffusion with several ControlNets"
    CONTROLNET_FILES = ("config.json",)

    def __init__(self, path: str, precision: str = "auto", attention_slicing: bool = False,
                 channels_last: bool = False, device: Optional[torch.device | str] = None,
                 controlnet_names_or_paths: Sequence[str] = (), controlnet_what: str = "a ControlNet") -> None:
        if not controlnet_names_or_paths:
            raise ValueError("StableDiffusionMultiControlNet needs at least one ControlNet (controlnet_names_or_paths)")
        self.controlnet_paths = [resolve_model(str(p), controlnet_what, self.CONTROLNET_FILES)
                                 for p in controlnet_names_or_paths]
        super().__init__(path, precision, attention_slicing, channels_last, device)

    def load_networks(self, path: str) -> dict[str, Any]:
        from diffusers import ControlNetModel
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        nets = [ControlNetModel.from_pretrained(p) for p in self.controlnet_paths]
        return {**super().load_networks(path), "controlnet": freeze(MultiControlNetModel(nets))}

    @property
    def controlnet(self) -> Any:
        return self.models.controlnet

    @property
    def n_controlnets(self) -> int:
        return len(self.controlnet_paths)

    def unet_kwargs(self, x: Tensor, t: Tensor, text_embeddings: Tensor, control_image: Optional[Sequence[Tensor]] = None,
                    conditioning_scale: float | Sequence[float] = 1.0, **conditioning: Any) -> dict[str, Any]:
        """Summed residuals of every ControlNet; control_image: one [N|1,3,H,W] in [0,1] per ControlNet."""
        if control_image is None or len(control_image) != self.n_controlnets:
            raise ValueError(f"StableDiffusionMultiControlNet.predict_noise needs control_image = a list of "
                             f"{self.n_controlnets} images [N,3,H,W] in [0,1], one per ControlNet")
        scales = ([float(conditioning_scale)] * self.n_controlnets if isinstance(conditioning_scale, (int, float))
                  else [float(s) for s in conditioning_scale])
        conds = [c.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1, -1) for c in control_image]
        down, mid = self.controlnet(x, t, encoder_hidden_states=text_embeddings, controlnet_cond=conds,
                                    conditioning_scale=scales, return_dict=False)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
