"""Rectified Zero-1-to-3 sampling of novel views of the input image (docs/methods/usd.md §4.3).

Zero-1-to-3's own classifier-free guidance pulls against its zero-image / zero-pose prediction,
which is biased (usd.md §1). The rectified sampler guides against Stable Diffusion's unconditional
prediction on the same noisy latent instead:

    eps = w (eps_zero123(z_t, c, p) - eps_sd(z_t, "")) + eps_sd(z_t, "")

c = the input image (composited on white), p = the relative camera T = [Δpolar, sin Δaz, cos Δaz,
Δradius] of the target view with respect to the reference camera. It is USD's pair of predictions
(`usd-image-guidance.predictions`: one Zero-1-to-3 call with the conditional branch only, one SD
call with the empty prompt) combined by plain CFG, so the models, the reference conditioning, the
camera embedding and the batching are the guidance's — nothing is re-implemented here. Sampling is
deterministic DDIM (lift3d/guidance/ddim.py) from t = 999 in `num_steps` steps; view i starts from noise seeded
with seed + i, so a view does not depend on the batch size.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from lift3d.guidance.ddim import NUM_TRAIN_TIMESTEPS, ddim_sample, ddim_timesteps, seeded_noise
from lift3d.guidance.sds import classifier_free_guidance

from ..image_guidance import USDImageGuidance


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
        # USD's image guidance holds Zero-1-to-3 (with the input image's conditioning) and SD's
        # UNet + empty-prompt embedding; its timestep settings are unused here.
        self.usd = USDImageGuidance({
            "pretrained_model_name_or_path": str(zero123_path),
            "zero123_guidance_type": zero123_guidance_type,
            "sd_model_name_or_path": str(sd_path),
            "cond_image_path": str(image_path),
            "cond_elevation_deg": float(reference_elevation_deg),
            "cond_azimuth_deg": float(reference_azimuth_deg),
            "cond_camera_distance": float(reference_camera_distance),
            "guidance_scale": self.guidance_scale,
            "unconditional": "sd",
            "resolution": resolution,
            "half_precision_weights": half_precision_weights,
            "cache_dir": str(cache_dir),
        })
        self.zero123 = self.usd.zero123
        self.device = self.usd.device
        self.alphas_cumprod = self.zero123.alphas_cumprod

    # ------------------------------------------------------------------ cameras
    def relative_cameras(self, elevation_deg: Sequence[float], azimuth_deg: Sequence[float],
                         camera_distance: Sequence[float]) -> Tensor:
        """T [N,4] of absolute target cameras (degrees, lift3d's convention) relative to the reference."""
        return self.zero123.camera_embedding({
            "elevation": torch.as_tensor(list(elevation_deg), dtype=torch.float32),
            "azimuth": torch.as_tensor(list(azimuth_deg), dtype=torch.float32),
            "camera_distances": torch.as_tensor(list(camera_distance), dtype=torch.float32),
        })

    # ------------------------------------------------------------------ the rectified prediction
    @torch.no_grad()
    def noise_prediction(self, z_t: Tensor, t: Tensor, camera: Tensor) -> Tensor:
        """eps [B,4,h,w] = w (eps_zero123(z_t, c, p) - eps_sd(z_t, "")) + eps_sd(z_t, ""); camera [B,4]."""
        eps_zero123, eps_sd, _ = self.usd.predictions(z_t, t, camera.to(z_t.device))
        return classifier_free_guidance(eps_sd, eps_zero123, self.guidance_scale)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self, cameras: Tensor, num_steps: int = 50, seed: int = 0, batch_size: int = 4,
        progress: Optional[Callable] = None,
    ) -> Tensor:
        """Novel views [N,H,W,3] in [0,1] at relative cameras [N,4] (see `relative_cameras`).
        progress: optional wrapper of the iterator over batches (e.g. tqdm)."""
        res = self.zero123.latent_resolution
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
