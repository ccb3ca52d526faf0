"""A trained generator as one small file: `{"generator_type", "generator_config", "state_dict"}` (G_ema's
weights), written by `save_generator` from a gan-system checkpoint and read by `load_generator`. Used
for the toy source GAN shipped in load/gan/ and, later, as the source of adaptation (#17 points 2-3)."""
from __future__ import annotations

from pathlib import Path

import torch

from lift3d.errors import ConfigError
from lift3d.registry import find


def save_generator(checkpoint: str | Path, out: str | Path, config: dict) -> Path:
    """G_ema of a gan-system checkpoint -> `out`; `config` is the run's `system` section (parsed.yaml)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    g_state = {k[len("G_ema."):]: v for k, v in state.items() if k.startswith("G_ema.")}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"generator_type": config["generator_type"], "generator_config": dict(config["generator"]),
                "state_dict": g_state}, out)
    return out


def load_generator(path: str | Path):
    """The generator saved by `save_generator`, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"generator file '{path}' not found: write one with lift3d.gan.pretrained.save_generator.")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    generator = find(saved["generator_type"])(saved["generator_config"])
    generator.load_state_dict(saved["state_dict"])
    return generator.eval().requires_grad_(False)
