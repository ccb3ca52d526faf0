"""Rectified Zero-1-to-3 sampling of novel views of the input image (docs/methods/usd.md §4.3).

Zero-1-to-3's own classifier-free guidance pulls against its zero-image / zero-pose prediction,
which is biased (usd.md §1). The rectified sampler guides against Stable Diffusion's unconditional
prediction on the same noisy latent instead:

    eps = w (eps_zero123(z_t, c, p) - eps_sd(z_t, "")) + eps_sd(z_t, "")

c = the input image (composited on white), p = the relative camera T = [Δpolar, sin Δaz, cos Δaz,
Δradius] of the target view with respect to the reference camera. The two predictions come from
the frozen models of lift3d.models (Zero-1-to-3's conditional branch only, SD with the empty prompt),
combined by plain CFG: the models, the reference conditioning and the camera embedding are the
models' own, the same ones `usd-image-guidance` distils. Sampling is
deterministic DDIM (lift3d/models/ddim.py) from t = 999 in `num_steps` steps; view i starts from noise seeded
with seed + i, so a view does not depend on the batch size.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from lift3d.models.ddim import NUM_TRAIN_TIMESTEPS, ddim_sample, ddim_timesteps, seeded_noise
from lift3d.guidance.zero123 import reference_image
from lift3d.models.cfg import classifier_free_guidance
from lift3d.models.stable_diffusion import StableDiffusion
from lift3d.registry import find

from ..unconditional_text import prompt_embedding


class RectifiedZero123Sampler:
    def __init__(
        self,
        zero123_path: str,
        sd_path: str,
        image_path: str,
        reference_elevation_deg: float,
        reference_azimuth_deg: float,
        reference_camera_distance: float,
        guidance_scale: float = 3.0,
        zero123_guidance_type: str = "zero123-guidance",
        resolution: Optional[int] = None,
        half_precision_weights: str = "auto",
        cache_dir: str = ".cache/text_embeddings",
    ) -> None:
        self.guidance_scale = float(guidance_scale)
        self.reference_camera = (float(reference_elevation_deg), float(reference_azimuth_deg),
                                 float(reference_camera_distance))
        zero123_cls = find(zero123_guidance_type).model_class  # Zero123 or StableZero123 (camera embedding)
        self.zero123 = zero123_cls.load(zero123_path, "Zero-1-to-3", half_precision_weights=half_precision_weights)
        self.sd = StableDiffusion.load(sd_path, "Stable Diffusion", half_precision_weights=half_precision_weights)
        self.device = self.zero123.device
        self.alphas_cumprod = self.zero123.alphas_cumprod
        self.resolution = int(resolution or self.zero123.native_resolution)
        self.latent_resolution = self.resolution // self.zero123.downsample
        self.reference = self.zero123.reference(reference_image(str(image_path), self.resolution, None, "image_path"))
        self.uncond_embedding = prompt_embedding(self.sd.path, str(cache_dir)).to(self.device)  # [1,77,D]

    # ------------------------------------------------------------------ cameras
    def relative_cameras(self, elevation_deg: Sequence[float], azimuth_deg: Sequence[float],
                         camera_distance: Sequence[float]) -> Tensor:
        """T [N,4] of absolute target cameras (degrees, lift3d's convention) relative to the reference."""
        return self.zero123.camera_embedding(
            torch.as_tensor(list(elevation_deg), dtype=torch.float32),
            torch.as_tensor(list(azimuth_deg), dtype=torch.float32),
            torch.as_tensor(list(camera_distance), dtype=torch.float32), *self.reference_camera,
        )

    # ------------------------------------------------------------------ the rectified prediction
    @torch.no_grad()
    def noise_prediction(self, z_t: Tensor, t: Tensor, camera: Tensor) -> Tensor:
        """eps [B,4,h,w] = w (eps_zero123(z_t, c, p) - eps_sd(z_t, "")) + eps_sd(z_t, ""); camera [B,4]."""
        eps_zero123, _ = self.zero123.noise_predictions(z_t, t, self.reference, camera.to(z_t.device), with_uncond=False)
        eps_sd = self.sd.predict_noise(z_t, t, self.uncond_embedding.expand(z_t.shape[0], -1, -1))
        return classifier_free_guidance(eps_sd, eps_zero123, self.guidance_scale)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self, cameras: Tensor, num_steps: int = 50, seed: int = 0, batch_size: int = 4,
        progress: Optional[Callable] = None,
    ) -> Tensor:
        """Novel views [N,H,W,3] in [0,1] at relative cameras [N,4] (see `relative_cameras`).
        progress: optional wrapper of the iterator over batches (e.g. tqdm)."""
        res = self.latent_resolution
        timesteps = ddim_timesteps(NUM_TRAIN_TIMESTEPS - 1, num_steps)
        starts = list(range(0, cameras.shape[0], max(1, int(batch_size))))
        images = []
        for start in (progress(starts) if progress is not None else starts):
            camera = cameras[start:start + batch_size].to(self.device)  # [b,4]
            seeds = [seed + start + i for i in range(camera.shape[0])]
            z = seeded_noise((4, res, res), seeds, self.device)  # [b,4,h,w]
            z = ddim_sample(z, timesteps, lambda z_t, t: self.noise_prediction(z_t, t, camera), self.alphas_cumprod)
            images.append(self.zero123.decode_latents(z).float().cpu())
        return torch.cat(images)


__all__ = ["RectifiedZero123Sampler"]
