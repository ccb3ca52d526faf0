"""`instructpix2pix-guidance`: edits renders with InstructPix2Pix (lift3d.models.instruct_pix2pix) —
the image editor of InstructNeRF2NeRF's iterative dataset update (docs/methods/instructnerf2nerf.md §3).

`__call__(render [B,H,W,3], batch, prompt_utils, cond_rgb=[B,H,W,3])` with threestudio's keys:
  1. render and condition image (the view's ORIGINAL photo) resized to `resolution`² (the model's
     native 512; 64 for the tiny models); the render is encoded to latents z (VAE posterior sample,
     scaled), the condition to image latents c_I (posterior mode, unscaled);
  2. text embeddings of the edit instruction (`prompt_utils`, no view-dependent prompting): c_T, and
     the negative / empty prompt for the unconditional rows;
  3. t ~ U{min_step..max_step} (one t per call; `min/max_step_percent`), z_t = noise(z, t);
  4. `diffusion_steps` deterministic DDIM steps from t to the clean latent (lift3d.models.ddim: t,
     t (n-1)/n, ..., t/n, then 0), each on InstructPix2Pix's two-scale guidance (`guidance_scale` s_T
     for the instruction, `condition_scale` s_I for the image; eq. 3 of arXiv 2211.09800);
  5. decode and resize back to H x W: `edit_images` [B,H,W,3] in [0,1] (no gradient).
With `use_sds: true` the guidance instead returns `loss_sds`: one score-distillation step on z with the
same guided noise (lift3d.guidance.sds; weighting w(t) = 1 - alphabar_t, `grad_clip`).

Keys threestudio has that change nothing here: `cache_dir` (the Hugging Face cache is
HF_HOME's), `enable_memory_efficient_attention` (PyTorch's SDPA is used). `ddim_scheduler_name_or_path`:
null (lift3d's default) reads the noise schedule from the InstructPix2Pix folder itself (the same SD
schedule as threestudio's default CompVis/stable-diffusion-v1-4 scheduler); a folder / id reads that
scheduler's schedule. `half_precision_weights`: auto = fp16 on GPU, fp32 on CPU (true forces fp16).
Keyword overrides for tests: `t=[B] long` (every entry the same), `noise=[B,4,h,w]`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.guidance.sds import Prediction, ScoreDistillationGuidance, resize_nchw
from lift3d.guidance.stable_diffusion import require_text_embeddings
from lift3d.models.ddim import ddim_edit
from lift3d.models.frozen import resolve_model
from lift3d.models.instruct_pix2pix import InstructPix2Pix
from lift3d.registry import register


@register("instructpix2pix-guidance")
class InstructPix2PixGuidance(ScoreDistillationGuidance):
    @dataclass
    class Config(ScoreDistillationGuidance.Config):
        ip2p_name_or_path: str = "timbrooks/instruct-pix2pix"
        ddim_scheduler_name_or_path: Optional[str] = None  # null: the InstructPix2Pix folder's schedule
        cache_dir: Optional[str] = None  # accepted (the Hugging Face cache is HF_HOME's)
        guidance_scale: float = 7.5  # s_T, the instruction's scale
        condition_scale: float = 1.5  # s_I, the image condition's scale
        diffusion_steps: int = 20  # DDIM steps of one edit
        use_sds: bool = False  # return loss_sds instead of edited images
        enable_memory_efficient_attention: bool = False  # accepted (PyTorch SDPA)
        enable_sequential_cpu_offload: bool = False
        enable_channels_last_format: bool = False  # threestudio's name of enable_channels_last

    model_class = InstructPix2Pix
    produces = ("loss_sds",)  # with use_sds; otherwise `edit_images`

    @classmethod
    def model_what(cls, path: str = "system.guidance") -> str:
        return f"{cls.model_class.KIND} for {path}.ip2p_name_or_path"

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        super().validate_config(cfg, path)
        if cfg.enable_sequential_cpu_offload:
            raise ConfigError(f"{path}.enable_sequential_cpu_offload=true is not supported: set it to false.")
        if cfg.diffusion_steps < 1:
            raise ConfigError(f"{path}.diffusion_steps = {cfg.diffusion_steps}: give at least 1 DDIM step per edit.")
        cls.model_class.resolve(cfg.ip2p_name_or_path, cls.model_what(path))
        if cfg.ddim_scheduler_name_or_path:
            resolve_model(cfg.ddim_scheduler_name_or_path, f"the DDIM scheduler for {path}.ddim_scheduler_name_or_path",
                          ("scheduler/scheduler_config.json",))

    def configure(self) -> None:
        self.validate_config(self.cfg)
        model = self.load_model(self.model_class, self.cfg.ip2p_name_or_path, self.model_what(),
                                enable_channels_last=self.cfg.enable_channels_last or self.cfg.enable_channels_last_format)
        self.use_model(model)
        if self.cfg.ddim_scheduler_name_or_path:
            from diffusers import DDPMScheduler

            folder = resolve_model(self.cfg.ddim_scheduler_name_or_path, "the DDIM scheduler for "
                                   "system.guidance.ddim_scheduler_name_or_path", ("scheduler/scheduler_config.json",))
            self.set_noise_schedule(DDPMScheduler.from_pretrained(folder, subfolder="scheduler").alphas_cumprod)

    def load_model(self, model_cls: type, name_or_path: str, what: str, shared: bool = True,
                   enable_channels_last: bool = False, **kwargs: Any) -> Any:
        return model_cls.load(
            name_or_path, what, half_precision_weights=self.cfg.half_precision_weights,
            enable_attention_slicing=self.cfg.enable_attention_slicing,
            enable_channels_last=enable_channels_last, shared=shared, **kwargs,
        )

    # ------------------------------------------------------------------ pieces
    def condition_latents(self, cond_rgb: Tensor) -> Tensor:
        """The original view [B,H,W,3] in [0,1] -> image latents c_I [B,4,res/8,res/8]."""
        return self.model.encode_condition_images(resize_nchw(cond_rgb.permute(0, 3, 1, 2)[:, :3], self.resolution))

    def instruction_embeddings(self, prompt_utils: Any, batch_size: int) -> tuple[Tensor, Tensor]:
        """(c_T, uncond) text embeddings [B,77,D] each: the instruction and the negative prompt."""
        zeros = torch.zeros(batch_size)
        text = prompt_utils.get_text_embeddings(zeros, zeros, zeros, False)  # [2B,77,D] cond then uncond
        cond, uncond = text.chunk(2)
        return cond.to(self.device), uncond.to(self.device)

    def predictor(self, text_cond: Tensor, text_uncond: Tensor, image_latents: Tensor):
        """eps_fn(z_t, t) of the two-scale guidance for these conditions."""
        def eps_fn(z_t: Tensor, t: Tensor) -> Tensor:
            return self.model.guided_noise(z_t, t, text_cond, text_uncond, image_latents,
                                           float(self.cfg.guidance_scale), float(self.cfg.condition_scale))
        return eps_fn

    @torch.no_grad()
    def edit_latents(self, latents: Tensor, t: int, noise: Tensor, eps_fn: Any) -> Tensor:
        """Noise latents [B,4,h,w] to timestep t and denoise them in `diffusion_steps` DDIM steps."""
        return ddim_edit(latents, t, noise, self.cfg.diffusion_steps, eps_fn, self.alphas_cumprod)

    # ------------------------------------------------------------------ the call
    def __call__(
        self,
        image: Tensor,
        batch: Optional[dict[str, Any]] = None,
        prompt_utils: Any = None,
        render_out: Optional[dict[str, Tensor]] = None,
        cond_rgb: Optional[Tensor] = None,
        t: Optional[Tensor] = None,
        noise: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        require_text_embeddings(prompt_utils, "instructpix2pix-guidance")
        if cond_rgb is None:
            raise ValueError("instructpix2pix-guidance needs cond_rgb=[B,H,W,3], the view's original image")
        B, H, W, _ = image.shape
        text_cond, text_uncond = self.instruction_embeddings(prompt_utils, B)
        image_latents = self.condition_latents(cond_rgb.to(self.device))
        eps_fn = self.predictor(text_cond, text_uncond, image_latents)
        if t is None:
            t = self.sample_timesteps(1, "cpu").expand(B)
        if self.cfg.use_sds:
            latents = self.encode(image)
            step = self.distill(latents, lambda z_t, tt, n, extra: Prediction(eps_fn(z_t, tt)), t=t, noise=noise)
            return step.out
        with torch.no_grad():
            latents = self.encode(image.detach())
            noise = torch.randn_like(latents) if noise is None else noise.to(latents)
            if not bool((t == t.reshape(-1)[0]).all()):
                raise ValueError("instructpix2pix-guidance edits a batch at one timestep: give t with equal entries")
            edited = self.edit_latents(latents, int(t.reshape(-1)[0]), noise, eps_fn)
            images = self.model.decode_latents(edited)  # [B,res,res,3]
            images = F.interpolate(images.permute(0, 3, 1, 2), size=(H, W), mode="bilinear", align_corners=False)
        return {"edit_images": images.permute(0, 2, 3, 1).clamp(0, 1).to(image.dtype)}


__all__ = ["InstructPix2PixGuidance"]
