"""`usd-text-guidance`: USD for text-to-3D (docs/methods/usd.md §1, §3).

Both predictions come from Stable Diffusion in one UNet call on [z_t; z_t] with [text; negative
prompt] (the text of each camera's view direction, from `stable-diffusion-prompt-processor`):

    grad = w(t) [ w_cfg (eps_sd(z_t, text) - eps_sd(z_t, "")) + lambda (eps_sd(z_t, "") - eps) ]

with w_cfg the CFG weight of `cfg_form`: `standard` by default (w_cfg = guidance_scale, as the
original USD code), `threestudio` gives w_cfg = guidance_scale + 1.

`usd_lambda` is the spec's lambda (`lambda` is a Python keyword), scheduled with C():
0 = USD (the default), 1 = exactly `stable-diffusion-guidance`'s SDS gradient. Everything else —
encoding the render with SD's VAE, timesteps, weighting, grad clip, guidance-evaluation images,
`rgb_as_latents` — is `stable-diffusion-guidance`'s, which this class extends. Returns `loss_usd`.

`baseline` (docs/methods/prolificdreamer.md §5): what the lambda term measures eps_uncond against.
`noise` (the default: USD, and SDS at lambda = 1) is the sampled noise eps; `vsd_lora` is VSD's
camera-conditioned LoRA eps_phi (ProlificDreamer), trained alongside (`loss_lora`, optimizer group
`guidance_params`, saved in checkpoints), with stable-diffusion-vsd-guidance's LoRA keys
(pretrained_model_name_or_path_lora, guidance_scale_lora, lora_rank, ...):

    grad = w(t) [ w_cfg (eps_sd(z_t, text) - eps_sd(z_t, "")) + lambda (eps_sd(z_t, "") - eps_phi) ]

That guidance is `USDTextVSDGuidance` (vsd_baseline.py), built by this class from the same section.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

import torch
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.guidance.stable_diffusion import StableDiffusionGuidance
from lift3d.guidance.vsd import StableDiffusionVSDGuidance
from lift3d.registry import register
from lift3d.utils.schedule import C, check_schedule_range

from .usd_math import usd_guided_noise
from .vsd_baseline import vsd_base_of


BASELINES = ("noise", "vsd_lora")  # the sampled noise (USD, SDS) | VSD's camera-conditioned LoRA
# stable-diffusion-vsd-guidance's LoRA keys, used with baseline: vsd_lora only
VSD_LORA_KEYS = tuple(f.name for f in fields(StableDiffusionVSDGuidance.Config)
                      if f.name not in {g.name for g in fields(StableDiffusionGuidance.Config)})


def check_lambda(value: Any, key: str = "system.guidance.usd_lambda") -> None:
    """A ConfigError unless `value` is a C()-schedule of numbers in [0, 1]."""
    check_schedule_range(value, key, hint="0 is USD, 1 is SDS.")


@register("usd-text-guidance")
class USDTextGuidance(StableDiffusionGuidance):
    @dataclass
    class Config(StableDiffusionVSDGuidance.Config):  # + VSD's LoRA keys, for baseline: vsd_lora
        guidance_scale: float = 7.5
        # the original USD code (threestudio/models/guidance/usd_SD_guidance.py) weighs
        # (eps_c - eps_u) by guidance_scale itself: the standard form (docs/faithfulness.md)
        cfg_form: str = "standard"
        usd_lambda: Any = 0.0  # scheduled with C(): 0 = USD, 1 = SDS
        baseline: str = "noise"  # noise (USD / SDS) | vsd_lora (VSD's LoRA eps_phi in the lambda term)
        anneal_start_step: Optional[int] = None  # no ProlificDreamer anneal: USD's max_step_percent schedule does it

    produces = ("loss_usd", "loss_lora")  # loss_lora with baseline: vsd_lora

    def __new__(cls, cfg: Any = None, *args: Any, **kwargs: Any) -> "USDTextGuidance":
        # baseline: vsd_lora builds the VSD-base guidance (a subclass: __init__ runs on it with the same section)
        if (cfg or {}).get("baseline", "noise") == "vsd_lora" and not issubclass(cls, StableDiffusionVSDGuidance):
            cls = vsd_base_of(cls)
        return super().__new__(cls)

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        check_lambda(cfg.usd_lambda, f"{path}.usd_lambda")
        if cfg.baseline not in BASELINES:
            raise ConfigError(f"{path}.baseline '{cfg.baseline}' is unknown: use noise (USD) or vsd_lora (VSD's "
                              f"camera-conditioned LoRA, docs/methods/prolificdreamer.md §5).")
        if cfg.baseline == "vsd_lora" and not issubclass(cls, StableDiffusionVSDGuidance):
            vsd_base_of(cls).validate_config(cfg, path)
            return
        if cfg.baseline == "noise":
            defaults = cls.Config()
            changed = [k for k in VSD_LORA_KEYS if k in cfg and cfg[k] != getattr(defaults, k)]
            if changed:
                raise ConfigError(f"{path}.{changed[0]} is set but {path}.baseline is noise: VSD's LoRA keys are used "
                                  f"with baseline: vsd_lora only; set the baseline or remove the key.")
        super().validate_config(cfg, path)

    def update_step(self, epoch: int, global_step: int) -> None:
        super().update_step(epoch, global_step)
        self.usd_lambda = float(C(self.cfg.usd_lambda, epoch, global_step))

    def guided_noise(self, z_t: Tensor, t: Tensor, text_embeddings: Tensor, noise: Optional[Tensor] = None) -> Tensor:
        """eps_guided of usd_guided_noise from one UNet call on [z_t; z_t]; text_embeddings [2B,77,D] (cond, uncond)."""
        eps = self.model.predict_noise(torch.cat([z_t, z_t]), torch.cat([t, t]), text_embeddings)
        eps_cond, eps_uncond = eps.chunk(2)
        return usd_guided_noise(eps_cond, eps_uncond, noise, self.guidance_weight, self.usd_lambda)

    def name_losses(self, out: dict[str, Any]) -> dict[str, Any]:
        out["loss_usd"] = out.pop("loss_sds")
        out["usd_lambda"] = torch.tensor(self.usd_lambda)
        return out


__all__ = ["BASELINES", "USDTextGuidance", "VSD_LORA_KEYS", "check_lambda"]
