"""Frozen pretrained models: lookup, precision and the holder that keeps them out of checkpoints
(docs/DESIGN.md "Models and weights").

- `resolve_model`: `lift3d.models.loading.resolve_pretrained` whose failure is a
  `DiffusionModelNotFoundError` — both a `ModelNotFoundError` and a `ConfigError` (a
  `Lift3DError`), so launch.py prints its one message and exits with code 2, before any work.
- `half_precision_mode` / `weights_dtype`: fp16 on GPU, fp32 on CPU for `half_precision_weights: auto`.
- `FrozenModels`: a plain holder for frozen models. Diffusion models (lift3d.models.diffusion) keep
  their networks in one, so they are never nn.Module children of anything (not in checkpoints, not
  walked by `do_update_step`, not moved by Lightning).
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from lift3d.errors import ConfigError
from lift3d.models.loading import ModelNotFoundError, resolve_pretrained

SD_TEXT_FILES = ("model_index.json", "text_encoder/config.json", "tokenizer")


class DiffusionModelNotFoundError(ModelNotFoundError, ConfigError):
    """A configured pretrained model is missing: a ModelNotFoundError that launch.py reports cleanly."""


def resolve_model(name_or_path: str, what: str, required_files: Sequence[str]) -> str:
    """A loadable path for `name_or_path` or DiffusionModelNotFoundError with resolve_pretrained's message."""
    try:
        return resolve_pretrained(str(name_or_path), what, required_files)
    except ModelNotFoundError as exc:
        raise DiffusionModelNotFoundError(str(exc)) from None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def weights_dtype(mode: str, device: torch.device | str) -> torch.dtype:
    """dtype of frozen weights: mode 'auto' -> fp16 on CUDA, fp32 elsewhere; 'true' fp16; 'false' fp32."""
    device = torch.device(device)
    if mode == "true" or (mode == "auto" and device.type == "cuda"):
        return torch.float16
    return torch.float32


def half_precision_mode(value: Any, key: str = "system.guidance.half_precision_weights") -> str:
    """'auto' | 'true' | 'false' from a config value (bool or string); ConfigError otherwise."""
    text = str(value).strip().lower()
    if text in ("auto", "none", "null"):
        return "auto"
    if text in ("true", "1", "yes", "fp16", "half"):
        return "true"
    if text in ("false", "0", "no", "fp32", "float32"):
        return "false"
    raise ConfigError(f"{key} = {value!r}: use auto, true or false.")


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


class FrozenModels:
    """Attribute bag of frozen nn.Modules (and other model objects) kept out of the module tree."""

    def __init__(self, **models: Any) -> None:
        for name, model in models.items():
            setattr(self, name, model)

    def modules(self) -> Iterator[tuple[str, torch.nn.Module]]:
        for name, value in vars(self).items():
            if isinstance(value, torch.nn.Module):
                yield name, value

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "FrozenModels":
        for _, module in self.modules():
            current = next((p.dtype for p in module.parameters()), None)
            if dtype is not None and current is not None and current != dtype:
                module.to(device=device, dtype=dtype)
            else:  # no cast: diffusers warns about any .to(dtype), even a no-op one
                module.to(device)
        return self

    def apply_memory_options(self, attention_slicing: bool = False, channels_last: bool = False) -> None:
        for _, module in self.modules():
            if attention_slicing and hasattr(module, "set_attention_slice"):
                module.set_attention_slice("auto")
            if channels_last:
                module.to(memory_format=torch.channels_last)

    def release(self) -> None:
        """Drop every reference held here (then gc.collect() / torch.cuda.empty_cache() free them)."""
        for name in list(vars(self)):
            delattr(self, name)


def free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = [
    "DiffusionModelNotFoundError", "FrozenModels", "SD_TEXT_FILES",
    "default_device", "free_memory", "freeze", "half_precision_mode", "resolve_model", "weights_dtype",
]
