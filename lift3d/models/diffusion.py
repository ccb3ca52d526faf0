"""Frozen diffusion models as components (docs/DESIGN.md "Models and weights").

A `DiffusionModel` owns everything about one pretrained diffusion model that its users (guidances,
samplers, SDEdit, DreamBooth-LoRA, data generators, the toy trainers) need, and nothing about how
they use it:

- loading: `Model.load(name_or_path, ...)` resolves a Hugging Face id or a local folder first
  (`resolve_model`: one clear not-found error, before any weight is read), then reads the folder in
  its published layout with the diffusers classes' own `from_pretrained`;
- sharing: a model is loaded once per process; a second `load` of the same class, folder, precision
  and memory options returns the same object while someone holds it (a weak cache). Components that
  change the networks (X-Dreamer's CG-LoRA processors, DreamBooth's LoRA adapters) ask for
  `shared=False`, a private copy;
- dtype / device: `half_precision_weights` auto = fp16 on CUDA, fp32 on CPU; `to(device)`;
- the noise schedule `alphas_cumprod` [T] (float32, CPU) and the native resolution;
- `encode_images` / `decode_latents` between images in [0, 1] and the denoiser's space (a VAE for
  latent models, a resize to the native size for pixel models such as DeepFloyd IF);
- `predict_noise(x_t, t, **conditioning)`: one denoiser call, in the caller's dtype.

The networks live in a `FrozenModels` holder: never nn.Module children of a system, so never in a
checkpoint and never moved or walked by Lightning. Subclasses, one file per prior:
lift3d.models.stable_diffusion (SD 1.x/2.x), .stable_diffusion_depth (depth2img),
.stable_diffusion_controlnet, .zero123 (Zero-1-to-3, Stable Zero123), .deepfloyd_if (pixel-space IF).
"""
from __future__ import annotations

import weakref
from typing import Any, ClassVar, Optional, Sequence

import torch
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.models.frozen import (
    FrozenModels,
    default_device,
    freeze,
    half_precision_mode,
    resolve_model,
    weights_dtype,
)
from lift3d.models.noise_schedule import add_noise

# what a UNet's input width usually means, for the messages of `check_unet_config`
MODEL_BY_CHANNELS = {3: "a pixel-space model such as DeepFloyd IF", 4: "Stable Diffusion",
                     5: "depth-conditioned Stable Diffusion 2", 8: "Zero-1-to-3 / Stable Zero123 / InstructPix2Pix",
                     9: "an inpainting Stable Diffusion"}

_LOADED: "weakref.WeakValueDictionary[tuple, DiffusionModel]" = weakref.WeakValueDictionary()


class DiffusionModel:
    """Base of every frozen diffusion model; see the module docstring."""

    REQUIRED_FILES: ClassVar[tuple[str, ...]] = ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json")
    KIND: ClassVar[str] = "a diffusion model"  # used in not-found messages: "<KIND> for <key>"
    latent_channels: int = 4
    # input channels of the model's UNet (read from unet/config.json before any weight); None: not checked
    UNET_IN_CHANNELS: ClassVar[Optional[int]] = None

    def __init__(self, path: str, precision: str = "auto", attention_slicing: bool = False,
                 channels_last: bool = False, device: Optional[torch.device | str] = None) -> None:
        self.path = str(path)
        self.precision_mode = half_precision_mode(precision)
        self.device = torch.device(device) if device is not None else default_device()
        self.weights_dtype = weights_dtype(self.precision_mode, self.device)
        try:
            networks = self.load_networks(self.path)
        except ConfigError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError) as exc:  # missing / truncated / foreign weights
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ConfigError(
                f"{self.KIND} in '{self.path}' could not be loaded ({type(exc).__name__}: {first}). The folder is "
                f"incomplete or damaged, or is another kind of model: download it again or point to a complete one."
            ) from None
        self.models = FrozenModels(**{name: freeze(m) if isinstance(m, torch.nn.Module) else m
                                      for name, m in networks.items()})
        self.models.apply_memory_options(attention_slicing, channels_last)
        self.models.to(self.device, self.weights_dtype)
        self.alphas_cumprod = self.load_alphas_cumprod(self.path).detach().to(torch.float32).cpu()  # [T]

    # ------------------------------------------------------------------ loading
    @classmethod
    def resolve(cls, name_or_path: str, what: Optional[str] = None) -> str:
        """A loadable folder for `name_or_path`, or DiffusionModelNotFoundError naming `what` (a config key);
        a ConfigError when its UNet is not this kind of model (e.g. a Zero-1-to-3 folder given as SD)."""
        path = resolve_model(str(name_or_path), what or cls.KIND, cls.REQUIRED_FILES)
        cls.check_unet_config(path, what or cls.KIND)
        return path

    @classmethod
    def check_unet_config(cls, path: str, what: str) -> None:
        """The UNet's input width (unet/config.json, no weights read) must be this model's."""
        if cls.UNET_IN_CHANNELS is None:
            return
        import json
        import os

        config_file = os.path.join(path, "unet", "config.json")
        try:
            with open(config_file, encoding="utf-8") as fp:
                channels = json.load(fp).get("in_channels")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{what}: cannot read {config_file} ({exc}); the model folder is damaged: "
                              f"download it again.") from None
        if channels != cls.UNET_IN_CHANNELS:
            raise ConfigError(
                f"{what}: '{path}' is not {cls.KIND}: its UNet takes {channels} input channels (like "
                f"{MODEL_BY_CHANNELS.get(channels, 'another kind of model')}), {cls.KIND} takes {cls.UNET_IN_CHANNELS}. "
                f"Give a {cls.KIND} folder, or use the guidance made for that model."
            )

    @classmethod
    def load(cls, name_or_path: str, what: Optional[str] = None, half_precision_weights: Any = "auto",
             enable_attention_slicing: bool = False, enable_channels_last: bool = False, shared: bool = True,
             **kwargs: Any) -> "DiffusionModel":
        """The model at `name_or_path` (resolved first), shared with every other holder of the same
        class, folder and options unless `shared=False`. kwargs: subclass options (e.g. a ControlNet path)."""
        path = cls.resolve(name_or_path, what)
        mode = half_precision_mode(half_precision_weights)
        key = (cls, path, mode, bool(enable_attention_slicing), bool(enable_channels_last),
               tuple(sorted((k, str(v)) for k, v in kwargs.items())))
        if shared and key in _LOADED:
            return _LOADED[key]
        model = cls(path, mode, enable_attention_slicing, enable_channels_last, **kwargs)
        if shared:
            _LOADED[key] = model
        return model

    def load_networks(self, path: str) -> dict[str, Any]:
        """{name: network or component} read from the folder (subclasses); at least `unet`."""
        raise NotImplementedError

    def load_alphas_cumprod(self, path: str) -> Tensor:
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_pretrained(path, subfolder="scheduler").alphas_cumprod

    # ------------------------------------------------------------------ properties
    @property
    def unet(self) -> Any:
        return self.models.unet

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def downsample(self) -> int:
        """Image pixels per denoiser pixel (8 for SD's VAE, 1 in pixel space)."""
        return 1

    @property
    def native_resolution(self) -> int:
        """Side of the images the model was trained on (UNet sample_size × downsample)."""
        return int(self.unet.config.sample_size) * self.downsample

    def to(self, device: torch.device | str) -> "DiffusionModel":
        device = torch.device(device)
        dtype = weights_dtype(self.precision_mode, device)
        self.models.to(device, dtype)
        self.device, self.weights_dtype = device, dtype
        return self

    def release(self) -> None:
        """Drop the networks (then lift3d.models.frozen.free_memory() frees them)."""
        self.models.release()

    # ------------------------------------------------------------------ the denoiser's space
    def encode_images(self, images: Tensor, sample: bool = True) -> Tensor:
        """images [B,3,H,W] in [0,1] -> the denoiser's input x [B,C,h,w] (differentiable, images' dtype)."""
        return images * 2.0 - 1.0

    def decode_latents(self, x: Tensor) -> Tensor:
        """x [B,C,h,w] -> images [B,H,W,3] in [0,1] (no gradient)."""
        with torch.no_grad():
            return (x[:, :3].float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)

    def add_noise(self, x: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return add_noise(x, noise, t, self.alphas_cumprod)

    def predict_noise(self, x_t: Tensor, t: Tensor, **conditioning: Any) -> Tensor:
        """eps(x_t [N,C,h,w], t [N]) under the subclass's conditioning -> [N,C,h,w] in x_t's dtype."""
        raise NotImplementedError


class LatentDiffusionModel(DiffusionModel):
    """A diffusion model in a VAE's latent space (Rombach et al., arXiv 2112.10752 §3)."""

    REQUIRED_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "scheduler/scheduler_config.json")

    def load_vae(self, path: str) -> Any:
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(path, subfolder="vae")

    @property
    def vae(self) -> Any:
        return self.models.vae

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode_images(self, images: Tensor, sample: bool = True) -> Tensor:
        """images [B,3,H,W] in [0,1] -> scaled latents [B,4,H/8,W/8] (differentiable, in images' dtype):
        a posterior sample, or its mode (mean) with sample=False (deterministic: SDEdit, DreamBooth)."""
        x = (images * 2.0 - 1.0).to(self.weights_dtype)
        posterior = self.vae.encode(x).latent_dist
        latents = posterior.sample() if sample else posterior.mode()
        return (latents * self.scaling_factor).to(images.dtype)

    def decode_latents(self, latents: Tensor) -> Tensor:
        """scaled latents [B,4,h,w] -> images [B,H,W,3] in [0,1] (no gradient)."""
        with torch.no_grad():
            x = self.vae.decode((latents / self.scaling_factor).to(self.weights_dtype)).sample
        return (x.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


def same_noise_schedule(a: DiffusionModel, b: DiffusionModel, atol: float = 1e-6) -> bool:
    """Whether two models share one DDPM schedule (one noisy latent can then be fed to both)."""
    return a.alphas_cumprod.shape == b.alphas_cumprod.shape and torch.allclose(a.alphas_cumprod, b.alphas_cumprod, atol=atol)


__all__ = ["DiffusionModel", "LatentDiffusionModel", "same_noise_schedule"]
