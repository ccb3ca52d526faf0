"""`deep-floyd-guidance`: DreamFusion's score distillation (arXiv 2209.14988 §3) in the pixel space of
DeepFloyd IF stage I (lift3d.models.deepfloyd_if.DeepFloydIF; docs/methods/deepfloyd-if.md).

Per call (image [B,H,W,3] in [0,1], the render of `system.guidance_input`):
  1. x = resize(image, 64²) * 2 - 1: the image itself is the denoiser's input [B,3,64,64] (no VAE;
     `resolution`: null = the model's native 64, the tiny test models' 16);
  2. T5 text embeddings [2B,77,D_t5] of each camera's view-dependent prompt and its negative prompt,
     from `deep-floyd-prompt-processor`;
  3. the distillation step of lift3d.guidance.sds (`ScoreDistillationGuidance.distill`): one UNet call on
     [x_t; x_t] with [cond; uncond] text; IF's UNet returns 6 channels (noise, learned variance) and
     only the noise half is used (DeepFloydIF.predict_noise); classifier-free guidance in threestudio's
     IF form eps_c + s (eps_c - eps_u) (`cfg_form: threestudio`, s = `guidance_scale`, 20 by default);
     grad = w(t) (eps_cfg - eps); `loss_sds` = 0.5 ||x - stopgrad(x - grad)||² / B.

All of it is `stable-diffusion-guidance` with IF as the model: only the model class, the defaults
(threestudio's deep_floyd_guidance: guidance_scale 20, channels-last UNet) and the checks differ.
threestudio keys accepted: enable_memory_efficient_attention (PyTorch SDPA is used anyway),
enable_sequential_cpu_offload (false only), enable_attention_slicing, enable_channels_last_format,
half_precision_weights (true/false/auto), grad_clip, weighting_strategy, min/max_step_percent,
view_dependent_prompting. Keyword overrides for tests: `t=[B] long`, `noise=[B,3,64,64]`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.guidance.stable_diffusion import StableDiffusionGuidance
from lift3d.models.deepfloyd_if import DeepFloydIF
from lift3d.registry import register


@register("deep-floyd-guidance")
class DeepFloydGuidance(StableDiffusionGuidance):
    @dataclass
    class Config(StableDiffusionGuidance.Config):
        pretrained_model_name_or_path: str = "DeepFloyd/IF-I-XL-v1.0"
        guidance_scale: float = 20.0
        cfg_form: str = "threestudio"  # eps_c + s (eps_c - eps_u), as threestudio's IF guidance
        enable_channels_last_format: bool = True  # threestudio's key: the UNet in channels-last memory layout

    model_class = DeepFloydIF

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        if cfg.rgb_as_latents:
            raise ConfigError(f"{path}.rgb_as_latents=true: DeepFloyd IF has no latent space (it denoises 64² RGB "
                              f"pixels); set it to false.")
        super().validate_config(cfg, path)

    def load_model(self, model_cls: type, name_or_path: str, what: str, shared: bool = True, **kwargs: Any) -> Any:
        return model_cls.load(
            name_or_path, what, half_precision_weights=self.cfg.half_precision_weights,
            enable_attention_slicing=self.cfg.enable_attention_slicing,
            enable_channels_last=self.cfg.enable_channels_last or self.cfg.enable_channels_last_format,
            shared=shared, **kwargs,
        )

    @property
    def text_width(self) -> int:
        """D of the text embeddings the UNet takes: T5's width, projected inside by encoder_hid_proj."""
        config = self.model.unet.config
        return int(config.encoder_hid_dim or config.cross_attention_dim)

    def text_embeddings(self, prompt_utils: Any, batch: dict[str, Any]) -> Tensor:
        """[2B,77,D_t5]: each camera's view-dependent prompt, then its negative prompt."""
        text = super().text_embeddings(prompt_utils, batch)
        if text.shape[-1] != self.text_width:
            raise ConfigError(
                f"{self.registered_name()} got text embeddings of width {text.shape[-1]}; the IF UNet takes T5 "
                f"embeddings of width {self.text_width}: set system.prompt_processor_type=deep-floyd-prompt-processor "
                f"with the same model folder as system.guidance.pretrained_model_name_or_path."
            )
        return text

    def __call__(self, image: Tensor, batch: dict[str, Any], prompt_utils: Any = None,
                 render_out: Optional[dict[str, Tensor]] = None, rgb_as_latents: Optional[bool] = None,
                 **kwargs: Any) -> dict[str, Any]:
        if prompt_utils is None or not hasattr(prompt_utils, "get_text_embeddings"):
            raise ConfigError(f"{self.registered_name()} needs T5 text embeddings: set system.prompt_processor_type="
                              f"deep-floyd-prompt-processor and system.prompt_processor.prompt.")
        if rgb_as_latents:
            raise ValueError("deep-floyd-guidance has no latent space: rgb_as_latents must be false")
        return super().__call__(image, batch, prompt_utils=prompt_utils, render_out=render_out,
                                rgb_as_latents=False, **kwargs)


__all__ = ["DeepFloydGuidance"]
