"""The USD repository's system keys (YoujiaZhang/USD, threestudio/systems/usd.py, usd_text_to_3d.py),
understood by lift3d's USD systems so that its configs run unchanged (docs/compat.md):

- `stage` (coarse | geometry | texture): which stage of the three-stage pipeline the config is. In the
  geometry stage the guidance scores the normal map (`guidance_input: comp_normal`, the original's
  `render_rgb=False`); coarse and texture score comp_rgb. The regularizers are lift3d's, switched on
  by their lambdas (the original's configs set only the lambdas of their stage's regularizers).
- `visualize_samples`: the original draws guidance samples at validation; accepted, must stay false
  (lift3d's guidances write their evaluation images with `guidance_eval_interval` instead).
- `loss.lambda_vsd`: the original's name of the weight of the USD distillation loss (its configs grew
  out of ProlificDreamer's; the guidance returns `loss_usd`): it weighs lift3d's `loss_usd` — and, for
  image-to-3D, the reference-view term `loss_usd_ref`, which the original adds into the same
  `loss_usd` — when the config gives no lambda_usd / lambda_usd_ref of its own.
- image-to-3D with `stable-diffusion-prompt-processor`: the original's image guidance uses only the
  empty (negative) prompt's Stable Diffusion prediction, which usd-image-guidance embeds itself; the
  prompt processor becomes `dummy-prompt-processor` (its prompt, '' in the configs, is unused there too).
- `loss.lambda_lora`: USD trains no LoRA; the original's configs set 0, which is accepted (anything
  else is a ConfigError).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from lift3d.config import schedule_max
from lift3d.errors import ConfigError

STAGES = ("coarse", "geometry", "texture")


@dataclass
class OriginalSystemKeys:
    stage: str = "coarse"
    visualize_samples: bool = False


def to_lift3d_system(cfg: Any, reference_term: bool, path: str = "system") -> dict:
    """The system section with the original's keys given their lift3d meaning (see the module docstring);
    `reference_term`: the guidance has a reference-view term that the original weighs with lambda_vsd."""
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg or {})
    stage = plain.get("stage", "coarse")
    if stage not in STAGES:
        raise ConfigError(f"{path}.stage = '{stage}': use one of {', '.join(STAGES)} (the USD repository's stages).")
    if plain.get("visualize_samples"):
        raise ConfigError(f"{path}.visualize_samples=true is not supported: set it to false and use "
                          f"{path}.guidance.guidance_eval_interval for the guidance's evaluation images.")
    loss = dict(plain.get("loss") or {})
    if "lambda_vsd" in loss:
        weight = loss.pop("lambda_vsd")
        loss.setdefault("lambda_usd", weight)
        if reference_term:
            loss.setdefault("lambda_usd_ref", weight)
    if "lambda_lora" in loss:
        lora = loss.pop("lambda_lora")
        if schedule_max(lora) > 0:
            raise ConfigError(f"{path}.loss.lambda_lora = {lora}: USD trains no LoRA; remove it or set 0.")
    plain["loss"] = loss
    if reference_term and plain.get("prompt_processor_type") == "stable-diffusion-prompt-processor":
        # the original's image guidance uses only the negative prompt's (empty) SD prediction, which
        # usd-image-guidance embeds itself: no text prompt is needed (the USD configs give prompt: '')
        plain["prompt_processor_type"] = "dummy-prompt-processor"
        plain["prompt_processor"] = {"prompt": str((plain.get("prompt_processor") or {}).get("prompt", ""))}
    if stage == "geometry":
        plain.setdefault("guidance_input", "comp_normal")
    return plain


class OriginalUSDSystem:
    """Mixin for a Lift3DSystem subclass whose Config derives from OriginalSystemKeys: the section is
    translated (to_lift3d_system) before validation and construction, so a saved config stays the
    user's and a resumed run translates it the same way."""

    reference_term = False

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True,
                        exp_root_dir: str = "outputs") -> Any:
        return super().validate_config(to_lift3d_system(cfg, cls.reference_term, path), path, resumed, fitting,  # type: ignore[misc]
                                       exp_root_dir)

    def __init__(self, cfg: Any, resumed: bool = False, exp_root_dir: str = "outputs") -> None:
        super().__init__(to_lift3d_system(cfg, self.reference_term), resumed=resumed, exp_root_dir=exp_root_dir)  # type: ignore[call-arg]


__all__ = ["OriginalSystemKeys", "OriginalUSDSystem", "STAGES", "to_lift3d_system"]
