"""`sd-latent-adapter-material`: Stable Diffusion latents -> RGB by one learned linear map (Latent-NeRF's
refinement stage; Metzer et al., arXiv 2211.07600 §3.2 and Fig. 3; docs/methods/latent-nerf.md §3).

The geometry's 4 features are SD latents [..., 4] (what the latent stage trained); each colour is

    rgb = clamp((features @ A + 1) / 2, 0, 1),      A [4,3] learned

with A initialised to Latent-NeRF's least-squares fit of the VAE decoder's average colour per latent
channel, so the refinement starts from the latent stage's appearance and trains A, the geometry and
the background by SDS on the decoded RGB.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lift3d.errors import ConfigError
from lift3d.materials.base import BaseMaterial
from lift3d.registry import register

# rows: latent channels L1..L4; columns: R, G, B (Latent-NeRF's linear latent-to-RGB fit)
LATENT_TO_RGB_INIT = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


def latents_to_rgb(latents: torch.Tensor, adapter: torch.Tensor) -> torch.Tensor:
    """latents [..., 4] -> rgb [..., 3] in [0,1] through the adapter [4,3]."""
    return ((latents @ adapter + 1.0) * 0.5).clamp(0.0, 1.0)


@register("sd-latent-adapter-material")
class StableDiffusionLatentAdapterMaterial(BaseMaterial):
    @dataclass
    class Config(BaseMaterial.Config):
        pass

    def configure(self) -> None:
        self.adapter = torch.nn.Parameter(torch.tensor(LATENT_TO_RGB_INIT, dtype=torch.float32))  # [4,3]

    def forward(self, features: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if features.shape[-1] != 4:
            raise ConfigError(f"sd-latent-adapter-material maps 4 latent features to RGB, but the geometry gives "
                              f"{features.shape[-1]}: set system.geometry.n_feature_dims=4.")
        return latents_to_rgb(features, self.adapter)

    def export(self, features: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        return {"albedo": self(features)}


__all__ = ["LATENT_TO_RGB_INIT", "StableDiffusionLatentAdapterMaterial", "latents_to_rgb"]
