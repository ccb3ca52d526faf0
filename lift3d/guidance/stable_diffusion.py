"""`stable-diffusion-guidance`: DreamFusion's score distillation (arXiv 2209.14988 §3) with Stable
Diffusion (SD 2.1-base by default; lift3d.models.stable_diffusion.StableDiffusion).

Per call (image [B,H,W,3] in [0,1], the render of `system.guidance_input`):
  1. resize to `resolution`² (bilinear; default the model's native 512) and encode with SD's VAE
     (posterior sample x 0.18215) -> latents [B,4,res/8,res/8]; with `rgb_as_latents` the image
     is already 4-channel latents [B,H,W,4] (e.g. Fantasia3D's normal+mask) and is only resized
     to res/8 (no VAE);
  2. text embeddings of the view direction of each camera from `prompt_utils`
     (stable-diffusion-prompt-processor), conditional and negative;
  3. the distillation step of lift3d.guidance.sds: t ~ U{min_step..max_step}, z_t, one UNet call on
     the batch [z_t, z_t] with [cond, uncond] text, classifier-free guidance in `cfg_form`
     (threestudio's eps_c + s (eps_c - eps_u) by default; with the prompt processor's `use_perp_neg`,
     Perp-Neg's eps_u + s (e_pos + sum_k w_k perp(e_k, e_pos)) on 4B rows, lift3d.guidance.perp_neg),
     grad = w(t) (eps - noise),
     `loss_sds` = 0.5 ||z - stopgrad(z - grad)||² / B.

The model is loaded once per process and shared (lift3d.models.diffusion), fp16 on GPU and fp32 on
CPU (`half_precision_weights: auto`), never in checkpoints. It is found in `validate_config`, before
any work starts. Keyword overrides for tests and callers: `t=[B] long`, `noise=[B,4,h,w]`,
`rgb_as_latents=bool`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.guidance.hifa import HiFAOptions
from lift3d.guidance.perp_neg import PerpNegText, perp_neg_scale
from lift3d.guidance.sds import Prediction, ScoreDistillationGuidance, resize_nchw
from lift3d.guidance.sjc import SJCOptions
from lift3d.models.stable_diffusion import StableDiffusion
from lift3d.registry import register


def require_text_embeddings(prompt_utils: Any, guidance_name: str) -> None:
    """ConfigError unless `prompt_utils` gives text embeddings (stable-diffusion-prompt-processor's output)."""
    if prompt_utils is None or not hasattr(prompt_utils, "get_text_embeddings"):
        raise ConfigError(
            f"{guidance_name} needs text embeddings: set system.prompt_processor_type="
            "stable-diffusion-prompt-processor and system.prompt_processor.prompt."
        )


@register("stable-diffusion-guidance")
class StableDiffusionGuidance(SJCOptions, HiFAOptions, ScoreDistillationGuidance):
    @dataclass
    class Config(ScoreDistillationGuidance.Config):
        pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
        guidance_scale: float = 100.0
        cfg_form: str = "threestudio"  # threestudio's eps_c + s (eps_c - eps_u) (docs/faithfulness.md)
        rgb_as_latents: bool = False  # the guided image is already 4-channel latents [B,H,W,4]
        view_dependent_prompting: bool = True
        # threestudio keys, accepted: xformers is not needed (PyTorch SDPA is the default attention)
        enable_memory_efficient_attention: bool = False
        enable_sequential_cpu_offload: bool = False
        # HiFA (lift3d.guidance.hifa, docs/methods/hifa.md): annealed timestep, image-space loss_sds_img
        sqrt_anneal: bool = False
        trainer_max_steps: int = 25000
        use_img_loss: bool = False
        # SJC (lift3d.guidance.sjc, docs/methods/sjc.md): uniform weight; var_red=false drops the noise baseline
        use_sjc: bool = False
        var_red: bool = True

    model_class = StableDiffusion
    supports_perp_neg = True  # guided_noise combines Perp-Neg's PerpNegText (lift3d.guidance.perp_neg)
    produces = ("loss_sds", "loss_sds_img")  # loss_sds_img with use_img_loss (HiFA)
    shared_model = True  # False where the guidance changes the UNet (X-Dreamer's processors)

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        super().validate_config(cfg, path)
        if cfg.enable_sequential_cpu_offload:
            raise ConfigError(f"{path}.enable_sequential_cpu_offload=true is not supported: set it to false.")
        cls.validate_hifa(cfg, path)
        cls.validate_sjc(cfg, path)
        cls.model_class.resolve(cfg.pretrained_model_name_or_path, cls.model_what(path))

    def configure(self) -> None:
        self.validate_config(self.cfg)
        self.use_model(self.load_model(self.model_class, self.cfg.pretrained_model_name_or_path, self.model_what(),
                                       shared=self.shared_model))

    # ------------------------------------------------------------------ SDS
    def get_latents(self, image: Tensor, rgb_as_latents: bool) -> Tensor:
        """image [B,H,W,C] -> latents [B,4,res/8,res/8]."""
        if rgb_as_latents:
            x = image.permute(0, 3, 1, 2)
            if x.shape[1] != 4:
                raise ValueError(f"rgb_as_latents expects a 4-channel image [B,H,W,4], got {tuple(image.shape)}")
            return resize_nchw(x, self.latent_resolution)
        return self.encode(image)

    def guided_noise(self, z_t: Tensor, t: Tensor, text_embeddings: Tensor, noise: Optional[Tensor] = None) -> Tensor:
        """Guided eps from one UNet call on [z_t; z_t]; text_embeddings [2B,77,D] (cond, uncond), or
        Perp-Neg's PerpNegText (lift3d.guidance.perp_neg: one call on its (2+K)B rows)."""
        if isinstance(text_embeddings, PerpNegText):
            return text_embeddings.guided_noise(self.model.predict_noise, z_t, t, perp_neg_scale(self.cfg.guidance_scale))
        eps = self.model.predict_noise(torch.cat([z_t, z_t]), torch.cat([t, t]), text_embeddings)
        eps_cond, eps_uncond = eps.chunk(2)
        return self.guide(eps_cond, eps_uncond)

    def text_predictor(self, text_embeddings: Tensor):
        """predict(z_t, t, noise, extra) of this guidance for text embeddings [2B,77,D] (cond then uncond)."""
        return lambda z_t, t, noise, extra: Prediction(self.guided_noise(z_t, t, text_embeddings, noise))

    def sds_from_latents(
        self, latents: Tensor, text_embeddings: Tensor, t: Optional[Tensor] = None, noise: Optional[Tensor] = None,
        render: Optional[Tensor] = None,
    ) -> dict[str, Any]:
        """The distillation step on latents [B,4,h,w] with text embeddings [2B,77,D] (cond then uncond)."""
        predict = self.text_predictor(text_embeddings.to(latents.device))
        step = self.distill(latents, predict, t=t, noise=noise)
        self.add_image_space_loss(step, render)  # HiFA's loss_sds_img, when use_img_loss
        self.add_guidance_eval(step, predict, render)
        return self.name_losses(step.out)

    def name_losses(self, out: dict[str, Any]) -> dict[str, Any]:
        """Renames of the step's loss for subclasses (USD's loss_usd)."""
        return out

    def text_embeddings(self, prompt_utils: Any, batch: dict[str, Any]) -> Tensor:
        """[2B,77,D]: the view-dependent prompt of each camera, then its negative prompt (with the prompt
        processor's use_perp_neg: Perp-Neg's PerpNegText, lift3d.guidance.perp_neg)."""
        if getattr(prompt_utils, "use_perp_neg", False):
            return prompt_utils.get_text_embeddings_perp_neg(
                batch["elevation"], batch["azimuth"], batch.get("camera_distances"), self.cfg.view_dependent_prompting)
        return prompt_utils.get_text_embeddings(
            batch["elevation"], batch["azimuth"], batch.get("camera_distances"), self.cfg.view_dependent_prompting
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
        require_text_embeddings(prompt_utils, self.registered_name())
        as_latents = self.cfg.rgb_as_latents if rgb_as_latents is None else rgb_as_latents
        latents = self.get_latents(image, as_latents)  # [B,4,h,w]
        text = self.text_embeddings(prompt_utils, batch)
        return self.sds_from_latents(latents, text, t=t, noise=noise, render=None if as_latents else image)

    @classmethod
    def registered_name(cls) -> str:
        from lift3d.registry import name_of

        return name_of(cls)


__all__ = ["StableDiffusionGuidance", "require_text_embeddings"]
