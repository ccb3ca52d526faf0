"""Perp-Neg: classifier-free guidance with negative prompts projected perpendicular to the positive
direction (Armandpour et al., arXiv 2304.04968 §3-4; docs/methods/perp_neg.md).

With eps_u the prediction for the unconditional (negative-prompt) text, eps_p for the positive text and
eps_k for K negative texts (k = 1..K), per sample b:

    e_pos = eps_p - eps_u                                   (the positive direction)
    e_k   = eps_k - eps_u
    perp(e_k, e_pos) = e_k - (<e_k, e_pos> / max(<e_pos, e_pos>, 1e-6)) e_pos      (inner products over C,h,w)
    eps   = eps_u + w (e_pos + sum_k w_k perp(e_k, e_pos))                        (§3)

The weights w_k are negative (a negative prompt pushes away); only the part of e_k orthogonal to e_pos
is used, so a negative prompt that shares content with the positive one (e.g. "front view" vs the
interpolated "side view") does not cancel that content. With every w_k = 0 this is plain CFG,
eps_u + w (eps_p - eps_u).

`perp_neg_guidance` is that combination (pure). `PerpNegText` carries the text conditioning of one
batch as the prompt processor builds it (lift3d.prompt.perp_neg_views): the rows fed to one UNet call
and the weights w_k [B,K]. `perp_neg_scale` is the w of a guidance's `guidance_scale`: threestudio's
perp-neg branch computes eps_u + s (...), the standard CFG form, whatever the plain branch's form
(`cfg_form: threestudio` computes eps_c + s (eps_c - eps_u) only without Perp-Neg).

A guidance opts in by setting `supports_perp_neg = True` in its own class body (not inherited: a
subclass may consume text embeddings differently); `check_perp_neg_support` is the experiment check.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from lift3d.errors import ConfigError

PERP_EPS = 1e-6  # floor of <e_pos, e_pos> (threestudio's): a zero positive direction projects nothing away


def perpendicular_component(x: Tensor, y: Tensor) -> Tensor:
    """x - proj_y(x) per sample: x, y [B,...] -> [B,...], orthogonal to y over the non-batch dims."""
    dims = tuple(range(1, x.dim()))
    dot = (x * y).sum(dim=dims, keepdim=True)  # [B,1,...]
    norm2 = (y * y).sum(dim=dims, keepdim=True).clamp_min(PERP_EPS)  # [B,1,...]
    return x - (dot / norm2) * y


def perp_neg_guidance(eps_uncond: Tensor, eps_pos: Tensor, eps_neg: Tensor, neg_weights: Tensor, scale: float) -> Tensor:
    """eps_u + scale (e_pos + sum_k w_k perp(eps_neg_k - eps_u, e_pos)) (module docstring).

    eps_uncond, eps_pos [B,C,h,w]; eps_neg [B,K,C,h,w]; neg_weights [B,K]; returns [B,C,h,w].
    """
    e_pos = eps_pos - eps_uncond  # [B,C,h,w]
    negative = torch.zeros_like(e_pos)
    for k in range(eps_neg.shape[1]):
        w_k = neg_weights[:, k].to(e_pos).reshape(-1, *([1] * (e_pos.dim() - 1)))  # [B,1,1,1]
        negative = negative + w_k * perpendicular_component(eps_neg[:, k] - eps_uncond, e_pos)
    return eps_uncond + scale * (e_pos + negative)


def perp_neg_scale(guidance_scale: float) -> float:
    """The w of `perp_neg_guidance` for a config's guidance_scale (threestudio's perp-neg form: w = s)."""
    return float(guidance_scale)


@dataclass
class PerpNegText:
    """Text conditioning of a batch of B cameras with K negative prompts each.

    embeddings [(2 + K) B, 77, D]: rows 0..B-1 the positive (view-interpolated) prompts, B..2B-1 the
    unconditional ones, then 2B + b K + k the k-th negative prompt of camera b; neg_weights [B,K].
    """

    embeddings: Tensor
    neg_weights: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.neg_weights.shape[0])

    @property
    def n_negatives(self) -> int:
        return int(self.neg_weights.shape[1])

    def to(self, device: Any) -> "PerpNegText":
        return PerpNegText(self.embeddings.to(device), self.neg_weights.to(device))

    def guided_noise(self, predict_noise: Callable[[Tensor, Tensor, Tensor], Tensor], z_t: Tensor, t: Tensor,
                     scale: float) -> Tensor:
        """The Perp-Neg guided noise [B,C,h,w] from one call predict_noise(z [(2+K)B,C,h,w], t [(2+K)B],
        text [(2+K)B,77,D]) -> eps [(2+K)B,C,h,w], for z_t [B,C,h,w] and t [B]."""
        B, K = self.batch_size, self.n_negatives
        # row 2B + b K + k is camera b's latent with its k-th negative prompt (docs/methods/perp_neg.md §3)
        z_in = torch.cat([z_t, z_t, z_t.repeat_interleave(K, dim=0)])  # [(2+K)B,C,h,w]
        t_in = torch.cat([t, t, t.repeat_interleave(K)])  # [(2+K)B]
        eps = predict_noise(z_in, t_in, self.embeddings.to(z_t.device))
        eps_pos, eps_uncond, eps_neg = eps[:B], eps[B:2 * B], eps[2 * B:]
        return perp_neg_guidance(eps_uncond, eps_pos, eps_neg.reshape(B, K, *eps.shape[1:]), self.neg_weights, scale)


def check_perp_neg_support(guidance_cls: type, guidance_type: str, view_dependent_prompting: bool,
                           path: str = "system") -> None:
    """ConfigError unless the guidance class opts in to Perp-Neg and uses view-dependent prompts."""
    if not vars(guidance_cls).get("supports_perp_neg", False):
        raise ConfigError(f"{path}.prompt_processor.use_perp_neg=true: {path}.guidance_type = '{guidance_type}' does not "
                          f"combine Perp-Neg's negative prompts (stable-diffusion-guidance and "
                          f"stable-diffusion-sdi-guidance do); set use_perp_neg=false or use one of those.")
    if not view_dependent_prompting:
        raise ConfigError(f"{path}.prompt_processor.use_perp_neg=true needs view-dependent prompts (Perp-Neg interpolates "
                          f"them): set {path}.guidance.view_dependent_prompting=true and "
                          f"{path}.prompt_processor.view_dependent_prompting=true, or use_perp_neg=false.")


__all__ = ["PERP_EPS", "PerpNegText", "check_perp_neg_support", "perp_neg_guidance", "perp_neg_scale",
           "perpendicular_component"]
