"""Class images for DreamBooth's prior preservation (docs/methods/usd.md §4.2, step a).

The base Stable Diffusion model (no LoRA) samples `num_images` images of "photo of a <class>":
DDIM from t = 999 in `num_steps` steps with classifier-free guidance against `negative_prompt`
(eps = eps_u + s (eps_c - eps_u), one UNet call on [z; z]), image i from noise seeded with seed + i
(independent of the batch size). They keep LoRA step (a) from drifting the class's prior.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from lift3d.models.ddim import NUM_TRAIN_TIMESTEPS, ddim_sample, ddim_timesteps, seeded_noise
from .sd_models import SamplingModel
from lift3d.utils.saving import save_image


@torch.no_grad()
def sample_text_to_image(
    sd: SamplingModel, prompt_embedding: Tensor, negative_embedding: Tensor, seeds: list[int],
    num_steps: int,
) -> Tensor:
    """Images [b,H,W,3] in [0,1] for prompt / negative embeddings [1,77,D], one per seed (CFG scale:
    sd.guidance_scale)."""
    b, res = len(seeds), sd.latent_resolution
    text = torch.cat([prompt_embedding.expand(b, -1, -1), negative_embedding.expand(b, -1, -1)]).to(sd.device)
    z = seeded_noise((4, res, res), seeds, sd.device)  # [b,4,h,w]
    z = ddim_sample(z, ddim_timesteps(NUM_TRAIN_TIMESTEPS - 1, num_steps),
                    lambda z_t, t: sd.guided_noise(z_t, t, text), sd.alphas_cumprod)
    return sd.decode_latents(z).float().cpu()


def write_class_images(
    sd: SamplingModel, prompt_embedding: Tensor, negative_embedding: Tensor, out_dir: Path,
    num_images: int, num_steps: int = 50, seed: int = 0, batch_size: int = 4, progress: Optional[Callable] = None,
) -> list[Path]:
    """Samples the class images into out_dir/0000.png, ...; returns their paths."""
    out_dir = Path(out_dir)
    starts = list(range(0, int(num_images), max(1, int(batch_size))))
    paths = []
    for start in (progress(starts) if progress is not None else starts):
        seeds = [seed + i for i in range(start, min(start + batch_size, num_images))]
        for i, image in zip(range(start, start + len(seeds)), sample_text_to_image(sd, prompt_embedding,
                                                                                  negative_embedding, seeds, num_steps)):
            paths.append(save_image(out_dir / f"{i:04d}.png", image))
    return paths


__all__ = ["sample_text_to_image", "write_class_images"]
