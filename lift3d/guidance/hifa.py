"""HiFA's two options of the Stable Diffusion guidance path (docs/methods/hifa.md; Zhu & Zhuang, HiFA,
arXiv 2305.18766): an annealed timestep and an image-space score-distillation loss.

Keys of `stable-diffusion-guidance` (threestudio's names and meanings, configs/hifa.yaml):

- `sqrt_anneal: true` — one deterministic timestep per step instead of t ~ U{min..max}
  (HiFA §3.3, "timestep annealing"):
      p(step)   = sqrt(step / trainer_max_steps)
      percent   = (max_step_percent - min_step_percent) * (1 - p) + min_step_percent
      min_step  = max_step = int(T * percent)
  so t falls from max_step_percent·T at step 0 to min_step_percent·T at `trainer_max_steps`.
- `use_img_loss: true` — also `loss_sds_img` (HiFA §3.2, weight `system.loss.lambda_sds_img`):
  the one-step denoised image x̂ = decode((z_t - sigma_t eps_guided) / alpha_t) is a target for the
  render x itself (the render resized to the guidance resolution, [B,3,res,res] in [0,1]),
      grad_img      = w(t) * (x - x̂) * alpha_t / sigma_t
      loss_sds_img  = 0.5 * || x - stopgrad(x - grad_img) ||^2 / B         (d/dx = grad_img / B)
  with alpha_t = sqrt(alphabar_t), sigma_t = sqrt(1 - alphabar_t), NaNs zeroed and `grad_clip`
  applied to grad_img as to the latent gradient.

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
                C(self.cfg.min_step_percent, epoch, global_step), C(self.cfg.max_step_percent, epoch, global_step),
            )
            self.min_step, self.max_step = timestep_range(self.num_train_timesteps, percent, percent)

    def add_image_space_loss(self, step: DistillStep, render: Optional[Tensor]) -> None:
        """With `use_img_loss`, step.out["loss_sds_img"] for the render [B,H,W,C] in [0,1] the step's
        latents were encoded from (the step's z_t, t and guided noise; one VAE decode, no gradient)."""
        if not self.cfg.use_img_loss or render is None:
            return
        image = resize_nchw(render.permute(0, 3, 1, 2)[:, :3], self.resolution)  # [B,3,res,res], differentiable
        x0 = predict_x0(step.z_t, step.eps_guided, step.t, self.alphas_cumprod)  # [B,4,h,w]
        denoised = self.model.decode_latents(x0).permute(0, 3, 1, 2)  # [B,3,res,res], no gradient
        grad_img = image_space_gradient(image, denoised, self.alphas_cumprod, step.t, self.cfg.weighting_strategy,
                                        self.grad_clip_val)
        step.out["loss_sds_img"] = sds_loss(image, grad_img)


__all__ = ["HiFAOptions", "image_space_gradient", "sqrt_anneal_percent"]
