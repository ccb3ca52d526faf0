"""What both toy priors' training shares: the VAE, the DDPM objective, EMA and the training loop.

DDPM objective (Ho et al. 2020) on VAE latents with Stable Diffusion 2.1-base's noise schedule
(lift3d.models.tiny_factory.SD_SCHEDULE), so the trained priors plug into score distillation
exactly like the real ones: t ~ U{0..999}, z_t = sqrt(ab_t) z + sqrt(1 - ab_t) eps,
loss = ||eps_theta(z_t, t, cond) - eps||².
"""
from __future__ import annotations

import copy
import csv
import math
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lift3d.models.noise_schedule import add_noise
from lift3d.models.tiny_factory import SD_SCHEDULE

IMAGE_SIZE = 32  # toy-world image side
LATENT_SIZE = 16  # VAE downsampling 2


def sd_alphas_cumprod() -> torch.Tensor:
    """alphabar_t [1000] of SD 2.1-base's scaled-linear schedule."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SD_SCHEDULE).alphas_cumprod.float()


def make_vae(seed: int = 0):
    """AutoencoderKL with SD's interface (4 latent channels) and downsampling 2: 32² images <-> 16² latents."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=16,
        sample_size=IMAGE_SIZE, scaling_factor=1.0,
    )


def make_unet(seed: int, in_channels: int, cross_attention_dim: int):
    """The toy UNet: 16² -> 8² -> 4² levels, cross-attention at 8² and 4² (and the mid block)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, use_linear_projection=True,
        norm_num_groups=16,
    )


class EMA:
    """Exponential moving average of parameters, with the usual warm-up min(decay, (1+n)/(10+n))."""

    def __init__(self, modules: Iterable[torch.nn.Module], decay: float = 0.999) -> None:
        self.modules = list(modules)
        self.shadow = [copy.deepcopy(m).eval().requires_grad_(False) for m in self.modules]
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for m, s in zip(self.modules, self.shadow):
            for p, q in zip(m.parameters(), s.parameters()):
                q.lerp_(p.detach(), 1.0 - d)


def train_loop(
    loss_fn: Callable[[int], torch.Tensor], params: list, steps: int, lr: float, desc: str,
    log_path: Optional[Path] = None, ema: Optional[EMA] = None, warmup: int = 100,
    checkpoint: Optional[Callable[[int], None]] = None, checkpoint_every: int = 0,
) -> list[float]:
    """AdamW on `params` for `steps` steps of loss_fn(step); linear warm-up then cosine decay to lr/10.
    Returns the losses; writes step,loss,seconds to `log_path` (CSV) when given; calls
    checkpoint(step) every `checkpoint_every` steps (e.g. to save the EMA weights so far)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        p = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(p * math.pi)))

    losses, start = [], time.perf_counter()
    writer = None
    if log_path is not None:
        log_file = open(log_path, "w", newline="")
        writer = csv.writer(log_file)
        writer.writerow(["step", "loss", "seconds"])
    with tqdm(range(steps), desc=desc, dynamic_ncols=True) as bar:
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = loss_fn(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if ema is not None:
                ema.update()
            losses.append(float(loss))
            if writer is not None:
                writer.writerow([step, f"{losses[-1]:.6f}", f"{time.perf_counter() - start:.1f}"])
            if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                checkpoint(step + 1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
    if writer is not None:
        log_file.close()
    return losses


def train_vae(images: torch.Tensor, steps: int, batch_size: int, lr: float = 1e-3, seed: int = 0,
              kl_weight: float = 1e-6, log_path: Optional[Path] = None):
    """Fits the VAE to images [N,S,S,3] in [0,1] (L1 + MSE reconstruction + a tiny KL, as LDM's
    KL-f autoencoders); sets config.scaling_factor = 1 / std of the latents (SD's 0.18215 was
    chosen the same way). Returns the VAE in eval mode."""
    vae = make_vae(seed)
    x_all = images.permute(0, 3, 1, 2) * 2.0 - 1.0  # [N,3,S,S] in [-1,1]
    g = torch.Generator().manual_seed(seed)

    def loss_fn(step: int) -> torch.Tensor:
        x = x_all[torch.randint(len(x_all), (batch_size,), generator=g)]
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / x[0].numel()
        return F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_weight * kl

    train_loop(loss_fn, list(vae.parameters()), steps, lr, "VAE", log_path=log_path)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        mean = torch.cat([vae.encode(x_all[i:i + 256]).latent_dist.mean for i in range(0, len(x_all), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
    return vae


@torch.no_grad()
def encode_latent_distribution(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE posterior, unscaled: images [N,S,S,3] in [0,1] -> 2 × [N,4,s,s]."""
    means, stds = [], []
    for i in range(0, len(images), 256):
        d = vae.encode(images[i:i + 256].permute(0, 3, 1, 2) * 2.0 - 1.0).latent_dist
        means.append(d.mean)
        stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


def ddpm_loss(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z0: torch.Tensor,
              alphas_cumprod: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """||predict(z_t, t) - eps||² for t ~ U{0..T-1}; z0 [B,4,h,w] scaled latents."""
    t = torch.randint(len(alphas_cumprod), (z0.shape[0],), generator=generator)
    noise = torch.randn(z0.shape, generator=generator)
    return F.mse_loss(predict(add_noise(z0, noise, t, alphas_cumprod), t), noise)

