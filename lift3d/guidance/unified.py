"""`stable-diffusion-unified-guidance` / `zero123-unified-guidance`: threestudio's "unified" guidances, the
ones its Magic123, zero123-simple and experimental ProlificDreamer configs name (docs/methods/magic123.md §1,
docs/methods/prolificdreamer.md §5).

They are lift3d's `stable-diffusion-guidance` / `zero123-guidance` (the same distillation step,
lift3d.guidance.sds) with the unified guidances' conventions:

- `guidance_type: sds`, and for the SD guidance `vsd` (below);
- classifier-free guidance eps_u + s (eps_c - eps_u) (`cfg_form: standard`);
- `weighting_strategy` names: `dreamfusion` (w = 1 - alphabar_t, lift3d's `sds`), `uniform`, `fantasia3d`;
- one timestep for the whole batch (t drawn once, repeated);
- the losses are named `loss_sd` (and `loss_sd_img` with HiFA's `use_img_loss`), weighed by
  `lambda_sd` / `lambda_sd_img` (`lambda_3d_sd` as Magic123's 3D prior).

`guidance_type: vsd` (stable-diffusion-unified-guidance only) is `stable-diffusion-vsd-guidance`
(lift3d.guidance.vsd: the same step, LoRA model and LoRA loss) with the unified guidance's conventions
(the weighting above, one t per batch, loss_sd / loss_sd_img / loss_train_phi) and keys:

    vsd_phi_model_name_or_path       the LoRA model (null: a copy of pretrained_model_name_or_path)
    vsd_guidance_scale_phi           its CFG scale s_phi (pretrained_model_name_or_path_lora, guidance_scale_lora)
    vsd_lora_cfg_training            zero camera with P = 0.1 in the LoRA loss (default false here)
    vsd_lora_n_timestamp_samples     timesteps per latent in the LoRA loss
    vsd_camera_condition_type        extrinsics | mvp

and one difference of the formula: the LoRA's two CFG branches both get the prompt (camera vs zero
camera), where stable-diffusion-vsd-guidance gives the zero-camera branch the negative prompt; with
s_phi = 1 (the default) the two guidances compute the same gradient (tests/test_vsd_unified_hifa.py).
`vsd_use_lora: false`, `vsd_use_camera_condition: false` and the `spherical` camera are ConfigErrors.

Keys for features lift3d does not have (ControlNet, LoRA weights, token merging) are a ConfigError
when set; `return_rgb_1step_orig` / `return_rgb_multistep_orig` (images for threestudio's
zero123-simple-system to save) are accepted and produce nothing (use `guidance_eval_interval`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from omegaconf import OmegaConf
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.guidance.sds import WEIGHTING_STRATEGIES
from lift3d.config import parse_structured
from lift3d.guidance.stable_diffusion import StableDiffusionGuidance
from lift3d.guidance.vsd import StableDiffusionVSDGuidance
from lift3d.guidance.zero123 import Zero123Guidance
from lift3d.registry import register

WEIGHTING_NAMES = {"dreamfusion": "sds", **{w: w for w in WEIGHTING_STRATEGIES}}
LOSS_NAMES = {"loss_sds": "loss_sd", "loss_sds_img": "loss_sd_img",
              # VSD mode (stable-diffusion-vsd-guidance's names -> the unified guidance's)
              "loss_vsd": "loss_sd", "loss_vsd_img": "loss_sd_img", "loss_lora": "loss_train_phi"}
VSD_CAMERAS = ("extrinsics", "mvp")
UNIFIED_LORA_RANK = 4  # threestudio's unified guidance: diffusers' LoRA attention processors, rank 4


def validate_vsd_keys(cfg: Any, path: str) -> None:
    """The VSD-mode keys lift3d has no counterpart for (module docstring)."""
    if not cfg.vsd_use_lora or not cfg.vsd_use_camera_condition:
        key = "vsd_use_lora" if not cfg.vsd_use_lora else "vsd_use_camera_condition"
        raise ConfigError(f"{path}.{key}=false is not supported: lift3d's VSD LoRA model always has adapters and "
                          f"the camera embedding; set it to true (threestudio's default).")
    if cfg.vsd_camera_condition_type not in VSD_CAMERAS:
        raise ConfigError(f"{path}.vsd_camera_condition_type = '{cfg.vsd_camera_condition_type}': use one of "
                          f"{', '.join(VSD_CAMERAS)} (the 'spherical' camera is not supported).")


def vsd_mode_section(cfg: Any) -> dict:
    """A unified guidance section (parsed, weighting already lift3d's or threestudio's name) as the
    section of stable-diffusion-vsd-guidance it runs as: the vsd_* keys under that guidance's names,
    no ProlificDreamer max_step anneal (the unified guidance has none)."""
    section = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    section.update(
        pretrained_model_name_or_path_lora=section.get("vsd_phi_model_name_or_path")
        or section["pretrained_model_name_or_path"],
        guidance_scale_lora=section["vsd_guidance_scale_phi"],
        lora_cfg_training=section["vsd_lora_cfg_training"],
        lora_n_timestamp_samples=section["vsd_lora_n_timestamp_samples"],
        camera_condition_type=section["vsd_camera_condition_type"],
        lora_rank=UNIFIED_LORA_RANK,
        anneal_start_step=None,
    )
    return section


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
    GUIDANCE_TYPES: tuple[str, ...] = ("sds",)  # the modes of `guidance_type` this guidance runs

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        if cfg.guidance_type not in cls.GUIDANCE_TYPES:
            raise ConfigError(f"{path}.guidance_type = '{cfg.guidance_type}': lift3d's {cls.unified_name()} runs "
                              f"{' / '.join(repr(m) for m in cls.GUIDANCE_TYPES)}; for VSD use "
                              f"stable-diffusion-unified-guidance or stable-diffusion-vsd-guidance.")
        if cfg.weighting_strategy not in WEIGHTING_NAMES:
            raise ConfigError(f"{path}.weighting_strategy '{cfg.weighting_strategy}' is unknown: use one of "
                              f"dreamfusion, uniform, fantasia3d.")
        for key in cls.UNSUPPORTED:
            if cfg.get(key):
                raise ConfigError(f"{path}.{key} is set, but lift3d's {cls.unified_name()} has no such feature: "
                                  f"remove the key (or set it to null/false).")
        lift3d_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        lift3d_cfg.weighting_strategy = WEIGHTING_NAMES[cfg.weighting_strategy]
        if cfg.guidance_type == "vsd":
            validate_vsd_keys(cfg, path)
            section = parse_structured(UnifiedVSDMode.Config, vsd_mode_section(lift3d_cfg), path,
                                       f"guidance '{cls.unified_name()}'")
            StableDiffusionVSDGuidance.validate_config(section, path)
            return
        super().validate_config(lift3d_cfg, path)  # type: ignore[misc]

    @classmethod
    def unified_name(cls) -> str:
        from lift3d.registry import name_of

        registered = cls.__mro__[1] if cls.__name__ == "UnifiedVSDMode" else cls  # the VSD mode answers for its parent
        return name_of(registered)

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
    GUIDANCE_TYPES = ("sds", "vsd")
    # loss_train_phi: VSD mode's LoRA loss (SDS never returns it; threestudio's configs weigh it in both modes)
    produces = ("loss_sd", "loss_sd_img", "loss_train_phi")

    def __new__(cls, cfg: Any = None, *args: Any, **kwargs: Any) -> "StableDiffusionUnifiedGuidance":
        # `guidance_type: vsd` builds the VSD mode (a subclass, so __init__ runs on it with the same section)
        if cls is StableDiffusionUnifiedGuidance and (cfg or {}).get("guidance_type", "sds") == "vsd":
            cls = UnifiedVSDMode
        return super().__new__(cls)

    def configure(self) -> None:
        if self.cfg.enable_channels_last_format:
            self.cfg.enable_channels_last = True
        super().configure()

    def name_losses(self, out: dict[str, Any]) -> dict[str, Any]:
        return self.unified_losses(out)


class UnifiedVSDMode(StableDiffusionUnifiedGuidance, StableDiffusionVSDGuidance):
    """stable-diffusion-unified-guidance with `guidance_type: vsd` (module docstring): built by the registered
    class from the unified section, run as stable-diffusion-vsd-guidance (vsd_mode_section)."""

    @dataclass
    class Config(StableDiffusionUnifiedGuidance.Config, StableDiffusionVSDGuidance.Config):
        pass

    def __init__(self, cfg: Any = None, *args: Any, **kwargs: Any) -> None:
        unified = parse_structured(StableDiffusionUnifiedGuidance.Config, cfg, "system.guidance",
                                   "guidance 'stable-diffusion-unified-guidance'")
        super().__init__(vsd_mode_section(unified), *args, **kwargs)

    @classmethod
    def registered_name(cls) -> str:
        return StableDiffusionUnifiedGuidance.registered_name()  # messages name the registered guidance

    def lora_text_embeddings(self, text_embeddings: Tensor) -> Tensor:
        cond = text_embeddings.chunk(2)[0]  # [B,77,D]: the prompt for the camera and the zero-camera halves
        return torch.cat([cond, cond])

    def __call__(self, image: Tensor, batch: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.unified_losses(super().__call__(image, batch, *args, **kwargs))


@register("zero123-unified-guidance")
class Zero123UnifiedGuidance(UnifiedConventions, Zero123Guidance):
    @dataclass
    class Config(UnifiedKeys, Zero123Guidance.Config):
        pretrained_model_name_or_path: str = "bennyguo/zero123-diffusers"
        guidance_scale: float = 5.0

    produces = ("loss_sd", "loss_train_phi")  # loss_train_phi: as stable-diffusion-unified-guidance

    def __call__(self, image: Tensor, batch: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.unified_losses(super().__call__(image, batch, *args, **kwargs))


__all__ = ["StableDiffusionUnifiedGuidance", "UnifiedVSDMode", "Zero123UnifiedGuidance", "vsd_mode_section"]
