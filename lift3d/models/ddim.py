"""Deterministic DDIM sampling from any timestep (docs/methods/usd.md §4.3, §4.4).

One loop serves every sampler: USD view distillation's Zero-1-to-3 novel views (from pure noise,
t = 999), Stable Diffusion class images (t = 999) and SDEdit refinement (from t ≈ 200), and the
toy priors' sample sheets (tools/toyworld). The step
itself is lift3d.models.noise_schedule.ddim_step (eta = 0):

    x0      = (z_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t)
    z_prev  = sqrt(alphabar_prev) x0 + sqrt(1 - alphabar_prev) eps

`ddim_timesteps(t_start, n)` spaces n steps evenly from t_start down to the clean latent:
t_k = round(t_start (n - k) / n) for k = 0..n-1, then -1 (alphabar = 1, the clean latent). From
t_start = 200 in 10 steps: 200, 180, ..., 20, -1. t_start = 0 or n = 0 is no step at all (SDEdit
strength 0 returns its input). n is capped at t_start (no repeated timesteps).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from lift3d.models.noise_schedule import add_noise, ddim_step

# eps_fn(z_t [B,4,h,w], t [B] long) -> noise prediction [B,4,h,w]
EpsFn = Callable[[Tensor, Tensor], Tensor]

NUM_TRAIN_TIMESTEPS = 1000


def ddim_timesteps(t_start: int, num_steps: int) -> list[int]:
    """[t_0 = t_start > t_1 > ... > t_{n-1}, -1] (see the module docstring); [] when nothing to do."""
    t_start, num_steps = int(t_start), int(num_steps)
    if not 0 <= t_start < NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"DDIM start timestep {t_start} leaves [0, {NUM_TRAIN_TIMESTEPS - 1}]")
    if num_steps < 0:
        raise ValueError(f"DDIM num_steps {num_steps} < 0")
    n = min(num_steps, t_start)
    if n == 0:
        return []
    return [int(t_start * (n - k) / n + 0.5) for k in range(n)] + [-1]


@torch.no_grad()
def ddim_sample(
    z: Tensor, timesteps: list[int], eps_fn: EpsFn, alphas_cumprod: Tensor, progress: Optional[Callable] = None
) -> Tensor:
    """Denoise z [B,4,h,w] (at timesteps[0]) along `timesteps` (from `ddim_timesteps`) -> clean latents.
    progress: optional wrapper of the step iterator (e.g. a tqdm factory)."""
    pairs = list(zip(timesteps[:-1], timesteps[1:]))
    for t, t_prev in (progress(pairs) if progress is not None else pairs):
        tt = torch.full((z.shape[0],), t, dtype=torch.long, device=z.device)
        eps = eps_fn(z, tt)
        z = ddim_step(z, eps, tt, torch.full_like(tt, t_prev), alphas_cumprod)
    return z


@torch.no_grad()
def ddim_edit(latents: Tensor, t: int, noise: Tensor, num_steps: int, eps_fn: EpsFn, alphas_cumprod: Tensor) -> Tensor:
    """SDEdit-style edit: latents [B,4,h,w] noised to timestep t, then DDIM back to 0 in `num_steps` steps
    (the edit of InstructPix2Pix / ControlNet guidances)."""
    alphas_cumprod = alphas_cumprod.to(latents.device)
    tt = torch.full((latents.shape[0],), int(t), dtype=torch.long, device=latents.device)
    z_t = add_noise(latents, noise, tt, alphas_cumprod)
    return ddim_sample(z_t, ddim_timesteps(int(t), int(num_steps)), eps_fn, alphas_cumprod)


def seeded_noise(shape: tuple[int, ...], seeds: list[int], device: torch.device | str = "cpu") -> Tensor:
    """Noise [len(seeds), *shape] with one generator per sample (seed s -> sample), so a sample does
    not depend on the batch it is drawn in; made on the CPU (the same numbers on any device)."""
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device)


__all__ = ["NUM_TRAIN_TIMESTEPS", "ddim_sample", "ddim_timesteps", "seeded_noise"]
