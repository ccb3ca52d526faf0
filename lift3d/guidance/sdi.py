"""`stable-diffusion-sdi-guidance`: Score Distillation via Inversion (Lukoianov et al., arXiv 2405.15891;
docs/methods/sdi.md), threestudio's guidance name and keys.

SDS adds random noise to the render's latent z; SDI adds the noise that DDIM inversion finds for z,
so that z_t lies on the sampler's trajectory through z and the one-step denoised target is sharp:

  1. t: t ~ U{min_step..max_step}, or with `t_anneal` one deterministic timestep per step falling
     linearly from max_step_percent·T at step 0 to min_step_percent·T at `trainer_max_steps`;
  2. inversion (`enable_sdi`): z_inv = DDIM inversion of z (lift3d.models.ddim_inversion) along the
     `inversion_n_steps`-step grid up to t' = min(t + delta, T - 1), delta ~ U{0..T/n - 1}, with the
     guided noise of CFG scale `inversion_guidance_scale` (threestudio's -7.5) and the stochastic part
     `inversion_eta`; the noise is eps_inv = (z_inv - sqrt(a_t') z) / sqrt(1 - a_t')  (so z_t' = z_inv);
  3. the shared distillation step (ScoreDistillationGuidance.distill) at t' with eps_inv and CFG scale
     `guidance_scale`, with SDI's weight w(t) = sqrt((1 - a_t) / a_t), which turns SDS's
     w (eps_guided - eps) into the x0 residual of threestudio's SDI target:
         grad = sqrt((1-a)/a) (eps_guided - eps_inv) = z - x0_hat,   x0_hat = (z_t - sqrt(1-a) eps_guided) / sqrt(a)
  4. loss_sdi = loss_sds / numel(z) = 0.5 mean((z - stopgrad(x0_hat))^2) / B: threestudio's value and
     gradient (its loss uses a mean reduction), d loss_sdi / dz = (z - x0_hat) / (B numel(z)).

With the prompt processor's `use_perp_neg` (sdi.yaml), the inversion's and the step's predictions are
Perp-Neg's (lift3d.guidance.perp_neg, w = the scale as given), as threestudio's SDI guidance computes them.

threestudio evaluates the UNet at t while its inverted latent is at t + delta; lift3d uses t' for both
(docs/methods/sdi.md §3). `enable_sdi: false` is SDS with SDI's target and weight (random noise).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.guidance.perp_neg import PerpNegText, perp_neg_scale
from lift3d.guidance.sds import Prediction, timestep_range
from lift3d.guidance.stable_diffusion import StableDiffusionGuidance, require_text_embeddings
from lift3d.models.cfg import cfg_weight, classifier_free_guidance
from lift3d.models.ddim_inversion import ddim_invert, inversion_timesteps, noise_for
from lift3d.registry import register
from lift3d.utils.schedule import C


def linear_anneal_percent(global_step: int, trainer_max_steps: int, min_percent: float, max_percent: float) -> float:
    """SDI's annealed timestep as a fraction of T: max_percent at step 0, min_percent from trainer_max_steps on."""
    progress = min(max(float(global_step) / float(trainer_max_steps), 0.0), 1.0)
    return (max_percent - min_percent) * (1.0 - progress) + min_percent


def sdi_weight(alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """w(t) [B] = sqrt((1 - alphabar_t) / alphabar_t): SDS's residual in eps becomes z - x0_hat."""
    a = alphas_cumprod.to(t.device, torch.float32)[t.long()]
    return ((1.0 - a) / a).sqrt()


@register("stable-diffusion-sdi-guidance")
class StableDiffusionSDIGuidance(StableDiffusionGuidance):
    @dataclass
    class Config(StableDiffusionGuidance.Config):
        trainer_max_steps: int = 10000  # t_anneal reaches min_step_percent here
        # SDI (arXiv 2405.15891): DDIM-inverted noise instead of random noise
        enable_sdi: bool = True  # false: random noise (SDS with SDI's target)
        inversion_guidance_scale: float = -7.5  # CFG scale of the inversion's noise predictions (cfg_form)
        inversion_n_steps: int = 10  # DDIM grid of the inversion (steps of T // n timesteps)
        inversion_eta: float = 0.3  # stochastic part of each inversion step (0: deterministic DDIM inversion)
        t_anneal: bool = True  # one timestep per step, linear from max_step_percent to min_step_percent
        # threestudio keys of this guidance that change nothing here (accepted so its configs parse; var_red too)
        n_ddim_steps: int = 50
        max_items_eval: int = 4
        token_merging: bool = False
        token_merging_params: Optional[dict] = field(default_factory=dict)

    produces = ("loss_sdi",)
    supports_perp_neg = True  # the step's and the inversion's predictions combine PerpNegText

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        if cfg.inversion_n_steps < 1:
            raise ConfigError(f"{path}.inversion_n_steps = {cfg.inversion_n_steps}: use a step count >= 1 (threestudio: 10).")
        if cfg.inversion_eta < 0:
            raise ConfigError(f"{path}.inversion_eta = {cfg.inversion_eta}: use a value >= 0 (0: deterministic inversion).")
        if cfg.t_anneal and int(cfg.trainer_max_steps) <= 0:
            raise ConfigError(f"{path}.trainer_max_steps = {cfg.trainer_max_steps}: t_anneal needs the run's step count "
                              f"(> 0), e.g. {path}.trainer_max_steps=${{trainer.max_steps}}.")
        if cfg.t_anneal and cfg.sqrt_anneal:
            raise ConfigError(f"{path}: t_anneal (SDI, linear) and sqrt_anneal (HiFA) both anneal the timestep: "
                              f"set one of them to false.")
        if cfg.use_img_loss:
            raise ConfigError(f"{path}.use_img_loss=true is HiFA's image loss of stable-diffusion-guidance, not part of "
                              f"SDI: set it to false.")
        if cfg.use_sjc:
            raise ConfigError(f"{path}.use_sjc=true: SDI has its own target and weight; set it to false.")
        if cfg.token_merging:
            raise ConfigError(f"{path}.token_merging=true (tomesd) is not supported by lift3d: set it to false.")
        super().validate_config(cfg, path)

    # ------------------------------------------------------------------ timestep
    def update_step(self, epoch: int, global_step: int) -> None:
        super().update_step(epoch, global_step)
        if self.cfg.t_anneal and hasattr(self, "alphas_cumprod"):
            percent = linear_anneal_percent(global_step, int(self.cfg.trainer_max_steps),
                                            C(self.cfg.min_step_percent, epoch, global_step),
                                            C(self.cfg.max_step_percent, epoch, global_step))
            self.min_step, self.max_step = timestep_range(self.num_train_timesteps, percent, percent)

    def weight(self, t: Tensor) -> Tensor:
        return sdi_weight(self.alphas_cumprod, t)

    # ------------------------------------------------------------------ inversion
    def inversion_predictor(self, text_embeddings: Tensor):
        """eps_fn(z, t) of the inversion: CFG of `inversion_guidance_scale` (in `cfg_form`) on [2B,77,D] text."""
        w = cfg_weight(self.cfg.inversion_guidance_scale, self.cfg.cfg_form)

        def eps_fn(z: Tensor, t: Tensor) -> Tensor:
            if isinstance(text_embeddings, PerpNegText):  # Perp-Neg in the inversion too (threestudio's)
                return text_embeddings.guided_noise(self.model.predict_noise, z, t,
                                                    perp_neg_scale(self.cfg.inversion_guidance_scale))
            eps_cond, eps_uncond = self.model.predict_noise(torch.cat([z, z]), torch.cat([t, t]), text_embeddings).chunk(2)
            return classifier_free_guidance(eps_uncond, eps_cond, w)

        return eps_fn

    def inversion_target(self, t: int) -> int:
        """t' = min(t + delta, T - 1) with delta ~ U{0..T/n - 1} (threestudio's jitter past the last grid step)."""
        delta = int(random.random() * (self.num_train_timesteps // int(self.cfg.inversion_n_steps)))
        return min(int(t) + delta, self.num_train_timesteps - 1)

    @torch.no_grad()
    def inverted_noise(self, latents: Tensor, t: Tensor, text_embeddings: Tensor,
                       generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor, Tensor]:
        """(t' [B], eps_inv [B,4,h,w], z_inv [B,4,h,w]) for latents [B,4,h,w]; one inversion path for the
        batch (threestudio's), at the largest t of the batch (all equal with t_anneal)."""
        t_inv = self.inversion_target(int(t.max()))
        path = inversion_timesteps(t_inv, int(self.cfg.inversion_n_steps), self.num_train_timesteps)
        alphas = self.alphas_cumprod.to(latents.device)
        z_inv = ddim_invert(latents, path, self.inversion_predictor(text_embeddings), alphas,
                            eta=float(self.cfg.inversion_eta), generator=generator)
        tt = torch.full_like(t, t_inv)
        return tt, noise_for(latents, z_inv, tt, alphas), z_inv

    # ------------------------------------------------------------------ the step
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
        """image [B,H,W,3] in [0,1] (or latents [B,H,W,4] with rgb_as_latents) -> {loss_sdi, ...}.
        `noise` given: no inversion (threestudio's call_with_defined_noise); `t` given: the inversion's t."""
        require_text_embeddings(prompt_utils, self.registered_name())
        as_latents = self.cfg.rgb_as_latents if rgb_as_latents is None else rgb_as_latents
        latents = self.get_latents(image, as_latents)  # [B,4,h,w]
        text = self.text_embeddings(prompt_utils, batch).to(latents.device)  # [2B,77,D] (or PerpNegText)
        t = self.sample_timesteps(latents.shape[0], latents.device) if t is None else t.to(latents.device).long()
        if noise is None and self.cfg.enable_sdi:
            t, noise, _ = self.inverted_noise(latents.detach(), t, text)
        predict = self.text_predictor(text)
        step = self.distill(latents, predict, t=t, noise=noise)
        self.add_guidance_eval(step, predict, None if as_latents else image)
        out = dict(step.out)
        out["loss_sdi"] = out.pop("loss_sds") / latents.numel()  # threestudio's mean reduction
        return out


__all__ = ["StableDiffusionSDIGuidance", "linear_anneal_percent", "sdi_weight"]
