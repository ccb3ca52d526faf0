"""Stage chaining: `system.geometry_convert_from=<ckpt | trial dir | <dir>/LAST | LAST>` (docs/DESIGN.md).

The previous stage's geometry is rebuilt from the config saved beside its checkpoint
(`<trial>/configs/parsed.yaml`), its weights are loaded, and the new geometry is created from it
with the new geometry class's `create_from`.

`LAST` is the newest `ckpts/last.ckpt` under the run's `exp_root_dir` (the experiment's top-level
key, default `outputs`), `<dir>/LAST` the newest under `<dir>`. Components name their own
checkpoint keys in `checkpoint_keys` (e.g. X-Dreamer's `lora_from`); the system resolves their
`LAST` values here before the component sees its config (`resolve_checkpoint_keys`).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lift3d.errors import ConfigError


def is_last(spec: Any) -> bool:
    """Whether a checkpoint spec asks for the newest trial (`LAST` or `<dir>/LAST`)."""
    return isinstance(spec, str) and (spec == "LAST" or spec.endswith("/LAST"))


def resolve_checkpoint(
    spec: str, exp_root_dir: str | Path | None = None, key: str = "system.geometry_convert_from"
) -> Path:
    """A checkpoint file from a file path, a trial folder, `<dir>/LAST` (the newest trial's
    ckpts/last.ckpt under <dir>) or `LAST` (the newest under `exp_root_dir`, the run's top-level
    key: without it `LAST` is an error, as a component's checkpoint keys reach it already resolved
    by the system). `key`: the config key the spec came from, for the messages."""
    if spec == "LAST" and exp_root_dir is None:
        raise ConfigError(
            f"{key}=LAST: the run's exp_root_dir is not known here. Give the checkpoint, its trial folder or "
            f"<exp_root_dir>/LAST (a component resolves LAST by naming the key in its checkpoint_keys)."
        )
    if is_last(spec):
        base = Path(exp_root_dir) if spec == "LAST" else Path(spec[: -len("/LAST")])
        candidates = sorted(base.glob("**/ckpts/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise ConfigError(
                f"{key}={spec} found no trial with ckpts/last.ckpt under '{base}'. "
                f"Run the previous stage first or give its checkpoint path."
            )
        return candidates[-1]
    path = Path(spec)
    if path.is_dir():
        path = path / "ckpts" / "last.ckpt"
    if not path.is_file():
        raise ConfigError(
            f"{key}: checkpoint '{path}' does not exist. Give the previous "
            f"stage's ckpts/last.ckpt, its trial folder, or LAST."
        )
    return path


def resolve_checkpoint_keys(component_cls: type, cfg: Any, path: str, exp_root_dir: str | Path) -> Any:
    """`cfg` (a component's section at config path `path`), with each of `component_cls.checkpoint_keys`
    that names `LAST` / `<dir>/LAST` replaced by the checkpoint file it finds; `cfg` itself when
    there is none (it is never modified)."""
    keys = [k for k in component_cls.checkpoint_keys if k in cfg and is_last(cfg[k])]
    if not keys:
        return cfg
    resolved = copy.deepcopy(cfg)
    for k in keys:
        resolved[k] = str(resolve_checkpoint(cfg[k], exp_root_dir, f"{path}.{k}"))
    return resolved


def previous_stage_config(ckpt: Path, key: str = "system.geometry_convert_from") -> Any:
    """The config the previous stage ran with (`<trial>/configs/parsed.yaml` beside `ckpt`)."""
    cfg_path = ckpt.parent.parent / "configs" / "parsed.yaml"
    if not cfg_path.is_file():
        raise ConfigError(
            f"{key}: '{ckpt}' has no config beside it (looked for {cfg_path}); "
            f"stage chaining needs the previous trial folder as launch.py wrote it."
        )
    try:
        prev = OmegaConf.load(cfg_path)
    except Exception as exc:  # a damaged or hand-edited file
        raise ConfigError(f"{key}: cannot read the previous stage's config {cfg_path} ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]}); restore it from the trial folder launch.py wrote.") from None
    if not isinstance(prev, DictConfig):
        raise ConfigError(f"{key}: the previous stage's config {cfg_path} is not a mapping; restore it from the "
                          f"trial folder launch.py wrote.")
    return prev


def check_convertible(ckpt: Path, target_type: str, key: str = "system.geometry_convert_from") -> None:
    """ConfigError (before any work) unless this config's geometry (`target_type`) can be made from
    the geometry the checkpoint's stage trained, as named in the config saved beside it."""
    from lift3d.geometry.base import BaseGeometry
    from lift3d.registry import find, registered_names

    prev = previous_stage_config(ckpt, key)
    prev_type = OmegaConf.select(prev, "system.geometry_type", default=None)
    if not prev_type:
        raise ConfigError(
            f"{key}: '{ckpt}' is not from a 3D stage: its config ({ckpt.parent.parent / 'configs' / 'parsed.yaml'}, "
            f"system_type {OmegaConf.select(prev, 'system_type', default=None)!r}) names no system.geometry_type. "
            f"Give the ckpts/last.ckpt of a previous stage that trained a geometry."
        )
    target = find(target_type)
    if target.can_convert_from(prev_type):
        return
    accepting = [name for name in registered_names()
                 if isinstance(find(name), type) and issubclass(find(name), BaseGeometry)
                 and find(name).can_convert_from(prev_type)]
    sources = ", ".join(f"'{t}'" for t in target.convertible_from)
    raise ConfigError(
        f"{key}: the checkpoint holds a '{prev_type}' geometry ({ckpt}), and this config's system.geometry_type "
        f"'{target_type}' cannot be made from it ("
        + (f"it converts from {sources} only" if sources else "it is always trained from scratch") + "). Fix: "
        + (f"give the checkpoint of a stage whose geometry is {sources.replace(', ', ' or ')}, or " if sources else "")
        + (f"use a config whose geometry_type accepts '{prev_type}' ({', '.join(accepting)}), or " if accepting else "")
        + "remove system.geometry_convert_from to start from scratch."
    )


def load_previous_geometry(spec: str, exp_root_dir: str | Path) -> Any:
    """Build the previous stage's geometry with its trained weights (on CPU); `LAST` is looked up
    under `exp_root_dir`."""
    from lift3d.registry import find

    ckpt = resolve_checkpoint(spec, exp_root_dir)
    prev = previous_stage_config(ckpt)
    geometry = find(prev.system.geometry_type)(prev.system.geometry)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    geo_state = {k[len("geometry."):]: v for k, v in state.items() if k.startswith("geometry.")}
    missing, unexpected = geometry.load_state_dict(geo_state, strict=False)
    if unexpected:
        raise ConfigError(f"checkpoint '{ckpt}' does not match its saved geometry config: unexpected {unexpected[:5]}")
    return geometry
