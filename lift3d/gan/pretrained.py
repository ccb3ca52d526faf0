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


def _trial_system_config(checkpoint: Path) -> dict:
    """The `system` section of the run that wrote <trial>/ckpts/<name>.ckpt (its configs/parsed.yaml)."""
    from omegaconf import OmegaConf

    parsed = checkpoint.resolve().parent.parent / "configs" / "parsed.yaml"
    if not parsed.is_file():
        raise ConfigError(f"'{checkpoint}' is not inside a gan-system trial (no {parsed}): give <trial>/ckpts/last.ckpt "
                          f"or a generator file written by save_generator.")
    return OmegaConf.to_container(OmegaConf.load(parsed).system, resolve=True)


def gan_checkpoint_states(path: str | Path) -> dict[str, dict]:
    """{"G": ..., "G_ema": ..., "D": ...} state dicts from a gan-system checkpoint (.ckpt), or {"G", "G_ema"}
    (both G_ema's weights) from a save_generator file (.pt): the start of adaptation (#17 point 3)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"source GAN '{path}' not found: give a gan-system <trial>/ckpts/last.ckpt or a "
                          f"save_generator file such as load/gan/toy-red-cube-triplane.pt.")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if "state_dict" in saved and "generator_type" in saved:  # save_generator's file
        return {"G": saved["state_dict"], "G_ema": saved["state_dict"]}
    if "state_dict" not in saved:
        raise ConfigError(f"'{path}' is neither a gan-system checkpoint nor a save_generator file (no state_dict).")
    state = saved["state_dict"]
    out = {}
    for part in ("G", "G_ema", "D"):
        out[part] = {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")}
    if not out["G_ema"]:
        raise ConfigError(f"'{path}' holds no generator (no G_ema.* weights): is it a gan-system checkpoint?")
    return out


def load_any_generator(path: str | Path):
    """G_ema of a save_generator file (.pt) or of a gan-system checkpoint (<trial>/ckpts/*.ckpt), in eval mode."""
    path = Path(path)
    if path.suffix != ".ckpt":
        return load_generator(path)
    states = gan_checkpoint_states(path)
    config = _trial_system_config(path)
    generator = find(config["generator_type"])(config["generator"])
    generator.load_state_dict(states["G_ema"])
    return generator.eval().requires_grad_(False)


def load_initial_weights(system, path: str | Path) -> None:
    """Copy a source GAN's weights into a gan-system's G, G_ema (and D when the source is a .ckpt): the start of
    adversarial adaptation. A generator/discriminator of another size is one ConfigError naming the fix."""
    states = gan_checkpoint_states(path)
    for part, state in states.items():
        if not state:
            continue
        try:
            getattr(system, part).load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0][:200]
            raise ConfigError(f"system.init_from = '{path}': its {part} does not fit this config's ({first}); give "
                              f"system.generator / system.discriminator the source run's sizes.") from None
