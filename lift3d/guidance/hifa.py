"""HiFA's two options of the Stable Diffusion guidance path (docs/methods/hifa.md; Zhu & Zhuang, HiFA,
arXiv 2305.18766): an annealed timestep and an image-space score-distillation loss.

Keys of `stable-diffusion-guidance` (threestudio's names and meanings, configs/hifa.yaml):

- `sqrt_anneal: true` — one deterministic timestep per step instead of t ~ U{min..max}
  (HiFA §3.3, "timestep annealing"):
      p(step)   = sqrt(step / trainer_max_steps)
      percent   = (max_step_percent - min_step_percent) * (1 - p) + min_step_percent
      min_step  = max_step = int(T * percent)
  so t falls from max_step_percent·T at step 0 to min_step_percent·T at `trainer_max_steps`.
  A scheduled `max_step_percent` ([start_step, start_value, end_value, end_step]) enters as its start
  value, as threestudio's anneal reads it (`min_step_percent` is evaluated at the step).
- `use_img_loss: true` — also `loss_sds_img` (HiFA §3.2, weight `system.loss.lambda_sds_img`):
  the one-step denoised image x̂ = decode((z_t - sigma_t eps_guided) / alpha_t) is a target for the
  render x itself (the render resized to the guidance resolution, [B,3,res,res] in [0,1]),
      grad_img      = w(t) * (x - x̂) * alpha_t / sigma_t
      loss_sds_img  = 0.5 * || x - stopgrad(x - grad_img) ||^2 / B         (d/dx = grad_img / B)
  with alpha_t = sqrt(alphabar_t), sigma_t = sqrt(1 - alphabar_t), NaNs zeroed and `grad_clip`
  applied to grad_img as to the latent gradient.
  For VSD (stable-diffusion-vsd-guidance `loss_vsd_img`, the unified guidance's VSD mode
  `loss_sd_img`; threestudio's HiFA port) the render x in grad_img is replaced by the one-step image
  of the *second* score, decode((z_t - sigma_t eps_lora) / alpha_t): SDS's second score is the sampled
  noise, whose one-step image is the render's own latent, so the SDS form is that case with x kept.

Both compose with `ScoreDistillationGuidance.distill`: the distillation step is the one SDS step of
lift3d.guidance.sds (its z_t, t and guided noise are reused here); nothing of it is repeated.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.guidance.sds import DistillStep, resize_nchw, sds_gradient, sds_loss, sds_weight, timestep_range
from lift3d.models.noise_schedule import predict_x0
from lift3d.utils.schedule import C


def sqrt_anneal_percent(global_step: int, trainer_max_steps: int, min_percent: float, max_percent: float) -> float:
    """The annealed timestep as a fraction of T at `global_step` (see the module docstring)."""
    progress = (float(global_step) / float(trainer_max_steps)) ** 0.5
    return (max_percent - min_percent) * (1.0 - progress) + min_percent


def image_space_gradient(image: Tensor, denoised: Tensor, alphas_cumprod: Tensor, t: Tensor, strategy: str,
                         grad_clip: Optional[float] = None) -> Tensor:
    """grad_img [B,3,H,W] = w(t) (image - denoised) alpha_t / sigma_t (both images [B,3,H,W] in [0,1])."""
    a = alphas_cumprod.to(image.device, torch.float32)[t.long()].reshape(-1, 1, 1, 1)
    ratio = a.sqrt() / (1.0 - a).sqrt()  # alpha_t / sigma_t
    # sds_gradient(x, y, w) = w (x - y), NaNs zeroed, clamped: the same rule as the latent gradient
    return sds_gradient(image.detach() * ratio, denoised.to(image) * ratio, sds_weight(alphas_cumprod, t, strategy),
                        grad_clip)


def anneal_start_percent(max_step_percent: Any, epoch: int, global_step: int) -> float:
    """The max_step_percent the sqrt anneal starts from: a number as given, a schedule list
    [start_step, start_value, end_value, end_step] by its start value (threestudio reads index 1)."""
    if isinstance(max_step_percent, (int, float)):
        return float(max_step_percent)
    values = list(max_step_percent)
    return float(values[1]) if len(values) >= 2 else float(C(max_step_percent, epoch, global_step))


class HiFAOptions:
    """Mixin for a `ScoreDistillationGuidance` whose Config has `sqrt_anneal`, `trainer_max_steps` and
    `use_img_loss` (stable-diffusion-guidance): the annealed timestep in `update_step` and
    `add_image_space_loss` after the distillation step."""

    @classmethod
    def validate_hifa(cls, cfg: Any, path: str) -> None:
        if cfg.sqrt_anneal and int(cfg.trainer_max_steps) <= 0:
            raise ConfigError(f"{path}.trainer_max_steps = {cfg.trainer_max_steps}: sqrt_anneal needs the run's "
                              f"step count (> 0), e.g. {path}.trainer_max_steps=${{trainer.max_steps}}.")
        if cfg.use_img_loss and getattr(cfg, "rgb_as_latents", False):
            raise ConfigError(f"{path}.use_img_loss=true needs an RGB render, but {path}.rgb_as_latents=true: "
                              f"set one of them to false.")

    def update_step(self, epoch: int, global_step: int) -> None:
        super().update_step(epoch, global_step)  # type: ignore[misc]
        if self.cfg.sqrt_anneal and hasattr(self, "alphas_cumprod"):
            percent = sqrt_anneal_percent(
                min(global_step, int(self.cfg.trainer_max_steps)), int(self.cfg.trainer_max_steps),
                C(self.cfg.min_step_percent, epoch, global_step),
                anneal_start_percent(self.cfg.max_step_percent, epoch, global_step),
            )
            self.min_step, self.max_step = timestep_range(self.num_train_timesteps, percent, percent)

    def one_step_image(self, step: DistillStep, eps: Tensor) -> Tensor:
        """decode((z_t - sigma_t eps) / alpha_t) for the step's z_t [B,4,h,w]: [B,3,res,res] in [0,1], no gradient."""
        x0 = predict_x0(step.z_t, eps, step.t, self.alphas_cumprod)  # [B,4,h,w]
        with torch.no_grad():
            return self.model.decode_latents(x0).permute(0, 3, 1, 2)

    def add_image_space_loss(self, step: DistillStep, render: Optional[Tensor], eps_pretrained: Optional[Tensor] = None,
                             eps_estimate: Optional[Tensor] = None, name: str = "loss_sds_img") -> None:
        """With `use_img_loss`, step.out[name] for the render [B,H,W,C] in [0,1] the step's latents were
        encoded from (the step's z_t and t; one VAE decode per score, no gradient through them).

        eps_pretrained [B,4,h,w]: the pretrained guided noise (default the step's guided noise, SDS);
        eps_estimate: VSD's second score (the LoRA's noise), whose one-step image replaces the render
        as the point the target is measured from (module docstring); None for SDS."""
        if not self.cfg.use_img_loss or render is None:
            return
        image = resize_nchw(render.permute(0, 3, 1, 2)[:, :3], self.resolution)  # [B,3,res,res], differentiable
        denoised = self.one_step_image(step, step.eps_guided if eps_pretrained is None else eps_pretrained)
        start = image if eps_estimate is None else self.one_step_image(step, eps_estimate)  # [B,3,res,res]
        grad_img = image_space_gradient(start, denoised, self.alphas_cumprod, step.t, self.cfg.weighting_strategy,
                                        self.grad_clip_val)
        step.out[name] = sds_loss(image, grad_img)


__all__ = ["HiFAOptions", "anneal_start_percent", "image_space_gradient", "sqrt_anneal_percent"]
