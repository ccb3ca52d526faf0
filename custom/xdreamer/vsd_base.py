"""`xdreamer-vsd-guidance`: X-Dreamer's appearance stage on a VSD base (docs/methods/prolificdreamer.md §5,
docs/methods/xdreamer.md §4).

X-Dreamer's CG-LoRA adapts the *pretrained* model (camera-aware text conditioning) and trains through
the AMA loss; VSD's LoRA estimates the score of the *renders*. They are different models and compose:

    eps_pre = X-Dreamer's guided noise: the CG-LoRA-adapted SD, CFG  (the AMA maps are recorded in this call)
    eps_phi = stable-diffusion-vsd-guidance's camera-conditioned LoRA (a separate private SD copy)
    grad    = w(t) (eps_pre - eps_phi)                               (VSD's score in place of SDS's)
    loss    = lambda_vsd loss_vsd + lambda_ama loss_ama + lambda_lora loss_lora

It is `xdreamer-guidance` (CG-LoRA, AMA, EOS conditions, lora_from) and `stable-diffusion-vsd-guidance`
(the LoRA model, `lora_noise`, `lora_loss`, the camera condition and the LoRA keys) together; only
X-Dreamer's step hook `score_step` changes: the step's predictor returns guided = noise + (eps_pre - eps_phi),
so that the shared step's w(t) (guided - noise) is the VSD gradient. The trainable module (system child
`guidance_params`) holds both adapters: `guidance_params.cg_lora.*` and `guidance_params.vsd_lora.*`
(optimizer groups `guidance_params.cg_lora` / `guidance_params.vsd_lora`, or `guidance_params` for both).

The appearance stage only (coarse_steps = 0): the geometry stage distils normal maps, where
ProlificDreamer itself uses SDS.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.guidance.sds import DistillStep, Prediction
from lift3d.guidance.vsd import StableDiffusionVSDGuidance, VSDPrediction
from lift3d.registry import register

from .guidance import XDreamerGuidance


class XDreamerVSDWeights(nn.Module):
    """The trained weights of both adapters: `cg_lora` (X-Dreamer's, absent with use_cg_lora=false) and
    `vsd_lora` (VSD's adapters + camera embedding). The very modules the UNets use (shared, not copied)."""

    def __init__(self, cg_lora: Optional[nn.Module], vsd_lora: nn.Module) -> None:
        super().__init__()
        if cg_lora is not None:
            self.cg_lora = cg_lora
        self.vsd_lora = vsd_lora


@register("xdreamer-vsd-guidance")
class XDreamerVSDGuidance(XDreamerGuidance, StableDiffusionVSDGuidance):
    @dataclass
    class Config(XDreamerGuidance.Config, StableDiffusionVSDGuidance.Config):
        # VSD's score conventions (ProlificDreamer): CFG 7.5, w(t) = 1 - alphabar (X-Dreamer's SDS uses 50 and
        # sqrt(alphabar)(1 - alphabar), values for the mode-seeking SDS score)
        guidance_scale: float = 7.5
        cfg_form: str = "standard"
        weighting_strategy: str = "sds"
        anneal_start_step: Optional[int] = None  # X-Dreamer's max_step_percent schedule anneals t

    produces = ("loss_vsd", "loss_ama", "loss_lora")

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.guidance") -> None:
        if cfg.coarse_steps > 0:
            raise ConfigError(f"{path}.coarse_steps = {cfg.coarse_steps}: xdreamer-vsd-guidance is for the appearance "
                              f"stage (colour renders); the geometry stage distils normal maps with SDS "
                              f"(xdreamer-guidance), as ProlificDreamer's own geometry stage. Set coarse_steps=0.")
        if cfg.use_img_loss:
            raise ConfigError(f"{path}.use_img_loss=true is not offered by xdreamer-vsd-guidance: set it to false.")
        super().validate_config(cfg, path)  # X-Dreamer's keys, then VSD's (the LoRA model), then SD's

    def configure(self) -> None:
        super().configure()  # SD (private: CG-LoRA's processors go into it), the VSD LoRA copy, CG-LoRA
        self.weights = XDreamerVSDWeights(self.cg_lora, self.lora)

    def trainable_modules(self) -> XDreamerVSDWeights:
        return self.weights

    def load_lora(self, spec: str) -> None:
        """lora_from: CG-LoRA from a stage of xdreamer-guidance (its keys) or of this guidance (cg_lora.*)."""
        from .guidance import load_lora_state

        state = load_lora_state(spec)
        if any(k.startswith("cg_lora.") for k in state):
            state = {k[len("cg_lora."):]: v for k, v in state.items() if k.startswith("cg_lora.")}
            self.cg_lora.load_state_dict(state)
            return
        super().load_lora(spec)

    def score_step(self, latents: Tensor, predict: Any, batch: dict[str, Any], prompt_utils: Any,
                   **kwargs: Any) -> DistillStep:
        """VSD's step around X-Dreamer's predictor (module docstring): loss_vsd (from the step's loss_sds) and
        loss_lora; the returned step's eps_guided is eps_pre (what guidance evaluation shows, as VSD)."""
        text_vi = prompt_utils.get_text_embeddings(  # [2B,77,D] the LoRA's rows: view-independent
            batch["elevation"], batch["azimuth"], batch.get("camera_distances"), False).to(latents.device)
        camera = self.camera_condition(batch).to(latents.device)  # [B,16]

        def vsd_predict(z_t: Tensor, t: Tensor, noise: Tensor, cam: Optional[Tensor]) -> Prediction:
            eps_pre = predict(z_t, t, noise, None).guided  # CG-LoRA-adapted SD (AMA maps recorded here)
            with torch.no_grad():  # the VSD term never reaches the LoRA (it learns from loss_lora)
                eps_phi = self.lora_noise(z_t, t, text_vi, cam)
            return Prediction(noise + (eps_pre - eps_phi), VSDPrediction(eps_pre.detach(), eps_phi))

        step = self.distill(latents, vsd_predict, extra=camera, **kwargs)
        step.out["loss_vsd"] = step.out.pop("loss_sds")
        step.out["loss_lora"] = self.lora_loss(latents, text_vi.chunk(2)[0], camera)
        return dataclasses.replace(step, eps_guided=step.extra.eps_pretrained)


__all__ = ["XDreamerVSDGuidance", "XDreamerVSDWeights"]
