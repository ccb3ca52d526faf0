"""SDEdit refinement of the USD turntable renders with the specialised model (docs/methods/usd.md §4.4).

Per render (RGBA, straight alpha):
  1. composite on white (the background the USD NeRF was trained against and SD sees), resize to
     SD's resolution, encode with SD's VAE (posterior mean x 0.18215) -> z [1,4,h,w];
  2. noise to t_start (`noise_timestep`, ≈ 200): z_t = sqrt(alphabar) z + sqrt(1 - alphabar) eps,
     eps seeded with seed + frame index;
  3. DDIM from t_start to the clean latent in `num_steps` steps (ddim.ddim_timesteps) with CFG
     (`guidance_scale` ≈ 6.5): "photo of a [S] [V] <class>" against `negative_prompt`, with the
     DreamBooth-LoRA UNet;
  4. decode, resize back to the render's size; the refined colour keeps the render's alpha as its
     mask (straight-alpha RGBA; a reconstruction composites it on white as in step 1).
noise_timestep = 0 does no step: the output is the render through the VAE (encode, decode).

The refined views are written as a new multi-view dataset in the same format as the test pass's
(lift3d.utils.rgba_dataset.RGBADatasetWriter): the same images/NNNN.png names and the input's
transforms.json (cameras unchanged) next to them, plus `"refined_from"` naming the source folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from lift3d.models.ddim import ddim_sample, ddim_timesteps, seeded_noise
from lift3d.models.noise_schedule import add_noise
from .sd_models import SamplingModel
from lift3d.utils.saving import save_image

from .sd_models import load_rgb_on_white, resize_hw


@torch.no_grad()
def sdedit(
    sd: SamplingModel, images: Tensor, prompt_embedding: Tensor, negative_embedding: Tensor,
    noise_timestep: int, num_steps: int, seeds: list[int],
) -> Tensor:
    """images [B,H,W,3] in [0,1] (already on white) -> refined [B,H,W,3] at the same size
    (CFG scale: sd.guidance_scale)."""
    B, H, W = images.shape[:3]
    x = resize_hw(images.permute(0, 3, 1, 2), sd.resolution, sd.resolution).clamp(0, 1).to(sd.device)
    z = sd.encode_images(x, sample=False).float()  # [B,4,h,w]
    timesteps = ddim_timesteps(noise_timestep, num_steps)
    if timesteps:
        noise = seeded_noise(tuple(z.shape[1:]), seeds, sd.device)
        t = torch.full((B,), timesteps[0], dtype=torch.long, device=sd.device)
        z = add_noise(z, noise, t, sd.alphas_cumprod)
        text = torch.cat([prompt_embedding.expand(B, -1, -1), negative_embedding.expand(B, -1, -1)]).to(sd.device)
        z = ddim_sample(z, timesteps, lambda z_t, tt: sd.guided_noise(z_t, tt, text), sd.alphas_cumprod)
    out = sd.decode_latents(z).float().cpu().permute(0, 3, 1, 2)  # [B,3,res,res]
    return resize_hw(out, H, W).clamp(0, 1).permute(0, 2, 3, 1)


def refine_dataset(
    sd: SamplingModel, source: Path, out_dir: Path, prompt_embedding: Tensor, negative_embedding: Tensor,
    noise_timestep: int = 200, num_steps: int = 10, seed: int = 0, batch_size: int = 4,
    progress: Optional[Callable] = None,
) -> int:
    """Refines every frame of the dataset `source` (transforms.json + images) into out_dir; returns
    the number of frames."""
    source, out_dir = Path(source), Path(out_dir)
    meta = json.loads((source / "transforms.json").read_text())
    frames = meta["frames"]
    starts = list(range(0, len(frames), max(1, int(batch_size))))
    for start in (progress(starts) if progress is not None else starts):
        chunk = frames[start:start + batch_size]
        loaded = [load_rgb_on_white(str(source / f["file_path"])) for f in chunk]
        sizes = {tuple(rgb.shape) for rgb, _ in loaded}
        groups = [loaded] if len(sizes) == 1 else [[item] for item in loaded]  # mixed sizes: one at a time
        refined: list[Tensor] = []
        offset = start
        for group in groups:
            rgb = torch.stack([g[0] for g in group])  # [b,H,W,3]
            seeds = [seed + offset + i for i in range(len(group))]
            refined.extend(sdedit(sd, rgb, prompt_embedding, negative_embedding, noise_timestep, num_steps, seeds))
            offset += len(group)
        for frame, image, (_, alpha) in zip(chunk, refined, loaded):
            save_image(out_dir / frame["file_path"], torch.cat([image, alpha], dim=-1))
    (out_dir / "transforms.json").write_text(json.dumps({**meta, "refined_from": str(source.resolve())}, indent=1))
    return len(frames)


__all__ = ["refine_dataset", "sdedit"]
