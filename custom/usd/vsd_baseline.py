"""USD text-to-3D on a VSD base: `usd-text-guidance` with `baseline: vsd_lora`
(docs/methods/prolificdreamer.md §5, docs/methods/usd.md §1).

USD splits the SDS residual into a guidance term and a baseline term weighted by lambda; VSD
(ProlificDreamer) replaces SDS's baseline, the sampled noise eps, by the noise prediction eps_phi of a
camera-conditioned LoRA trained on the renders. The two compose:

    grad = w(t) [ w_cfg (eps_c - eps_u) + lambda (eps_u - eps_phi) ]

(lambda = 1: exactly VSD's w(t) (eps_cfg - eps_phi); lambda = 0: USD, eps_phi drops out). It is
stable-diffusion-vsd-guidance (lift3d.guidance.vsd: the LoRA model, its loss `loss_lora`, its weights as
the trainable module `guidance_params`, the camera condition, the text rows) with one change, its
predictor: the pretrained score is USD's `usd_guided_noise(eps_c, eps_u, eps_phi, w_cfg, lambda)`, so
that the shared step's w(t) (guided - noise) with guided = noise + (eps_usd - eps_phi) is the gradient
above. At lambda = 0 the LoRA is not called and the step is plain USD's, bit for bit (the LoRA still
trains: a scheduled lambda may rise later). The loss is `loss_usd`, as plain USD's.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import torch
from torch import Tensor

from lift3d.config import schedule_max
from lift3d.errors import ConfigError
from lift3d.guidance.sds import Prediction
from lift3d.guidance.vsd import StableDiffusionVSDGuidance, VSDPrediction


class VSDBaseline:
    """Mixin before a USD text guidance class and StableDiffusionVSDGuidance (see `vsd_base_of`)."""

    registered_class: type = None  # the USD text guidance the section names (messages, registry name)

    @classmethod
    def registered_name(cls) -> str:
        return cls.registered_class.registered_name()

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        if cfg.use_img_loss:
            raise ConfigError(f"{path}.use_img_loss=true is not offered with {path}.baseline=vsd_lora (HiFA's image "
                              f"term is VSD's, not USD's): set use_img_loss=false.")
        super().validate_config(cfg, path)  # USD's lambda, then stable-diffusion-vsd-guidance's (the LoRA model)

    def vsd_predictor(self, text_vd: Tensor, text_vi: Tensor):
        """predict(z_t, t, noise, camera): guided = noise + (eps_usd - eps_phi), eps_usd = USD's guided noise
        with eps_phi as its baseline (text_vd [2B,77,D] view-dependent; text_vi the LoRA's rows; camera [B,16]).
        Without a camera (guidance evaluation) or at lambda = 0: plain USD's guided noise (baseline eps)."""

        def predict(z_t: Tensor, t: Tensor, noise: Tensor, camera: Optional[Tensor]) -> Prediction:
            if camera is None or self.usd_lambda == 0.0:
                eps_usd = self.guided_noise(z_t, t, text_vd, noise)
                return Prediction(eps_usd, VSDPrediction(eps_usd.detach(), noise))
            with torch.no_grad():  # the LoRA learns from loss_lora only
                eps_phi = self.lora_noise(z_t, t, text_vi, camera)
            eps_usd = self.guided_noise(z_t, t, text_vd, eps_phi)
            return Prediction(noise + (eps_usd - eps_phi), VSDPrediction(eps_usd.detach(), eps_phi))

        return predict

    def __call__(self, image: Tensor, batch: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        out = super().__call__(image, batch, *args, **kwargs)  # stable-diffusion-vsd-guidance's call
        out["loss_usd"] = out.pop("loss_vsd")
        out["usd_lambda"] = torch.tensor(self.usd_lambda)
        return out


@functools.lru_cache(maxsize=None)
def vsd_base_of(usd_class: type) -> type:
    """The VSD-base variant of a USD text guidance class (usd-text-guidance or its alias)."""
    return type(f"{usd_class.__name__}VSDBase", (VSDBaseline, usd_class, StableDiffusionVSDGuidance),
                {"registered_class": usd_class, "__module__": __name__, "__doc__": __doc__})




def check_lora_training(system: Any, path: str = "system") -> None:
    """ConfigError unless a system section whose guidance has `baseline: vsd_lora` trains the LoRA
    (lambda_lora > 0 and, when optimizer groups are listed, one for `guidance_params`), and unless
    lambda_lora is set only then (without the LoRA there is no loss_lora to weigh)."""
    guidance = system.get("guidance") or {}
    vsd = guidance.get("baseline", "noise") == "vsd_lora"
    weight = (system.get("loss") or {}).get("lambda_lora")
    weighted = weight is not None and schedule_max(weight) > 0.0
    if vsd and not weighted:
        raise ConfigError(f"{path}.loss.lambda_lora is not > 0 but {path}.guidance.baseline is vsd_lora: the LoRA "
                          f"learns from loss_lora only; set {path}.loss.lambda_lora=1.0 (ProlificDreamer's value).")
    if weighted and not vsd:
        raise ConfigError(f"{path}.loss.lambda_lora weighs no loss: {path}.guidance.baseline is noise (no LoRA); "
                          f"remove lambda_lora or set {path}.guidance.baseline=vsd_lora.")
    groups = ((system.get("optimizer") or {}).get("params")) or {}
    if vsd and groups and not any(k == "guidance_params" or str(k).startswith("guidance_params.") for k in groups):
        raise ConfigError(f"{path}.optimizer.params has no group for the LoRA: add guidance_params: {{lr: 0.0001}} "
                          f"(ProlificDreamer's value), or the LoRA never trains.")


__all__ = ["VSDBaseline", "check_lora_training", "vsd_base_of"]
