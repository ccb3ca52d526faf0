"""DDIM inversion: run the deterministic DDIM sampler backwards, from a clean latent up to a timestep
(Song et al., arXiv 2010.02502 §4.3 "DDIM inversion"; used by SDI, docs/methods/sdi.md §2).

The inversion path is `timesteps` = [s_0 = -1 < s_1 < ... < s_k] (-1: the clean latent, alphabar = 1).
Each step re-uses lift3d.models.noise_schedule.ddim_step with the roles of t and t_prev swapped
(the same two lines of DDIM, now towards more noise):

    eps     = eps_fn(z_i, max(s_i, 0))
    x0      = (z_i - sqrt(1 - a_i) eps) / sqrt(a_i)                  a_i = alphabar_{s_i}
    z_{i+1} = sqrt(a_{i+1}) x0 + sqrt(1 - a_{i+1}) eps  (+ eta sigma_i n,  n ~ N(0, I))

with the optional stochastic part of SDI's inversion (`eta` > 0): sigma_i is the DDPM posterior
standard deviation between the two levels, sigma_i^2 = (1 - a_i)/(1 - a_{i+1}) (1 - a_{i+1}/a_i)
(zero for the first step from the clean latent). With eta = 0 and an eps_fn that does not depend on z,
`ddim_sample(z_k, reversed path)` returns z_0 exactly: the inversion is DDIM run backwards.

`noise_for(z0, z_t, t)` is the noise that `add_noise(z0, noise, t)` maps to z_t: the inverted latent
expressed as "clean latent + noise", so a distillation step can use it in place of random noise.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from lift3d.models.ddim import NUM_TRAIN_TIMESTEPS
from lift3d.models.noise_schedule import ddim_step, gather_alphabar

# eps_fn(z_t [B,C,h,w], t [B] long) -> noise prediction [B,C,h,w]
EpsFn = Callable[[Tensor, Tensor], Tensor]


def inversion_timesteps(t_target: int, n_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                        steps_offset: int = 1) -> list[int]:
    """[-1, g_0, g_1, ..., t_target]: the clean latent, the points of the n-step DDIM grid below t_target
    (g_k = k * (T // n) + steps_offset, diffusers' "leading" spacing of SD's scheduler), then t_target.
    A small t_target thus takes few steps: every step spans at most T // n timesteps."""
    t_target, n_steps = int(t_target), int(n_steps)
    if not 0 <= t_target < num_train_timesteps:
        raise ValueError(f"DDIM inversion target {t_target} leaves [0, {num_train_timesteps - 1}]")
    if n_steps < 1:
        raise ValueError(f"DDIM inversion needs n_steps >= 1, got {n_steps}")
    stride = num_train_timesteps // n_steps
    grid = [k * stride + steps_offset for k in range(n_steps)]
    return [-1] + [g for g in grid if g < t_target] + [t_target]


def inversion_sigma(alphas_cumprod: Tensor, s: int, s_next: int) -> float:
    """sigma_i of the stochastic part (see the module docstring); 0 from the clean latent (s = -1)."""
    if s < 0:
        return 0.0
    a, a_next = float(alphas_cumprod[s]), float(alphas_cumprod[s_next])
    return max((1.0 - a) / (1.0 - a_next) * (1.0 - a_next / a), 0.0) ** 0.5


@torch.no_grad()
def ddim_invert(z0: Tensor, timesteps: list[int], eps_fn: EpsFn, alphas_cumprod: Tensor, eta: float = 0.0,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """z0 [B,C,h,w] (clean, at timesteps[0] = -1) -> the latent at timesteps[-1], along `timesteps`
    (from `inversion_timesteps`); eta > 0 adds the stochastic part (noise drawn with `generator`)."""
    if timesteps[0] != -1:
        raise ValueError(f"DDIM inversion starts from the clean latent (-1), got {timesteps[0]}")
    z = z0
    for s, s_next in zip(timesteps[:-1], timesteps[1:]):
        tt = torch.full((z.shape[0],), s, dtype=torch.long, device=z.device)
        eps = eps_fn(z, tt.clamp(min=0))
        # ddim_step(z, eps, t, t_prev) only reads alphabar at both ends: here "t_prev" is the noisier level.
        # At s = -1 (alphabar = 1) x0 is z itself; ddim_step's -1 convention covers t_prev only, so do it here.
        if s < 0:
            a_next = gather_alphabar(alphas_cumprod, torch.full_like(tt, s_next), z)
            z = a_next.sqrt() * z + (1.0 - a_next).sqrt() * eps
        else:
            z = ddim_step(z, eps, tt, torch.full_like(tt, s_next), alphas_cumprod)
        sigma = eta * inversion_sigma(alphas_cumprod, s, s_next)
        if sigma > 0:
            n = torch.randn(z.shape, generator=generator, device=generator.device if generator is not None else "cpu")
            z = z + sigma * n.to(z)
    return z


def noise_for(z0: Tensor, z_t: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """The noise [B,C,h,w] with add_noise(z0, noise, t) = z_t: (z_t - sqrt(a_t) z0) / sqrt(1 - a_t)."""
    a = gather_alphabar(alphas_cumprod, t, z_t)
    return (z_t - a.sqrt() * z0) / (1.0 - a).sqrt()


__all__ = ["ddim_invert", "inversion_sigma", "inversion_timesteps", "noise_for"]
