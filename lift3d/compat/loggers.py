"""threestudio's `system.loggers` block: experiment loggers besides lift3d's TensorBoard and CSV.

    system:
      loggers:
        wandb:
          enable: false          # honoured: no Weights & Biases run is started
          project: "threestudio"
          name: None             # run name; null / "None" (as threestudio's configs write it) -> the trial name

`validate_loggers(section, path)` (called by the system's validate_config, before any work) checks the
block: the only logger is `wandb`, with the keys above plus `entity`, `group`, `tags`, `offline`;
an enabled wandb needs the `wandb` package (one ConfigError saying how to install it or switch it
off). `build_loggers(section, trial_dir, run_name)` returns the Lightning loggers to add (launch.py).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from lift3d.config import parse_structured
from lift3d.errors import ConfigError


@dataclass
class WandbConfig:
    enable: bool = False
    project: str = "lift3d"
    name: Optional[str] = None
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    offline: bool = False


@dataclass
class LoggersConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


def wandb_installed() -> bool:
    return importlib.util.find_spec("wandb") is not None


def run_name(cfg: WandbConfig, default: str) -> str:
    """The wandb run name: the configured one, or `default` when it is null or the string "None"."""
    return default if cfg.name in (None, "", "None", "null") else str(cfg.name)


def validate_loggers(section: Any, path: str = "system.loggers") -> LoggersConfig:
    parsed = parse_structured(LoggersConfig, section or {}, path, "the experiment loggers (wandb)")
    if parsed.wandb.enable and not wandb_installed():
        raise ConfigError(
            f"{path}.wandb.enable=true needs the wandb package, which is not installed: `pip install wandb` "
            f"(and `wandb login`), or set {path}.wandb.enable=false (TensorBoard and CSV logs are always written)."
        )
    return parsed


def wandb_logger_class() -> type:
    from pytorch_lightning.loggers import WandbLogger

    return WandbLogger


def build_loggers(section: Any, trial_dir: str | Path, default_name: str, path: str = "system.loggers") -> list:
    """The Lightning loggers that `section` enables (validated again: a ConfigError before any run)."""
    cfg = validate_loggers(section, path)
    loggers: list = []
    if cfg.wandb.enable:
        w = cfg.wandb
        loggers.append(wandb_logger_class()(
            project=w.project, name=run_name(w, default_name), save_dir=str(trial_dir), entity=w.entity,
            group=w.group, tags=list(w.tags) or None, offline=w.offline,
        ))
    return loggers


__all__ = ["LoggersConfig", "WandbConfig", "build_loggers", "run_name", "validate_loggers", "wandb_installed"]
