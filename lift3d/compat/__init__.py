"""Configs written for threestudio and for the USD repository, read by lift3d (docs/compat.md).

`prepare_raw(raw)` runs on the merged, still unresolved experiment config (YAML + overrides) before
anything else looks at it (lift3d.config.load_config):

1. `missing.check_missing_components`: a registered name that lift3d knows from those projects but
   does not have yet (e.g. `sjc-system`) is a ConfigError naming the component and the issue that
   brings it, before any other check (a mandatory value left ??? included). The known names are a
   table; whether one is missing is asked of the registry at run time, so a name stops being
   "missing" as soon as a module registers it.
2. `interpolation.fill_referenced_defaults`: `${data.<key>}` interpolations that name a key the
   config leaves out but the data module's Config declares get that declared default (threestudio
   resolves them against its dataclass defaults the same way once a config is parsed), and keys a
   plugin links across sections (`link_keys`) are filled.

Loggers (`system.loggers`, threestudio's `loggers.wandb` block): `loggers.py`.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from lift3d.errors import ConfigError

from .interpolation import fill_referenced_defaults, link_keys, linked_keys
from .missing import MISSING_COMPONENTS, MissingComponent, check_missing_components, missing_names


def check_is_experiment(raw: DictConfig) -> None:
    """threestudio's configs/debugging/*.yaml hold a guidance and prompt processor only (read by its
    guidance modules' test scripts): say so instead of "no data_type"."""
    system = raw.get("system")
    if not raw.get("data_type") and not raw.get("system_type") and OmegaConf.is_dict(system) \
            and "guidance_type" in system:
        raise ConfigError(
            "this config is not a launch.py experiment: it holds only system.guidance / system.prompt_processor "
            "(a guidance snippet such as threestudio's configs/debugging/*.yaml) and no data_type / system_type. "
            "Merge it into an experiment config, e.g. --config configs/dreamfusion-sd.yaml with its keys as overrides."
        )


def prepare_raw(raw: DictConfig) -> DictConfig:
    """The checks and fills above, in place on `raw` (also returned)."""
    check_missing_components(raw)
    check_is_experiment(raw)
    fill_referenced_defaults(raw)
    return raw


__all__ = ["MISSING_COMPONENTS", "MissingComponent", "check_is_experiment", "check_missing_components", "fill_referenced_defaults",
           "link_keys", "linked_keys", "missing_names", "prepare_raw"]
