"""The camera-conditioned LoRA model of variational score distillation (ProlificDreamer, Wang et al.,
arXiv 2305.16213 §3-4; docs/methods/prolificdreamer.md §2).

VSD needs the score of the distribution of the *current renders* as well as the pretrained one. It
is estimated by a second copy of the Stable Diffusion UNet (`pretrained_model_name_or_path_lora`,
SD 2.1 by default) fine-tuned while the 3D model trains:

- low-rank adapters (peft LoRA, rank `lora_rank`, scale 1) on every attention projection
  to_q / to_k / to_v / to_out.0 of the UNet, B initialised to zero (the adapted UNet starts equal
  to its base; A ~ N(0, 1/rank), as diffusers' LoRA layers);
- the camera as a class embedding: the flattened 4x4 camera matrix c [16] (camera-to-world for
  `camera_condition_type: extrinsics`, the MVP matrix for `mvp`) goes through a two-layer MLP
  (16 -> D -> D, SiLU, D = the UNet's time-embedding width: 1280 for SD) whose output is added
  to the timestep embedding (the UNet's `class_embedding` slot). A zero camera is the
  "unconditional" camera of the LoRA's own classifier-free guidance.

`CameraConditionedStableDiffusion` is that model: a private copy (never the shared pretrained
UNet) of a `StableDiffusion` folder with `predict_noise(..., camera=[N,16])` and the conversion of a
v-prediction model's output to noise (SD 2.1 is a v-prediction model, SD 2.1-base an eps one).
`VSDLoRA` is the nn.Module of its trainable weights (the adapters' A and B and the camera MLP):
the guidance's `trainable_modules()`, so the system checkpoints and optimises exactly these.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import torch
import torch.nn as nn
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.models.noise_schedule import gather_alphabar
from lift3d.models.stable_diffusion import StableDiffusion

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections (self- and cross-attention)
CAMERA_DIM = 16  # a flattened 4x4 matrix
PREDICTION_TYPES = ("epsilon", "v_prediction")


def scheduler_prediction_type(path: str, what: str) -> str:
    """`prediction_type` of a model folder's scheduler/scheduler_config.json (no weights read)."""
    config_file = os.path.join(path, "scheduler", "scheduler_config.json")
    try:
        with open(config_file, encoding="utf-8") as fp:
            kind = json.load(fp).get("prediction_type", "epsilon")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what}: cannot read {config_file} ({exc}); the model folder is damaged: download it again.") from None
    if kind not in PREDICTION_TYPES:
        raise ConfigError(f"{what}: '{path}' predicts '{kind}'; VSD supports {', '.join(PREDICTION_TYPES)} models.")
    return kind


class CameraEmbedding(nn.Module):
    """c [N,16] -> [N,D]: Linear(16, D), SiLU, Linear(D, D) (ProlificDreamer's camera class embedding).

    Runs in its own (fp32) dtype whatever the UNet's; diffusers casts the output to the UNet's dtype."""

    def __init__(self, out_dim: int, in_dim: int = CAMERA_DIM) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, camera: Tensor) -> Tensor:
        x = camera.reshape(camera.shape[0], -1).to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(x)))


class VSDLoRA(nn.Module):
    """The trainable weights of the LoRA model: `camera_embedding` and `adapters.<layer>.{A,B}`.

    The modules are the very ones inside the LoRA UNet (shared, not copied): loading this module's
    state dict changes the UNet's predictions, and the base weights are not part of it."""

    def __init__(self, camera_embedding: CameraEmbedding, adapters: dict[str, nn.Module]) -> None:
        super().__init__()
        self.camera_embedding = camera_embedding
        self.adapters = nn.ModuleDict(adapters)


class CameraConditionedStableDiffusion(StableDiffusion):
    """A private Stable Diffusion copy with LoRA adapters and a camera class embedding (module docstring).

        predict_noise(z_t [N,4,h,w], t [N], text_embeddings [N,77,D], camera=[N,16]) -> raw UNet output
        predict_eps(...)  -> eps [N,4,h,w] (a v-prediction output converted: eps = sqrt(a) v + sqrt(1-a) z_t)
        training_target(z, noise, t) -> what the UNet is trained to output (noise, or v = sqrt(a) eps - sqrt(1-a) z)
    """

    KIND = "Stable Diffusion (the VSD LoRA model)"

    def __init__(self, path: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(path, *args, **kwargs)
        self.prediction_type = scheduler_prediction_type(self.path, self.KIND)
        self.lora: Optional[VSDLoRA] = None

    def add_lora(self, rank: int = 4) -> VSDLoRA:
        """Adapters on every attention projection plus the camera embedding; returns their module (fp32)."""
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer

        if self.lora is not None:
            return self.lora
        unet = self.unet
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS), init_lora_weights="gaussian")
        inject_adapter_in_model(config, unet)
        adapters: dict[str, nn.Module] = {}
        for name, module in unet.named_modules():
            if isinstance(module, LoraLayer):
                adapters[name.replace(".", "-")] = nn.ModuleDict(
                    {"A": module.lora_A["default"], "B": module.lora_B["default"]})
        if not adapters:
            raise ConfigError(f"{self.KIND} '{self.path}': its UNet has no attention projection to adapt "
                              f"({', '.join(LORA_TARGETS)}); give a Stable Diffusion folder.")
        camera = CameraEmbedding(int(unet.time_embedding.linear_2.out_features)).to(self.device)
        unet.class_embedding = camera  # diffusers adds class_embedding(class_labels) to the time embedding
        self.lora = VSDLoRA(camera, adapters).to(self.device, torch.float32)
        for p in self.lora.parameters():
            p.requires_grad_(True)
        return self.lora

    def to(self, device: torch.device | str) -> "CameraConditionedStableDiffusion":
        super().to(device)  # casts the whole UNet to the weights' dtype (fp16 on GPU) ...
        if self.lora is not None:  # ... but the trained weights stay fp32 (same Parameter objects)
            self.lora.to(self.device, torch.float32)
        return self

    def unet_kwargs(self, x: Tensor, t: Tensor, text_embeddings: Tensor, camera: Optional[Tensor] = None,
                    **conditioning: Any) -> dict[str, Any]:
        if camera is None:
            raise ValueError("the VSD LoRA model needs camera=[N,16] (a zero camera for its unconditional branch)")
        return {"class_labels": camera.reshape(camera.shape[0], -1).float()}

    def predict_eps(self, z_t: Tensor, t: Tensor, text_embeddings: Tensor, camera: Tensor) -> Tensor:
        out = self.predict_noise(z_t, t, text_embeddings, camera=camera)
        if self.prediction_type == "epsilon":
            return out
        a = gather_alphabar(self.alphas_cumprod, t, z_t)
        return a.sqrt() * out + (1.0 - a).sqrt() * z_t

    def training_target(self, z: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self.prediction_type == "epsilon":
            return noise
        a = gather_alphabar(self.alphas_cumprod, t, z)
        return a.sqrt() * noise - (1.0 - a).sqrt() * z


__all__ = ["CAMERA_DIM", "CameraConditionedStableDiffusion", "CameraEmbedding", "LORA_TARGETS", "VSDLoRA",
           "scheduler_prediction_type"]
