"""DreamBooth-LoRA specialisation of Stable Diffusion with prior preservation (docs/methods/usd.md §4.2).

LoRA (peft `LoraConfig`, attached with diffusers' `unet.add_adapter`) on the UNet's attention
projections `to_q, to_k, to_v, to_out.0`: W x + (alpha / r) B A x, A [r, d_in] random, B [d_out, r]
zero at init — so a fresh adapter leaves the UNet's output unchanged. Only A and B train (AdamW).

One step, batch `batch_size` instances + `batch_size` prior images (usd.md: 1 + 1):

    t ~ U{0..999}, eps ~ N(0, I) per sample,   z_t = sqrt(alphabar_t) z + sqrt(1 - alphabar_t) eps
    loss = mean ||eps_theta(z_t^inst, t, c_inst) - eps||^2 + prior_loss_weight * mean ||eps_theta(z_t^prior, t, c_prior) - eps||^2

z = SD-VAE latents (posterior mean x 0.18215) of the images resized to SD's resolution, computed
once. USD's two steps (the pipeline runs them one after the other, step b starting from step a's
adapter):
  (a) instances: the input view + Zero-1-to-3 novel views, "photo of a [V] <class>";
      prior: SD's class images, "photo of a <class>";                       ~600 steps
  (b) instances: the input view alone, "photo of a [S] [V] <class>";
      prior: the Zero-1-to-3 views, "photo of a [V] <class>";                ~5 steps
The loss of every step is written to a CSV (step, loss, instance_loss, prior_loss). The adapter is
saved with `unet.save_lora_adapter` as diffusers-format safetensors (`pytorch_lora_weights.safetensors`,
keys `unet.*`, with its LoRA config in the file's metadata): `StableDiffusionPipeline.load_lora_weights`
and `load_lora` below read it.

The model trains in float32 (half_precision_weights: false): LoRA updates at lr 2e-4 vanish in fp16.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.models.noise_schedule import add_noise
from .sd_models import SamplingModel

from .sd_models import load_rgb_on_white, resize_hw

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ADAPTER = "default"
TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class TrainingSet:
    """Latents [N,4,h,w] of N images and their prompt's embedding [1,77,D]."""

    latents: Tensor
    embedding: Tensor


def add_lora(unet: torch.nn.Module, rank: int = 4, alpha: Optional[float] = None,
             target_modules: Sequence[str] = TARGET_MODULES) -> list[torch.nn.Parameter]:
    """Attach a fresh LoRA adapter (B = 0) to `unet`; returns its trainable parameters (float32)."""
    from peft import LoraConfig

    config = LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank),
                        init_lora_weights=True, target_modules=list(target_modules))
    unet.add_adapter(config, adapter_name=ADAPTER)
    return lora_parameters(unet)


def lora_parameters(unet: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The adapter's A and B matrices, made trainable and float32; everything else stays frozen."""
    params = []
    for name, p in unet.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
            params.append(p)
        else:
            p.requires_grad_(False)
    if not params:
        raise RuntimeError("the UNet has no LoRA parameters: check lora.target_modules against the UNet's attention modules")
    return params


def save_lora(unet: torch.nn.Module, folder: Path) -> Path:
    """Writes folder/pytorch_lora_weights.safetensors (diffusers format); returns its path."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=ADAPTER))
    # peft keeps target_modules as a set: sorted, so the file is byte-identical for identical weights
    metadata = {k: sorted(v) if isinstance(v, (set, frozenset)) else v
                for k, v in unet.peft_config[ADAPTER].to_dict().items()}
    StableDiffusionPipeline.save_lora_weights(
        str(folder), unet_lora_layers=layers, weight_name=LORA_WEIGHT_NAME, safe_serialization=True,
        unet_lora_adapter_metadata=metadata,
    )
    return Path(folder) / LORA_WEIGHT_NAME


def load_lora(unet: torch.nn.Module, folder: Path) -> None:
    """Loads a LoRA saved by `save_lora` (or any diffusers SD LoRA file in `folder`) into `unet`."""
    path = Path(folder) / LORA_WEIGHT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no LoRA weights at {path}")
    unet.load_lora_adapter(str(folder), weight_name=LORA_WEIGHT_NAME, prefix="unet", adapter_name=ADAPTER)


@torch.no_grad()
def encode_image_files(sd: SamplingModel, paths: Sequence[Path], batch_size: int = 4) -> Tensor:
    """Images (composited on white) resized to SD's resolution -> latents [N,4,h,w] (posterior mean)."""
    latents = []
    for start in range(0, len(paths), batch_size):
        x = torch.cat([resize_hw(load_rgb_on_white(str(p))[0].permute(2, 0, 1)[None], sd.resolution, sd.resolution)
                       for p in paths[start:start + batch_size]]).clamp(0, 1).to(sd.device)  # [b,3,res,res]
        latents.append(sd.encode_images(x, sample=False).float())
    return torch.cat(latents)


def train_lora(
    sd: SamplingModel,
    params: list[torch.nn.Parameter],
    instances: TrainingSet,
    prior: TrainingSet,
    steps: int,
    loss_csv: Path,
    learning_rate: float = 2e-4,
    weight_decay: float = 1e-2,
    batch_size: int = 1,
    prior_loss_weight: float = 1.0,
    seed: int = 0,
    progress: Optional[Callable] = None,
) -> list[float]:
    """Trains the LoRA `params` of sd.unet for `steps` steps (see the module docstring); writes the
    per-step losses to `loss_csv` and returns the total losses."""
    unet, device = sd.unet, sd.device
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    alphas = sd.alphas_cumprod
    inst_emb, prior_emb = instances.embedding.to(device), prior.embedding.to(device)
    text = torch.cat([inst_emb.expand(batch_size, -1, -1), prior_emb.expand(batch_size, -1, -1)])  # [2b,77,D]
    losses: list[float] = []
    iterator = range(int(steps))
    iterator = progress(iterator) if progress is not None else iterator
    with open(loss_csv, "w", newline="") as fp:
        writer = csv.writer(fp)
        writer.writerow(["step", "loss", "instance_loss", "prior_loss"])
        for step in iterator:
            i = torch.randint(instances.latents.shape[0], (batch_size,), generator=gen)
            j = torch.randint(prior.latents.shape[0], (batch_size,), generator=gen)
            z = torch.cat([instances.latents[i], prior.latents[j]]).to(device)  # [2b,4,h,w]
            noise = torch.randn(z.shape, generator=gen).to(device)
            t = torch.randint(0, alphas.shape[0], (2 * batch_size,), generator=gen).to(device)
            z_t = add_noise(z, noise, t, alphas)
            eps = unet(z_t.to(sd.weights_dtype), t, encoder_hidden_states=text.to(sd.weights_dtype)).sample.float()
            instance_loss = F.mse_loss(eps[:batch_size], noise[:batch_size])
            prior_loss = F.mse_loss(eps[batch_size:], noise[batch_size:])
            loss = instance_loss + prior_loss_weight * prior_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            values = (loss.item(), instance_loss.item(), prior_loss.item())
            losses.append(values[0])
            writer.writerow([step, *(f"{v:.6f}" for v in values)])
            if hasattr(iterator, "set_postfix"):
                iterator.set_postfix(loss=f"{values[0]:.4f}")
    return losses


def read_losses(loss_csv: Path) -> list[float]:
    with open(loss_csv) as fp:
        return [float(row["loss"]) for row in csv.DictReader(fp)]


__all__ = [
    "LORA_WEIGHT_NAME", "TARGET_MODULES", "TrainingSet", "add_lora", "encode_image_files", "load_lora",
    "lora_parameters", "read_losses", "save_lora", "train_lora",
]
