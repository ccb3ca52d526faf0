"""Classifier-free guidance (Ho & Salimans, arXiv 2207.12598 §3.2, eq. 6), shared by the distillation
rules (lift3d.guidance) and the samplers (DDIM class images, SDEdit, view distillation).

    eps = eps_u + w (eps_c - eps_u)

`cfg_form` names how a config's `guidance_scale` s maps to w (docs/faithfulness.md):
    standard     w = s       (diffusers' pipelines, the CFG paper, threestudio's Zero-1-to-3 guidance)
    threestudio  w = s + 1   (threestudio's Stable Diffusion guidance computes eps_c + s (eps_c - eps_u))
"""
from __future__ import annotations

from torch import Tensor

CFG_FORMS = ("standard", "threestudio")


def cfg_weight(guidance_scale: float, form: str) -> float:
    """The w of eps_u + w (eps_c - eps_u) for `guidance_scale` in a `cfg_form`."""
    if form == "standard":
        return float(guidance_scale)
    if form == "threestudio":
        return float(guidance_scale) + 1.0
    raise ValueError(f"unknown cfg_form {form!r}; use one of {', '.join(CFG_FORMS)}")


def classifier_free_guidance(eps_uncond: Tensor, eps_cond: Tensor, guidance_scale: float) -> Tensor:
    """eps_uncond + w * (eps_cond - eps_uncond), w = `guidance_scale` (already in the standard form)."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


__all__ = ["CFG_FORMS", "cfg_weight", "classifier_free_guidance"]
