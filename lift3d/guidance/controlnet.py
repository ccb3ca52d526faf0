"""`stable-diffusion-controlnet-guidance` (alias `controlnet-guidance`): Stable Diffusion steered by a
ControlNet (Zhang et al., arXiv 2302.05543 §3) on a normal, canny or depth condition — threestudio's
ControlNet guidance, used by Control4D (Shao et al., arXiv 2305.20082 v1 §3, its 2D diffusion-based editor)
to edit a render under the condition. docs/methods/control4d.md §"ControlNet guidance".

Models: SD (`pretrained_model_name_or_path`, SD 1.5 family) + a ControlNetModel
(`controlnet_name_or_path`; null: threestudio's choice for `control_type` — lllyasviel/control_v11p_sd15_normalbae,
control_v11p_sd15_canny, control_v11f1p_sd15_depth), through lift3d.models.stable_diffusion_controlnet.
Both are found in `validate_config`, before any work.

Per call (`image` [B,H,W,3] in [0,1], the render to edit or distil):
  1. the control image [B,3,res,res] (lift3d.guidance.control_conditions): canny edges of `cond_rgb`
     (the photo the view shows; default: `image`), the render's normals in the camera frame
     (`render_out` comp_normal + opacity, `batch` c2w) or its inverse depth;
  2. text embeddings of the plain prompt (no view-dependent prompting, as threestudio), [cond; uncond];
  3. t ~ U{min_step..max_step} (min/max_step_percent of the 1000 training steps), one t per call in the
     edit mode (threestudio edits one view at a time);
  4. `use_sds: false` (threestudio's default), the edit mode: the render's latents noised to t and
     denoised back in `diffusion_steps` DDIM steps (lift3d.models.ddim) under the condition, classifier-free
     guidance eps_u + s (eps_c - eps_u) with s = `guidance_scale` and the ControlNet's residuals scaled by
     `condition_scale` -> {"edit_images": [B,H,W,3]} (no loss; the system uses the image as a target);
     `use_sds: true`: the same guided prediction at z_t in the shared SDS step (lift3d.guidance.sds):
     grad = (1 - alphabar_t)(eps - noise) -> {"loss_sds", ...}.

threestudio keys accepted with their meaning: cache_dir (null only: lift3d finds models in the Hugging
Face cache, HF_HUB_CACHE), ddim_scheduler_name_or_path (threestudio reads SD 1.5's DDIM schedule there; lift3d uses the model's own
scheduler/, the same scaled-linear schedule for every SD 1.x), enable_memory_efficient_attention (PyTorch's
SDPA is always used), canny_lower_bound / canny_upper_bound (thresholds on 0..255).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.guidance.control_conditions import CONTROL_TYPES, canny_control, depth_control, normal_control
from lift3d.guidance.sds import Prediction, ScoreDistillationGuidance, resize_nchw
from lift3d.guidance.stable_diffusion import require_text_embeddings
from lift3d.models.ddim import ddim_edit
from lift3d.models.frozen import resolve_model
from lift3d.models.stable_diffusion_controlnet import StableDiffusionControlNet
from lift3d.registry import register

# threestudio's ControlNet for each control type (controlnet_name_or_path: null)
DEFAULT_CONTROLNETS = {
    "normal": "lllyasviel/control_v11p_sd15_normalbae",
    "canny": "lllyasviel/control_v11p_sd15_canny",
    "depth": "lllyasviel/control_v11f1p_sd15_depth",
}
CANNY_BLUR = 5  # threestudio blurs the photo with a 5×5 box before Canny


@register("stable-diffusion-controlnet-guidance")
class ControlNetGuidance(ScoreDistillationGuidance):
    @dataclass
    class Config(ScoreDistillationGuidance.Config):
        pretrained_model_name_or_path: str = "SG161222/Realistic_Vision_V2.0"
        controlnet_name_or_path: Optional[str] = None  # null: DEFAULT_CONTROLNETS[control_type]
        ddim_scheduler_name_or_path: str = "runwayml/stable-diffusion-v1-5"  # accepted; see the module docstring
        cache_dir: Optional[str] = None
        control_type: str = "normal"  # normal | canny | depth
        guidance_scale: float = 7.5
        cfg_form: str = "standard"  # threestudio's ControlNet guidance: eps_u + s (eps_c - eps_u)
        condition_scale: float = 1.5  # the ControlNet residuals' scale
        half_precision_weights: Any = "auto"
        min_step_percent: Any = 0.02
        max_step_percent: Any = 0.98
        diffusion_steps: int = 20  # DDIM steps of the edit mode
        use_sds: bool = False  # false: edit mode (edit_images); true: loss_sds
        canny_lower_bound: int = 50
        canny_upper_bound: int = 100
        enable_memory_efficient_attention: bool = False
        enable_sequential_cpu_offload: bool = False

    model_class = StableDiffusionControlNet
    produces = ("loss_sds",)

    # ------------------------------------------------------------------ validation and loading
    @classmethod
    def controlnet_path(cls, cfg: Any) -> str:
        return cfg.controlnet_name_or_path or DEFAULT_CONTROLNETS[cfg.control_type]

    @classmethod
    def controlnet_what(cls, path: str = "system.guidance") -> str:
        return f"the ControlNet for {path}.controlnet_name_or_path"

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        super().validate_config(cfg, path)
        if cfg.control_type not in CONTROL_TYPES:
            raise ConfigError(f"{path}.control_type = '{cfg.control_type}' is unknown: use one of {', '.join(CONTROL_TYPES)}.")
        if cfg.diffusion_steps < 1:
            raise ConfigError(f"{path}.diffusion_steps = {cfg.diffusion_steps}: give at least 1 DDIM step.")
        if cfg.condition_scale < 0:
            raise ConfigError(f"{path}.condition_scale = {cfg.condition_scale} is negative: use 0 (no control) or more.")
        if not 0 <= cfg.canny_lower_bound <= cfg.canny_upper_bound:
            raise ConfigError(f"{path}.canny_lower_bound / canny_upper_bound = {cfg.canny_lower_bound} / "
                              f"{cfg.canny_upper_bound}: give 0 <= lower <= upper (0..255 scale).")
        if cfg.cache_dir:
            raise ConfigError(f"{path}.cache_dir is not read by lift3d (models are found in the Hugging Face cache): "
                              f"remove it and set the HF_HUB_CACHE environment variable to that folder instead.")
        if cfg.enable_sequential_cpu_offload:
            raise ConfigError(f"{path}.enable_sequential_cpu_offload=true is not supported: set it to false.")
        cls.model_class.resolve(cfg.pretrained_model_name_or_path, cls.model_what(path))
        resolve_model(cls.controlnet_path(cfg), cls.controlnet_what(path), StableDiffusionControlNet.CONTROLNET_FILES)

    def configure(self) -> None:
        self.validate_config(self.cfg)
        self.use_model(self.load_model(self.model_class, self.cfg.pretrained_model_name_or_path, self.model_what(),
                                       controlnet_name_or_path=self.controlnet_path(self.cfg),
                                       controlnet_what=self.controlnet_what()))

    # ------------------------------------------------------------------ the condition
    def control_image(self, image: Tensor, batch: Optional[dict[str, Any]], render_out: Optional[dict[str, Tensor]],
                      cond_rgb: Optional[Tensor]) -> Tensor:
        """[B,3,res,res] in [0,1] for `control_type` (see the module docstring)."""
        kind = self.cfg.control_type
        if kind == "canny":
            source = image if cond_rgb is None else cond_rgb
            control = canny_control(source.detach().float(), self.cfg.canny_lower_bound, self.cfg.canny_upper_bound,
                                    CANNY_BLUR)
        else:
            key = "comp_normal" if kind == "normal" else "depth"
            if render_out is None or key not in render_out or "opacity" not in render_out:
                raise ValueError(f"control_type '{kind}' is computed from the render: pass render_out with {key} and opacity")
            out = {k: v.detach().float() for k, v in render_out.items() if k in (key, "opacity")}
            if kind == "normal":
                if batch is None or "c2w" not in batch:
                    raise ValueError("control_type 'normal' needs the camera (batch['c2w'] [B,4,4]) for camera-space normals")
                control = normal_control(out["comp_normal"], out["opacity"], batch["c2w"].float())
            else:
                control = depth_control(out["depth"], out["opacity"])
        return resize_nchw(control, self.resolution).to(self.device)

    def text_embeddings(self, prompt_utils: Any, batch_size: int) -> Tensor:
        """[2B,77,D] of the plain prompt (threestudio's ControlNet guidance is not view-dependent)."""
        zeros = torch.zeros(batch_size)
        return prompt_utils.get_text_embeddings(zeros, zeros, zeros, False).to(self.device)

    # ------------------------------------------------------------------ the guided prediction
    def guided_noise(self, z_t: Tensor, t: Tensor, text: Tensor, control: Tensor,
                     condition_scale: Optional[float] = None) -> Tensor:
        """CFG of one UNet + ControlNet call on [z_t; z_t] with text [2B,77,D] (cond, uncond) and the
        control image [B,3,res,res] (both halves see it)."""
        scale = self.cfg.condition_scale if condition_scale is None else condition_scale
        eps = self.model.predict_noise(torch.cat([z_t, z_t]), torch.cat([t, t]), text,
                                       control_image=torch.cat([control, control]), conditioning_scale=scale)
        eps_cond, eps_uncond = eps.chunk(2)
        return self.guide(eps_cond, eps_uncond)

    @torch.no_grad()
    def edit_latents(self, latents: Tensor, text: Tensor, control: Tensor, t: int,
                     noise: Optional[Tensor] = None) -> Tensor:
        """latents [B,4,h,w] noised to t, then DDIM back to 0 in diffusion_steps steps under the condition."""
        noise = torch.randn_like(latents) if noise is None else noise.to(latents)

        def eps_fn(z_t: Tensor, step: Tensor) -> Tensor:
            return self.guided_noise(z_t, step, text, control)

        return ddim_edit(latents, t, noise, self.cfg.diffusion_steps, eps_fn, self.alphas_cumprod)

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
        """image [B,H,W,3] in [0,1]; cond_rgb [B,H,W,3] (canny's source); -> edit_images [B,H,W,3] or loss_sds."""
        from lift3d.registry import name_of

        require_text_embeddings(prompt_utils, name_of(type(self)))
        B, H, W, _ = image.shape
        control = self.control_image(image, batch, render_out, cond_rgb)
        text = self.text_embeddings(prompt_utils, B)
        if self.cfg.use_sds:
            latents = self.encode(image)  # [B,4,h,w], differentiable
            predict = lambda z_t, tt, n, extra: Prediction(self.guided_noise(z_t, tt, text, control))  # noqa: E731
            step = self.distill(latents, predict, t=t, noise=noise)
            return step.out
        with torch.no_grad():
            latents = self.encode(image.detach())
            step_t = int(self.sample_timesteps(1, "cpu")[0]) if t is None else int(torch.as_tensor(t).reshape(-1)[0])
            edited = self.model.decode_latents(self.edit_latents(latents, text, control, step_t, noise))  # [B,h',w',3]
            edited = F.interpolate(edited.permute(0, 3, 1, 2), size=(H, W), mode="bilinear", align_corners=False)
        return {"edit_images": edited.permute(0, 2, 3, 1).to(image.dtype), "timestep": torch.tensor(float(step_t))}


@register("controlnet-guidance")
class ControlNetGuidanceAlias(ControlNetGuidance):
    """threestudio's older name of the same guidance (configs/debugging/controlnet-canny.yaml)."""


__all__ = ["CANNY_BLUR", "ControlNetGuidance", "ControlNetGuidanceAlias", "DEFAULT_CONTROLNETS"]
