"""Stage chaining: `system.geometry_convert_from=<ckpt | trial dir | LAST>` (docs/DESIGN.md).

The previous stage's geometry is rebuilt from the config saved beside its checkpoint
(`<trial>/configs/parsed.yaml`), its weights are loaded, and the new geometry is created from it
with the new geometry class's `create_from`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from lift3d.errors import ConfigError


def resolve_checkpoint(spec: str, exp_root_dir: Optional[str] = None, name: Optional[str] = None) -> Path:
    """A checkpoint file from a file path, a trial folder, or LAST (newest trial of `name`)."""
    if spec == "LAST" or spec.endswith("/LAST"):
        base = Path(spec[: -len("LAST")]) if spec != "LAST" else Path(exp_root_dir or "outputs")
        candidates = sorted(base.glob("**/ckpts/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise ConfigError(
                f"system.geometry_convert_from=LAST found no trial with ckpts/last.ckpt under '{base}'. "
                f"Run the previous stage first or give its checkpoint path."
            )
        return candidates[-1]
    path = Path(spec)
    if path.is_dir():
        path = path / "ckpts" / "last.ckpt"
    if not path.is_file():
        raise ConfigError(
            f"system.geometry_convert_from: checkpoint '{path}' does not exist. Give the previous "
            f"stage's ckpts/last.ckpt, its trial folder, or LAST."
        )
    return path


def previous_stage_config(ckpt: Path) -> Any:
    cfg_path = ckpt.parent.parent / "configs" / "parsed.yaml"
    if not cfg_path.is_file():
        raise ConfigError(
            f"system.geometry_convert_from: '{ckpt}' has no config beside it (looked for {cfg_path}); "
            f"stage chaining needs the previous trial folder as launch.py wrote it."
        )
    return OmegaConf.load(cfg_path)


def load_previous_geometry(spec: str, exp_root_dir: Optional[str] = None) -> Any:
    """Build the previous stage's geometry with its trained weights (on CPU)."""
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
