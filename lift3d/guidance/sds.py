"""Score distillation: the one distillation step every diffusion guidance uses.

DreamFusion's SDS gradient (Poole et al., arXiv 2209.14988 §3.2, eq. 3) on the latents z of a render,
for a sampled timestep t and noise eps, with a frozen model of lift3d.models:

    z_t     = sqrt(alphabar_t) z + sqrt(1 - alphabar_t) eps                      (forward diffusion)
    eps_cfg = eps_u + w_cfg (eps_c - eps_u)                                      (classifier-free guidance)
    grad    = w(t) * (eps_cfg - eps)                                             (no backprop through the UNet)

`cfg_form` (docs/faithfulness.md): `standard` uses w_cfg = s = `guidance_scale` (Ho & Salimans,
arXiv 2207.12598 eq. 6; diffusers; threestudio's Zero-1-to-3 guidance); `threestudio` computes
eps_c + s (eps_c - eps_u) = eps_u + (s + 1)(eps_c - eps_u), as threestudio's Stable Diffusion
guidance does, so ported configs run at the same strength.

The weighting w(t) of `weighting_strategy` (docs/methods/usd.md §1):
    sds         w = 1 - alphabar_t
    uniform     w = 1
    fantasia3d  w = alphabar_t ** 0.5 * (1 - alphabar_t)

The gradient is applied through the reparameterised loss

    loss_sds = 0.5 * || z - stopgrad(z - grad) ||^2 / B

so that d loss_sds / d z_b = grad_b / B (the batch mean of the per-sample SDS gradients; with
B = 1, exactly grad). `grad_clip` clamps grad element-wise to [-clip, clip] before that.

`ScoreDistillationGuidance.distill(latents, predict, ...)` is that step, once, for every guidance
(SDS, Zero-1-to-3, USD image and text, X-Dreamer). A guidance supplies `predict(z_t, t, noise, extra)
-> Prediction`: the guided noise, and the predictions of `extra` noisy inputs it asked to have
evaluated in the same call (USD's reference-view term); `extra` is an explicit argument, passed to
the step's own call and never to the guidance-evaluation calls. `grad_through_unet=True` runs the
call with autograd (X-Dreamer's CG-LoRA and attention-map loss train through it); the SDS term
still uses the detached prediction. The noise-schedule math lives in lift3d.models.noise_schedule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.guidance.base import BaseGuidance
from lift3d.models.cfg import CFG_FORMS, cfg_weight, classifier_free_guidance
from lift3d.models.diffusion import DiffusionModel
from lift3d.models.frozen import half_precision_mode
from lift3d.models.noise_schedule import add_noise, ddim_step, predict_x0
from lift3d.utils.schedule import C, check_schedule_range

WEIGHTING_STRATEGIES = ("sds", "uniform", "fantasia3d")


@dataclass
class Prediction:
    """What a guidance's predictor returns for z_t [B,C,h,w]: the guided noise [B,C,h,w] and, when the
    step passed `extra` inputs, their predictions (in the guidance's own layout)."""

    guided: Tensor
    extra: Any = None


# predict(z_t [B,C,h,w], t [B] long, noise [B,C,h,w], extra or None) -> Prediction
Predictor = Callable[[Tensor, Tensor, Tensor, Any], Prediction]


@dataclass
class DistillStep:
    """One score-distillation step: the losses / logged scalars, and what guidance evaluation needs."""

    out: dict[str, Any]
    z_t: Tensor  # [B,C,h,w] (detached)
    t: Tensor  # [B] long
    noise: Tensor  # [B,C,h,w]
    eps_guided: Tensor  # [B,C,h,w] (detached)
    extra: Any = None  # Prediction.extra of the step's call


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
    """A frozen diffusion model (`self.model`, lift3d.models) plus a distillation rule.

    Subclasses load their model in `configure()` with `self.load_model(ModelClass, name, what)` and
    `self.use_model(model)`, and in `__call__` encode the render (`self.model.encode_images`) and call
    `self.distill(latents, predict)`; `self.guidance_eval_images(step, predict, render)` adds the
    guidance-evaluation grid when it is due.
    """

    @dataclass
    class Config(BaseGuidance.Config):
        pretrained_model_name_or_path: str = ""
        guidance_scale: float = 100.0
        cfg_form: str = "standard"  # standard: eps_u + s (eps_c - eps_u) | threestudio: eps_c + s (eps_c - eps_u)
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
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        key = path
        if cfg.weighting_strategy not in WEIGHTING_STRATEGIES:
            raise ConfigError(
                f"{key}.weighting_strategy '{cfg.weighting_strategy}' is unknown: use one of "
                f"{', '.join(WEIGHTING_STRATEGIES)}."
            )
        if cfg.cfg_form not in CFG_FORMS:
            raise ConfigError(f"{key}.cfg_form '{cfg.cfg_form}' is unknown: use one of {', '.join(CFG_FORMS)} "
                              f"(docs/faithfulness.md).")
        for name in ("min_step_percent", "max_step_percent"):
            check_schedule_range(cfg[name], f"{key}.{name}", hint="give fractions of the 1000 timesteps.")
        try:
            C(cfg.grad_clip, 0, 0)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key}.grad_clip: {exc}") from None
        if cfg.resolution is not None and (cfg.resolution < 8 or cfg.resolution % 8):
            raise ConfigError(f"{key}.resolution = {cfg.resolution}: use a multiple of 8 (the VAE downsamples by 8) or null.")
        half_precision_mode(cfg.half_precision_weights, f"{key}.half_precision_weights")
        if cfg.guidance_eval_interval < 0 or cfg.guidance_eval_steps < 1:
            raise ConfigError(f"{key}.guidance_eval_interval must be >= 0 and guidance_eval_steps >= 1.")

    # ------------------------------------------------------------------ the model
    model_class: Any = None  # the lift3d.models class of `pretrained_model_name_or_path`

    @classmethod
    def model_what(cls, path: str = "system.guidance") -> str:
        """How a not-found error names the model: "<kind> for <path>.pretrained_model_name_or_path"."""
        return f"{cls.model_class.KIND} for {path}.pretrained_model_name_or_path"

    def load_model(self, model_cls: type, name_or_path: str, what: str, shared: bool = True, **kwargs: Any) -> Any:
        """`model_cls.load` with this guidance's precision and memory options."""
        return model_cls.load(
            name_or_path, what, half_precision_weights=self.cfg.half_precision_weights,
            enable_attention_slicing=self.cfg.enable_attention_slicing,
            enable_channels_last=self.cfg.enable_channels_last, shared=shared, **kwargs,
        )

    def use_model(self, model: DiffusionModel) -> None:
        """Distil `model`: its noise schedule and its input size (cfg.resolution or the native one)."""
        self.model = model
        self.device = model.device
        self.resolution = int(self.cfg.resolution or model.native_resolution)
        self.latent_resolution = self.resolution // model.downsample
        self.set_noise_schedule(model.alphas_cumprod)

    def to(self, device: torch.device | str) -> "ScoreDistillationGuidance":
        self.model.to(device)
        self.device = self.model.device
        return self

    def encode(self, image: Tensor) -> Tensor:
        """A render [B,H,W,C] in [0,1] -> the model's latents [B,4,res/8,res/8] (differentiable)."""
        return self.model.encode_images(resize_nchw(image.permute(0, 3, 1, 2)[:, :3], self.resolution))

    def guide(self, eps_cond: Tensor, eps_uncond: Tensor) -> Tensor:
        """Classifier-free guidance of this guidance's scale and `cfg_form`."""
        return classifier_free_guidance(eps_uncond, eps_cond, self.guidance_weight)

    @property
    def guidance_weight(self) -> float:
        """w of eps_u + w (eps_c - eps_u): guidance_scale in this guidance's `cfg_form`."""
        return cfg_weight(self.cfg.guidance_scale, self.cfg.cfg_form)

    # ------------------------------------------------------------------ step-dependent state
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

    # ------------------------------------------------------------------ the distillation step
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
        predict: Predictor,
        t: Optional[Tensor] = None,
        noise: Optional[Tensor] = None,
        extra: Any = None,
        grad_through_unet: bool = False,
        grad_to_noisy_latents: bool = False,
    ) -> DistillStep:
        """One SDS step on `latents` [B,C,h,w] (differentiable); see the module docstring.

        t [B] and noise default to U{min_step..max_step} and N(0, I). `extra` is handed to this
        step's `predict` call (and only to it); its predictions come back in `DistillStep.extra`.
        grad_through_unet: the predictor runs with autograd (z_t detached from the latents unless
        grad_to_noisy_latents); the SDS loss uses the detached guided noise either way.
        """
        B = latents.shape[0]
        t = self.sample_timesteps(B, latents.device) if t is None else t.to(latents.device).long()
        noise = torch.randn_like(latents) if noise is None else noise.to(latents)
        track = grad_through_unet and torch.is_grad_enabled()
        with torch.set_grad_enabled(track):
            source = latents if (track and grad_to_noisy_latents) else latents.detach()
            z_t = add_noise(source, noise, t, self.alphas_cumprod)
            prediction = predict(z_t, t, noise, extra)
        eps_guided = prediction.guided.detach()
        out: dict[str, Any] = self.sds_from_prediction(latents, eps_guided, noise, t)
        out["timestep"] = t.detach().float().mean().cpu()
        return DistillStep(out, z_t.detach(), t, noise, eps_guided, prediction.extra)

    # ------------------------------------------------------------------ guidance evaluation
    def guidance_eval_due(self) -> bool:
        interval = self.cfg.guidance_eval_interval
        return interval > 0 and self.global_step % interval == 0

    def add_guidance_eval(self, step: DistillStep, predict: Predictor, render: Optional[Tensor] = None,
                          decode: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        """When due, step.out["guidance_eval"] = the grid [rows*H, 4*W, 3] (render | noisy | x0 | denoised)."""
        if not self.guidance_eval_due():
            return
        images = self.guidance_eval(step.z_t, step.t, step.eps_guided, step.noise,
                                    lambda z, tt, n: predict(z, tt, n, None).guided,
                                    decode or self.model.decode_latents, render)
        step.out["guidance_eval"] = guidance_eval_grid(images)

    @torch.no_grad()
    def guidance_eval(
        self,
        z_t: Tensor,
        t: Tensor,
        eps_guided: Tensor,
        noise: Tensor,
        eps_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
        decode: Callable[[Tensor], Tensor],
        render: Optional[Tensor] = None,
    ) -> dict[str, Tensor]:
        """What the guidance "sees" and where it pulls, for the first samples of the batch.

        Returns images [b,H,W,3] in [0,1] (b <= guidance_eval_max_samples): "render" (when given,
        resized to the decoded size), "noisy" (z_t decoded), "x0" (one-step estimate of the clean
        latent from eps_guided), "denoised" (DDIM from t to 0 in guidance_eval_steps steps with
        eps_fn(z, t, noise)); and "t" [b].
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


__all__ = [
    "CFG_FORMS",
    "DistillStep",
    "Prediction",
    "Predictor",
    "ScoreDistillationGuidance",
    "WEIGHTING_STRATEGIES",
    "cfg_weight",
    "classifier_free_guidance",
    "guidance_eval_grid",
    "resize_nchw",
    "sample_timesteps",
    "sds_gradient",
    "sds_loss",
    "sds_weight",
    "timestep_range",
]
