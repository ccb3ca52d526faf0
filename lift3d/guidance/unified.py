"""`stable-diffusion-unified-guidance` / `zero123-unified-guidance`: threestudio's "unified" guidances in
their SDS mode, the ones its Magic123 and zero123-simple configs name (docs/methods/magic123.md §1).

They are lift3d's `stable-diffusion-guidance` / `zero123-guidance` (the same distillation step,
lift3d.guidance.sds) with the unified guidances' conventions:

- `guidance_type: sds` (the only mode here; `vsd` is `stable-diffusion-vsd-guidance`);
- classifier-free guidance eps_u + s (eps_c - eps_u) (`cfg_form: standard`);
- `weighting_strategy` names: `dreamfusion` (w = 1 - alphabar_t, lift3d's `sds`), `uniform`, `fantasia3d`;
- one timestep for the whole batch (t drawn once, repeated);
- the losses are named `loss_sd` (and `loss_sd_img` with HiFA's `use_img_loss`), weighed by
  `lambda_sd` / `lambda_sd_img` (`lambda_3d_sd` as Magic123's 3D prior).

Keys for features lift3d does not have (ControlNet, LoRA weights, token merging) are a ConfigError
when set; `return_rgb_1step_orig` / `return_rgb_multistep_orig` (images for threestudio's
zero123-simple-system to save) are accepted and produce nothing (use `guidance_eval_interval`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import OmegaConf
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.guidance.sds import WEIGHTING_STRATEGIES
from lift3d.guidance.stable_diffusion import StableDiffusionGuidance
from lift3d.guidance.zero123 import Zero123Guidance
from lift3d.registry import register

WEIGHTING_NAMES = {"dreamfusion": "sds", **{w: w for w in WEIGHTING_STRATEGIES}}
LOSS_NAMES = {"loss_sds": "loss_sd", "loss_sds_img": "loss_sd_img"}


@dataclass
class UnifiedKeys:
    """The unified guidances' keys shared by both (threestudio's names)."""

    guidance_type: str = "sds"
    weighting_strategy: str = "dreamfusion"
    cfg_form: str = "standard"
    return_rgb_1step_orig: bool = False
    return_rgb_multistep_orig: bool = False
    n_rgb_multistep_orig_steps: int = 4
    vsd_phi_model_name_or_path: Optional[str] = None
    vsd_guidance_scale_phi: float = 1.0
    vsd_use_lora: bool = True
    vsd_lora_cfg_training: bool = False
    vsd_lora_n_timestamp_samples: int = 1
    vsd_use_camera_condition: bool = True
    vsd_camera_condition_type: Optional[str] = "extrinsics"


class UnifiedConventions:
    """Mixin (before the lift3d guidance class): validation, weighting names, one t per batch, loss names."""

    UNSUPPORTED: tuple[str, ...] = ()  # keys whose non-empty value names a feature lift3d does not have

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        if cfg.guidance_type != "sds":
            raise ConfigError(f"{path}.guidance_type = '{cfg.guidance_type}': lift3d's {cls.unified_name()} runs "
                              f"'sds' only; for VSD use guidance_type stable-diffusion-vsd-guidance.")
        if cfg.weighting_strategy not in WEIGHTING_NAMES:
            raise ConfigError(f"{path}.weighting_strategy '{cfg.weighting_strategy}' is unknown: use one of "
                              f"dreamfusion, uniform, fantasia3d.")
        for key in cls.UNSUPPORTED:
            if cfg.get(key):
                raise ConfigError(f"{path}.{key} is set, but lift3d's {cls.unified_name()} has no such feature: "
                                  f"remove the key (or set it to null/false).")
        lift3d_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        lift3d_cfg.weighting_strategy = WEIGHTING_NAMES[cfg.weighting_strategy]
        super().validate_config(lift3d_cfg, path)  # type: ignore[misc]

    @classmethod
    def unified_name(cls) -> str:
        from lift3d.registry import name_of

        return name_of(cls)

    def configure(self) -> None:
        self.cfg.weighting_strategy = WEIGHTING_NAMES[self.cfg.weighting_strategy]  # lift3d's name from here on
        super().configure()  # type: ignore[misc]

    def sample_timesteps(self, batch_size: int, device: Any) -> Tensor:
        return super().sample_timesteps(1, device).repeat(batch_size)  # type: ignore[misc]

    @staticmethod
    def unified_losses(out: dict[str, Any]) -> dict[str, Any]:
        return {LOSS_NAMES.get(k, k): v for k, v in out.items()}


@register("stable-diffusion-unified-guidance")
class StableDiffusionUnifiedGuidance(UnifiedConventions, StableDiffusionGuidance):
    @dataclass
    class Config(UnifiedKeys, StableDiffusionGuidance.Config):
        pretrained_model_name_or_path: str = "runwayml/stable-diffusion-v1-5"
        controlnet_model_name_or_path: Optional[str] = None
        preprocessor: Optional[str] = None
        control_scale: float = 1.0
        lora_model_name_or_path: Optional[str] = None
        enable_channels_last_format: bool = False
        token_merging: bool = False
        token_merging_params: Optional[dict] = field(default_factory=dict)

    UNSUPPORTED = ("controlnet_model_name_or_path", "preprocessor", "lora_model_name_or_path", "token_merging")
    # loss_train_phi: VSD mode's LoRA loss; listed so that threestudio's configs may weigh it (SDS never returns it)
    produces = ("loss_sd", "loss_sd_img", "loss_train_phi")

    def configure(self) -> None:
        if self.cfg.enable_channels_last_format:
            self.cfg.enable_channels_last = True
        super().configure()

    def name_losses(self, out: dict[str, Any]) -> dict[str, Any]:
        return self.unified_losses(out)


@register("zero123-unified-guidance")
class Zero123UnifiedGuidance(UnifiedConventions, Zero123Guidance):
    @dataclass
    class Config(UnifiedKeys, Zero123Guidance.Config):
        pretrained_model_name_or_path: str = "bennyguo/zero123-diffusers"
        guidance_scale: float = 5.0

    produces = ("loss_sd", "loss_train_phi")  # loss_train_phi: as stable-diffusion-unified-guidance

    def __call__(self, image: Tensor, batch: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.unified_losses(super().__call__(image, batch, *args, **kwargs))


__all__ = ["StableDiffusionUnifiedGuidance", "Zero123UnifiedGuidance"]
