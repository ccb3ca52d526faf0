"""PODIA-3D's pose-preserved diffusion model (PPD; docs/methods/podia3d.md §"Step 2"): the depth-conditioned
model fine-tuned on source renders paired with their depth, so that at very high noise it draws the
*source* domain's poses from depth alone (the general model's text-to-image pose bias is trained away).

    specialized, trainable = specialize(general, part="controlnet", trainable=["controlnet_"])
    loss = depth_finetune_loss(specialized, images, depth, text_embeddings, generator)  # ε-MSE
    loss.backward(); optimizer.step()   # over trainable.parameters()

`specialize` returns a second model object that shares everything with `general` (VAE, schedule, the
UNet for a ControlNet model) except one network, `part`, which is a trainable copy: the ControlNet of
a `StableDiffusionControlNet` (its depth pathway) or the UNet of a `StableDiffusionDepth` (SD-2-depth
layout). `trainable` picks which of that copy's parameters learn (name substrings; [] = all): a full
fine-tune of a small part, e.g. the ControlNet's zero convolutions and conditioning embedding, or the
UNet's attention blocks. The copy is an nn.Module the caller owns (a Lightning system keeps it as a
child, so it is checkpointed and resumed); `general` is untouched and keeps serving the low-noise
steps of specialized-to-general sampling (lift3d.gan.depth_generation).
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.gan.depth_generation import depth_conditioning
from lift3d.models.frozen import FrozenModels
from lift3d.models.stable_diffusion_controlnet import StableDiffusionControlNet
from lift3d.models.stable_diffusion_depth import StableDiffusionDepth

DEFAULT_PART = {StableDiffusionControlNet: "controlnet", StableDiffusionDepth: "unet"}


def default_part(model: Any) -> str:
    for cls, part in DEFAULT_PART.items():
        if isinstance(model, cls):
            return part
    raise ValueError(f"{type(model).__name__} is not depth-conditioned: the pose-preserved model is fine-tuned from "
                     f"StableDiffusionDepth or StableDiffusionControlNet")


def specialize(general: Any, part: str | None = None, trainable: Sequence[str] = ()) -> tuple[Any, torch.nn.Module]:
    """(specialized model, its trainable network). The network starts as an exact copy of general's `part`
    (so specialized == general before training); parameters whose names contain none of `trainable`
    stay frozen (all learn when `trainable` is empty)."""
    part = part or default_part(general)
    networks = dict(vars(general.models))
    if part not in networks or not isinstance(networks[part], torch.nn.Module):
        raise ValueError(f"{type(general).__name__} has no network '{part}' to fine-tune (it has {sorted(networks)})")
    network = copy.deepcopy(networks[part]).float().train()
    chosen = 0
    for name, p in network.named_parameters():
        p.requires_grad_(not trainable or any(s in name for s in trainable))
        chosen += int(p.requires_grad)
    if chosen == 0:
        raise ValueError(f"trainable = {list(trainable)} matches no parameter of the {part}: give name substrings of it")
    specialized = copy.copy(general)
    specialized.models = FrozenModels(**{**networks, part: network})
    specialized.weights_dtype = torch.float32  # the copy trains in fp32
    return specialized, network


def depth_finetune_loss(model: Any, images: Tensor, depth: Tensor, text_embeddings: Tensor,
                        generator: torch.Generator | None = None) -> Tensor:
    """ε-MSE of the depth-conditioned model on (source render, its depth, caption): images [B,3,H,W] in [0,1],
    depth [B,1,h,w] (ray distance), text [B|1,77,D]; t ~ U{0..T-1} (LDM's objective; PODIA-3D §3.2)."""
    b = images.shape[0]
    with torch.no_grad():
        z0 = model.encode_images(images.to(model.device).float(), sample=True)  # [B,4,h,w]
    t = torch.randint(model.num_train_timesteps, (b,), generator=generator).to(model.device)
    noise = torch.randn(z0.shape, generator=generator).to(model.device)
    z_t = model.add_noise(z0, noise, t)
    conditioning = depth_conditioning(model, depth.to(model.device), tuple(images.shape[-2:]))
    eps = model.predict_noise(z_t, t, text_embeddings.to(model.device).expand(b, -1, -1), **conditioning)
    return F.mse_loss(eps.float(), noise)


__all__ = ["default_part", "depth_finetune_loss", "specialize"]
