"""Score distillation sampling (SDS): the math every diffusion guidance shares.

DreamFusion's SDS gradient on the latents z of a render, for a sampled timestep t and noise eps:

    z_t   = sqrt(alphabar_t) z + sqrt(1 - alphabar_t) eps                       (forward diffusion)
    eps_cfg = eps_uncond + s * (eps_cond - eps_uncond)                           (classifier-free guidance)
    grad  = w(t) * (eps_cfg - eps)                                               (no backprop through the UNet)

with the weighting w(t) of `weighting_strategy` (docs/methods/usd.md §1):
    sds         w = 1 - alphabar_t
    uniform     w = 1
    fantasia3d  w = alphabar_t ** 0.5 * (1 - alphabar_t)

The gradient is applied through the reparameterised loss

    loss_sds = 0.5 * || z - stopgrad(z - grad) ||^2 / B

so that d loss_sds / d z_b = grad_b / B (the batch mean of the per-sample SDS gradients; with
B = 1, exactly grad). `grad_clip` clamps grad element-wise to [-clip, clip] before that.

This module holds the pure functions (timestep range and sampling, weighting, forward diffusion,
x0 prediction, a DDIM step, CFG, gradient, loss) and `ScoreDistillationGuidance`, a guidance base
class with the config keys, `C()`-scheduled timestep range and grad clip (evaluated in
`update_step`), the distillation step and the guidance-evaluation images. Guidances such as
`stable-diffusion-guidance`, `zero123-guidance` and USD compose it: they encode images to latents
and provide a noise predictor; the SDS bookkeeping lives here once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.guidance.base import BaseGuidance
from lift3d.utils.schedule import C

WEIGHTING_STRATEGIES = ("sds", "uniform", "fantasia3d")

# eps_fn(z_t [B,4,h,w], t [B] long, noise [B,4,h,w]) -> guided noise prediction [B,4,h,w]
NoisePredictor = Callable[[Tensor, Tensor, Tensor], Tensor]


# ---------------------------------------------------------------------------------- pure functions
def timestep_range(num_train_timesteps: int, min_step_percent: float, max_step_percent: float) -> tuple[int, int]:
    """(min_step, max_step) = (int(T * min_percent), int(T * max_percent)), as threestudio."""
    return int(num_train_timesteps * min_step_percent), int(num_train_timesteps * max_step_percent)


def sample_timesteps(
    batch_size: int, min_step: int, max_step: int, device: torch.device | str = "cpu",
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """t ~ U{min_step, ..., max_step} (both included), one per sample: [B] long."""
    t = torch.randint(min_step, max_step + 1, (batch_size,), dtype=torch.long, generator=generator,
                      device=generator.device if generator is not None else "cpu")
    return t.to(device)


def _gather(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """alphabar_t [B] broadcast to like's shape [B,1,1,1] (like's dtype and device)."""
    a = alphas_cumprod.to(device=like.device)[t.to(like.device).long()]
    return a.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def sds_weight(alphas_cumprod: Tensor, t: Tensor, strategy: str) -> Tensor:
    """w(t) [B] of a weighting strategy (see the module docstring); float32 on t's device."""
    a = alphas_cumprod.to(t.device, torch.float32)[t.long()]
    if strategy == "sds":
        return 1.0 - a
    if strategy == "uniform":
        return torch.ones_like(a)
    if strategy == "fantasia3d":
        return a**0.5 * (1.0 - a)
    raise ValueError(f"unknown weighting_strategy {strategy!r}; use one of {', '.join(WEIGHTING_STRATEGIES)}")


def add_noise(z: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Forward diffusion z_t = sqrt(alphabar_t) z + sqrt(1 - alphabar_t) noise; z, noise [B,C,h,w]."""
    a = _gather(alphas_cumprod, t, z)
    return a.sqrt() * z + (1.0 - a).sqrt() * noise


def predict_x0(z_t: Tensor, eps: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """One-step estimate of the clean latent: x0 = (z_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t)."""
    a = _gather(alphas_cumprod, t, z_t)
    return (z_t - (1.0 - a).sqrt() * eps) / a.sqrt()


def ddim_step(z_t: Tensor, eps: Tensor, t: Tensor, t_prev: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Deterministic DDIM step from t to t_prev (< t; t_prev = -1 means alphabar = 1, the clean latent)."""
    x0 = predict_x0(z_t, eps, t, alphas_cumprod)
    ac = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod])  # index shifted by one: -1 -> 1.0
    a_prev = _gather(ac, t_prev + 1, z_t)
    return a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * eps


def classifier_free_guidance(eps_uncond: Tensor, eps_cond: Tensor, guidance_scale: float) -> Tensor:
    """eps_uncond + s * (eps_cond - eps_uncond)."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def sds_gradient(eps_guided: Tensor, noise: Tensor, weight: Tensor, grad_clip: Optional[float] = None) -> Tensor:
    """grad = w(t) * (eps_guided - noise), NaNs zeroed, clamped to [-grad_clip, grad_clip] when given."""
    w = weight.to(eps_guided).reshape(-1, *([1] * (eps_guided.dim() - 1)))
    grad = torch.nan_to_num(w * (eps_guided - noise))
    if grad_clip is not None and grad_clip > 0:
        grad = grad.clamp(-grad_clip, grad_clip)
    return grad


def sds_loss(latents: Tensor, grad: Tensor) -> Tensor:
    """0.5 * ||z - stopgrad(z - grad)||^2 / B: a scalar whose gradient w.r.t. z_b is grad_b / B."""
    target = (latents - grad).detach()
    return 0.5 * F.mse_loss(latents, target, reduction="sum") / latents.shape[0]


def resize_nchw(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of [B,C,H,W] to [B,C,size,size] (identity when already that size)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------- the base class
class ScoreDistillationGuidance(BaseGuidance):
    """Shared config, step-dependent state and the SDS step of diffusion guidances.

    Subclasses load their models in `configure()`, call `set_noise_schedule(alphas_cumprod)`,
    and in `__call__` encode the render to latents and call `distill(latents, eps_fn, decode)`.
    Frozen models must be held outside nn.Module children (see `FrozenModels`).
    """

    @dataclass
    class Config(BaseGuidance.Config):
        pretrained_model_name_or_path: str = ""
        guidance_scale: float = 100.0
        weighting_strategy: str = "sds"  # sds | uniform | fantasia3d
        min_step_percent: Any = 0.02  # scheduled with C()
        max_step_percent: Any = 0.98  # scheduled with C()
        grad_clip: Optional[Any] = None  # element-wise clamp of the SDS gradient, scheduled; null = off
        half_precision_weights: Any = "auto"  # auto (fp16 on GPU, fp32 on CPU) | true | false
        # side of the image fed to the VAE; renders are resized to it. null: the model's native size
        # (UNet sample_size x 8: 512 for SD 2.1-base, 256 for Zero-1-to-3, 64 for the tiny models)
        resolution: Optional[int] = None
        enable_attention_slicing: bool = False  # saves memory, slower (not with PyTorch SDPA on GPU)
        enable_channels_last: bool = False
        # every N training steps (0: never) the guidance also returns evaluation images:
        # render | noisy latent | one-step x0 | DDIM denoise in guidance_eval_steps steps, decoded
        guidance_eval_interval: int = 0
        guidance_eval_steps: int = 4
        guidance_eval_max_samples: int = 4

    produces = ("loss_sds",)

    # ------------------------------------------------------------------ validation
    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        key = "system.guidance"
        if cfg.weighting_strategy not in WEIGHTING_STRATEGIES:
            raise ConfigError(
                f"{key}.weighting_strategy '{cfg.weighting_strategy}' is unknown: use one of "
                f"{', '.join(WEIGHTING_STRATEGIES)}."
            )
        for name in ("min_step_percent", "max_step_percent"):
            for step in (0, 10**9):
                try:
                    value = C(cfg[name], 0, step)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"{key}.{name}: {exc}") from None
                if not 0.0 <= float(value) <= 1.0:
                    raise ConfigError(f"{key}.{name} = {cfg[name]} leaves [0, 1]: give fractions of the 1000 timesteps.")
        try:
            C(cfg.grad_clip, 0, 0)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key}.grad_clip: {exc}") from None
        if cfg.resolution is not None and (cfg.resolution < 8 or cfg.resolution % 8):
            raise ConfigError(f"{key}.resolution = {cfg.resolution}: use a multiple of 8 (the VAE downsamples by 8) or null.")
        half_precision_mode(cfg.half_precision_weights)
        if cfg.guidance_eval_interval < 0 or cfg.guidance_eval_steps < 1:
            raise ConfigError(f"{key}.guidance_eval_interval must be >= 0 and guidance_eval_steps >= 1.")

    # ------------------------------------------------------------------ setup
    def set_noise_schedule(self, alphas_cumprod: Tensor) -> None:
        """The DDPM schedule of the model (alphabar_t for t = 0..T-1), kept in float32."""
        self.alphas_cumprod = alphas_cumprod.detach().to(torch.float32).cpu()
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
        self.global_step = 0
        self.update_step(0, 0)

    def update_step(self, epoch: int, global_step: int) -> None:
        self.global_step = int(global_step)
        if not hasattr(self, "alphas_cumprod"):
            return
        self.min_step, self.max_step = timestep_range(
            self.num_train_timesteps, C(self.cfg.min_step_percent, epoch, global_step),
            C(self.cfg.max_step_percent, epoch, global_step),
        )
        self.max_step = max(self.max_step, self.min_step)
        clip = C(self.cfg.grad_clip, epoch, global_step) if self.cfg.grad_clip is not None else None
        self.grad_clip_val: Optional[float] = None if clip is None else float(clip)

    # ------------------------------------------------------------------ SDS
    def sample_timesteps(self, batch_size: int, device: torch.device | str) -> Tensor:
        return sample_timesteps(batch_size, self.min_step, self.max_step, device)

    def weight(self, t: Tensor) -> Tensor:
        return sds_weight(self.alphas_cumprod, t, self.cfg.weighting_strategy)

    def sds_from_prediction(self, latents: Tensor, eps_guided: Tensor, noise: Tensor, t: Tensor) -> dict[str, Tensor]:
        """loss_sds (and logged scalars) from a guided noise prediction on z_t = noise(latents, t)."""
        grad = sds_gradient(eps_guided, noise, self.weight(t), self.grad_clip_val)
        return {
            "loss_sds": sds_loss(latents, grad),
            "grad_norm": grad.detach().float().norm(),
            "min_step": torch.tensor(float(self.min_step)),
            "max_step": torch.tensor(float(self.max_step)),
        }

    def distill(
        self,
        latents: Tensor,
        eps_fn: NoisePredictor,
        t: Optional[Tensor] = None,
        noise: Optional[Tensor] = None,
        decode: Optional[Callable[[Tensor], Tensor]] = None,
        render: Optional[Tensor] = None,
    ) -> dict[str, Any]:
        """One SDS step on `latents` [B,4,h,w] (differentiable).

        eps_fn(z_t, t, noise) returns the guided noise prediction (no gradient is taken through it);
        t [B] and noise default to U{min_step..max_step} and N(0, I). When guidance evaluation is
        due (see `guidance_eval_interval`) and `decode` (latents -> [B,H,W,3] in [0,1]) is given, the
        result also holds "guidance_eval": an image grid [rows*H, 4*W, 3] (render | noisy | x0 | denoised).
        """
        B = latents.shape[0]
        t = self.sample_timesteps(B, latents.device) if t is None else t.to(latents.device).long()
        noise = torch.randn_like(latents) if noise is None else noise.to(latents)
        with torch.no_grad():
            z_t = add_noise(latents.detach(), noise, t, self.alphas_cumprod)
            eps_guided = eps_fn(z_t, t, noise)
        out: dict[str, Any] = self.sds_from_prediction(latents, eps_guided, noise, t)
        out["timestep"] = t.detach().float().mean().cpu()
        if decode is not None and self.guidance_eval_due():
            images = self.guidance_eval(z_t, t, eps_guided, noise, eps_fn, decode, render)
            out["guidance_eval"] = guidance_eval_grid(images)
        return out

    # ------------------------------------------------------------------ guidance evaluation
    def guidance_eval_due(self) -> bool:
        interval = self.cfg.guidance_eval_interval
        return interval > 0 and self.global_step % interval == 0

    @torch.no_grad()
    def guidance_eval(
        self,
        z_t: Tensor,
        t: Tensor,
        eps_guided: Tensor,
        noise: Tensor,
        eps_fn: NoisePredictor,
        decode: Callable[[Tensor], Tensor],
        render: Optional[Tensor] = None,
    ) -> dict[str, Tensor]:
        """What the guidance "sees" and where it pulls, for the first samples of the batch.

        Returns images [b,H,W,3] in [0,1] (b <= guidance_eval_max_samples): "render" (when given,
        resized to the decoded size), "noisy" (z_t decoded), "x0" (one-step estimate of the clean
        latent from eps_guided), "denoised" (DDIM from t to 0 in guidance_eval_steps steps with
        eps_fn); and "t" [b].
        """
        b = min(z_t.shape[0], self.cfg.guidance_eval_max_samples)
        n = self.cfg.guidance_eval_steps
        # per-sample DDIM timesteps t = s_0 >= s_1 >= ... >= s_{n-1} > s_n = -1 (the clean latent)
        steps = torch.stack([torch.linspace(float(ti), 0.0, n + 1) for ti in t.cpu()]).round().long().to(t.device)
        steps[:, -1] = -1
        # denoise the whole batch: eps_fn's conditioning (text rows, cameras) is laid out for all B
        z = z_t
        for k in range(n):
            eps = eps_guided if k == 0 else eps_fn(z, steps[:, k], noise)
            z = ddim_step(z, eps, steps[:, k], steps[:, k + 1], self.alphas_cumprod)
        z_t, t, eps_guided, z = z_t[:b], t[:b], eps_guided[:b], z[:b]
        x0 = predict_x0(z_t, eps_guided, t, self.alphas_cumprod)
        images = {"noisy": decode(z_t), "x0": decode(x0), "denoised": decode(z)}
        if render is not None:
            H, W = images["noisy"].shape[1:3]
            r = render[:b, ..., :3].permute(0, 3, 1, 2).float()
            images["render"] = F.interpolate(r, size=(H, W), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).clamp(0, 1)
        images["t"] = t.detach().cpu()
        return images


def guidance_eval_grid(images: dict[str, Tensor]) -> Tensor:
    """One row per sample: render | noisy | x0 | denoised -> [b*H, k*W, 3] float in [0,1] on CPU."""
    keys = [k for k in ("render", "noisy", "x0", "denoised") if k in images]
    rows = [torch.cat([images[k][i].float().cpu() for k in keys], dim=1) for i in range(images[keys[0]].shape[0])]
    return torch.cat(rows, dim=0).clamp(0, 1)


def half_precision_mode(value: Any) -> str:
    """'auto' | 'true' | 'false' from a config value (bool or string); ConfigError otherwise."""
    text = str(value).strip().lower()
    if text in ("auto", "none", "null"):
        return "auto"
    if text in ("true", "1", "yes", "fp16", "half"):
        return "true"
    if text in ("false", "0", "no", "fp32", "float32"):
        return "false"
    raise ConfigError(f"system.guidance.half_precision_weights = {value!r}: use auto, true or false.")


__all__ = [
    "WEIGHTING_STRATEGIES",
    "ScoreDistillationGuidance",
    "add_noise",
    "classifier_free_guidance",
    "ddim_step",
    "guidance_eval_grid",
    "half_precision_mode",
    "predict_x0",
    "resize_nchw",
    "sample_timesteps",
    "sds_gradient",
    "sds_loss",
    "sds_weight",
    "timestep_range",
]
