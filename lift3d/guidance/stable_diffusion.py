"""`stable-diffusion-guidance`: DreamFusion's score distillation with Stable Diffusion (SD 2.1-base by default).

Per call (image [B,H,W,3] in [0,1], the render of `system.guidance_input`):
  1. resize to `resolution`² (bilinear; default the model's native 512) and encode with SD's VAE
     (posterior sample x 0.18215) -> latents [B,4,res/8,res/8]; with `rgb_as_latents` the image
     is already 4-channel latents [B,H,W,4] (e.g. Fantasia3D's normal+mask) and is only resized
     to res/8 (no VAE);
  2. text embeddings of the view direction of each camera from `prompt_utils`
     (stable-diffusion-prompt-processor), conditional and negative;
  3. the SDS step of lift3d.guidance.sds: t ~ U{min_step..max_step}, z_t, one UNet call on the
     batch [z_t, z_t] with [cond, uncond] text, eps = eps_u + s (eps_c - eps_u),
     grad = w(t) (eps - noise), `loss_sds` = 0.5 ||z - stopgrad(z - grad)||² / B.

The UNet and VAE are frozen, held in a `FrozenModels` (never nn.Module children, never in
checkpoints), fp16 on GPU and fp32 on CPU (`half_precision_weights: auto`). The model is found
with lift3d.models.loading.resolve_pretrained in `validate_config`, before any work starts.
Keyword overrides for tests and callers: `t=[B] long`, `noise=[B,4,h,w]`, `rgb_as_latents=bool`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.guidance.diffusion_loading import (
    SD_GUIDANCE_FILES,
    FrozenModels,
    default_device,
    freeze,
    resolve_model,
    weights_dtype,
)
from lift3d.guidance.sds import (
    ScoreDistillationGuidance,
    classifier_free_guidance,
    half_precision_mode,
    resize_nchw,
)
from lift3d.registry import register

KEY = "system.guidance.pretrained_model_name_or_path"


def require_text_embeddings(prompt_utils: Any, guidance_name: str) -> None:
    """ConfigError unless `prompt_utils` gives text embeddings (stable-diffusion-prompt-processor's output)."""
    if prompt_utils is None or not hasattr(prompt_utils, "get_text_embeddings"):
        raise ConfigError(
            f"{guidance_name} needs text embeddings: set system.prompt_processor_type="
            "stable-diffusion-prompt-processor and system.prompt_processor.prompt."
        )


@register("stable-diffusion-guidance")
class StableDiffusionGuidance(ScoreDistillationGuidance):
    @dataclass
    class Config(ScoreDistillationGuidance.Config):
        pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
        guidance_scale: float = 100.0
        rgb_as_latents: bool = False  # the guided image is already 4-channel latents [B,H,W,4]
        view_dependent_prompting: bool = True
        # threestudio keys, accepted: xformers is not needed (PyTorch SDPA is the default attention)
        enable_memory_efficient_attention: bool = False
        enable_sequential_cpu_offload: bool = False

    WHAT = f"Stable Diffusion for {KEY}"

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        super().validate_config(cfg)
        if cfg.enable_sequential_cpu_offload:
            raise ConfigError("system.guidance.enable_sequential_cpu_offload=true is not supported: set it to false.")
        resolve_model(cfg.pretrained_model_name_or_path, cls.WHAT, SD_GUIDANCE_FILES)

    def configure(self) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        self.validate_config(self.cfg)
        self.model_path = resolve_model(self.cfg.pretrained_model_name_or_path, self.WHAT, SD_GUIDANCE_FILES)
        self.precision_mode = half_precision_mode(self.cfg.half_precision_weights)
        self.device = default_device()
        self.weights_dtype = weights_dtype(self.precision_mode, self.device)
        # loaded as stored, then cast (the `dtype` / `torch_dtype` keyword differs across diffusers versions)
        self.models = FrozenModels(
            unet=freeze(UNet2DConditionModel.from_pretrained(self.model_path, subfolder="unet")),
            vae=freeze(AutoencoderKL.from_pretrained(self.model_path, subfolder="vae")),
        )
        self.models.apply_memory_options(self.cfg.enable_attention_slicing, self.cfg.enable_channels_last)
        self.models.to(self.device, self.weights_dtype)
        scheduler = DDPMScheduler.from_pretrained(self.model_path, subfolder="scheduler")
        self.set_noise_schedule(scheduler.alphas_cumprod)
        self.scaling_factor = float(self.models.vae.config.scaling_factor)
        vae_factor = 2 ** (len(self.models.vae.config.block_out_channels) - 1)
        self.resolution = int(self.cfg.resolution or self.models.unet.config.sample_size * vae_factor)
        self.latent_resolution = self.resolution // vae_factor

    @property
    def unet(self) -> Any:
        return self.models.unet

    @property
    def vae(self) -> Any:
        return self.models.vae

    def to(self, device: torch.device | str) -> "StableDiffusionGuidance":
        device = torch.device(device)
        dtype = weights_dtype(self.precision_mode, device)
        self.models.to(device, dtype)
        self.device, self.weights_dtype = device, dtype
        return self

    # ------------------------------------------------------------------ model calls
    def encode_images(self, images: Tensor, sample: bool = True) -> Tensor:
        """images [B,3,H,W] in [0,1] -> scaled latents [B,4,h,w] (differentiable, in images' dtype);
        a posterior sample, or its mode (mean) with sample=False (deterministic: SDEdit, DreamBooth)."""
        x = (images * 2.0 - 1.0).to(self.weights_dtype)
        posterior = self.vae.encode(x).latent_dist
        latents = posterior.sample() if sample else posterior.mode()
        return (latents * self.scaling_factor).to(images.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """scaled latents [B,4,h,w] -> images [B,H,W,3] in [0,1]."""
        x = self.vae.decode((latents / self.scaling_factor).to(self.weights_dtype)).sample
        return (x.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)

    def predict_noise(self, z_t: Tensor, t: Tensor, text_embeddings: Tensor) -> Tensor:
        """UNet eps prediction: z_t [N,4,h,w], t [N], text [N,77,D] -> [N,4,h,w] (z_t's dtype)."""
        out = self.unet(z_t.to(self.weights_dtype), t, encoder_hidden_states=text_embeddings.to(self.weights_dtype))
        return out.sample.to(z_t.dtype)

    def guided_noise(self, z_t: Tensor, t: Tensor, text_embeddings: Tensor) -> Tensor:
        """eps_u + s (eps_c - eps_u) from one UNet call on [z_t; z_t]; text_embeddings [2B,77,D] (cond, uncond)."""
        eps = self.predict_noise(torch.cat([z_t, z_t]), torch.cat([t, t]), text_embeddings)
        eps_cond, eps_uncond = eps.chunk(2)
        return classifier_free_guidance(eps_uncond, eps_cond, self.cfg.guidance_scale)

    # ------------------------------------------------------------------ SDS
    def get_latents(self, image: Tensor, rgb_as_latents: bool) -> Tensor:
        """image [B,H,W,C] -> latents [B,4,res/8,res/8]."""
        x = image.permute(0, 3, 1, 2)
        if rgb_as_latents:
            if x.shape[1] != 4:
                raise ValueError(f"rgb_as_latents expects a 4-channel image [B,H,W,4], got {tuple(image.shape)}")
            return resize_nchw(x, self.latent_resolution)
        return self.encode_images(resize_nchw(x[:, :3], self.resolution))

    def sds_from_latents(
        self, latents: Tensor, text_embeddings: Tensor, t: Optional[Tensor] = None, noise: Optional[Tensor] = None,
        render: Optional[Tensor] = None,
    ) -> dict[str, Any]:
        """The SDS step on latents [B,4,h,w] with text embeddings [2B,77,D] (cond then uncond)."""
        text_embeddings = text_embeddings.to(latents.device)
        return self.distill(
            latents, lambda z_t, tt, _noise: self.guided_noise(z_t, tt, text_embeddings),
            t=t, noise=noise, decode=self.decode_latents, render=render,
        )

    def __call__(
        self,
        image: Tensor,
        batch: dict[str, Any],
        prompt_utils: Any = None,
        render_out: Optional[dict[str, Tensor]] = None,
        rgb_as_latents: Optional[bool] = None,
        t: Optional[Tensor] = None,
        noise: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        require_text_embeddings(prompt_utils, "stable-diffusion-guidance")
        as_latents = self.cfg.rgb_as_latents if rgb_as_latents is None else rgb_as_latents
        latents = self.get_latents(image, as_latents)  # [B,4,h,w]
        text = prompt_utils.get_text_embeddings(
            batch["elevation"], batch["azimuth"], batch.get("camera_distances"), self.cfg.view_dependent_prompting
        )
        return self.sds_from_latents(latents, text, t=t, noise=noise, render=None if as_latents else image)


__all__ = ["StableDiffusionGuidance", "require_text_embeddings"]
