"""Experiment configs: YAML + dot-list overrides → a validated OmegaConf config.

The whole experiment is validated by `validate_experiment` before any work starts (docs/DESIGN.md,
"Core contracts"): every registered name is resolved and every component's section is checked
against that component's `Config` dataclass, so an unknown key or a wrong type is reported with
its full dotted path, the component, and the valid keys.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lift3d.errors import ConfigError, did_you_mean

# ---------------------------------------------------------------- resolvers (threestudio's set)
_RESOLVERS = {
    "rmspace": lambda s, sub: str(s).replace(" ", sub),
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "idiv": lambda a, b: a // b,
    "basename": lambda p: os.path.basename(str(p)),
    "tuple2": lambda s: [float(s), float(s)],
    "gt0": lambda s: s > 0,
    "not": lambda s: not s,
    # factor such that lr * factor**steps = lr * final_ratio (exponential decay over `steps`)
    "calc_exp_lr_decay_rate": lambda ratio, steps: ratio ** (1.0 / steps),
}
for _name, _fn in _RESOLVERS.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_resolver(_name, _fn)


# ---------------------------------------------------------------- the experiment's top level
@dataclass
class ExperimentConfig:
    name: str = "default"
    description: str = ""
    tag: str = ""
    seed: int = 0
    use_timestamp: bool = True
    timestamp: Optional[str] = None
    exp_root_dir: str = "outputs"
    # derived by launch.py; kept in parsed.yaml so that a saved config names its own folder
    exp_dir: str = "outputs/default"
    trial_name: str = "exp"
    trial_dir: str = "outputs/default/exp"
    n_gpus: int = 1
    resume: Optional[str] = None
    data_type: str = ""
    data: dict = field(default_factory=dict)
    system_type: str = ""
    system: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)
    checkpoint: dict = field(default_factory=dict)


# ---------------------------------------------------------------- loading
def parse_overrides(cli_args: list[str]) -> DictConfig:
    """Parse `key=value` dot-list overrides; a malformed one is a ConfigError naming it."""
    for arg in cli_args:
        key = arg.split("=", 1)[0]
        if "=" not in arg or not key or key.startswith("-") or " " in key.strip():
            raise ConfigError(
                f"bad override '{arg}': overrides are key=value with a dotted key, e.g. "
                f"system.prompt_processor.prompt=\"a pineapple\" or trainer.max_steps=2000."
            )
    try:
        return OmegaConf.from_dotlist(list(cli_args))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad override in {cli_args}: {exc}") from None


def check_mandatory(cfg: DictConfig) -> None:
    """Values marked ??? must be given (on the command line or in another YAML)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"mandatory config value(s) not given: {', '.join(missing)} (marked ??? in the config). "
            f"Give them on the command line, e.g. {missing[0]}=<value>."
        )


def load_config(
    *yaml_paths: str, cli_args: list[str] = (), validate: bool = False, allow_missing: bool = False
) -> DictConfig:
    """Merge YAML files and overrides onto the ExperimentConfig schema; resolve interpolations.
    Mandatory values (???) left unset are an error unless `allow_missing` (for inspecting configs)."""
    cfgs = []
    for path in yaml_paths:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: '{path}'. Pass an existing YAML to --config.")
        try:
            cfgs.append(OmegaConf.load(path))
        except Exception as exc:  # yaml.YAMLError and friends
            raise ConfigError(f"cannot parse config file '{path}': {exc}") from None
    cfgs.append(parse_overrides(list(cli_args)))
    raw = OmegaConf.merge(*cfgs)
    check_keys(ExperimentConfig, raw, path="", component="the experiment (top level)")
    if not allow_missing:
        check_mandatory(raw)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), raw)
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    if validate:
        validate_experiment(merged)
    return merged


def dump_config(path: str | Path, cfg: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fp:
        OmegaConf.save(config=cfg, f=fp)


# ---------------------------------------------------------------- strict structured parsing
def _dataclass_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _nested_dataclass(tp: Any) -> Optional[type]:
    """The dataclass type of a field annotated `SomeConfig` or `Optional[SomeConfig]`."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def check_keys(cls: type, cfg: Any, path: str, component: str) -> None:
    """Raise ConfigError for the first key of `cfg` that `cls` (a Config dataclass) lacks.

    Recurses into fields whose type is itself a dataclass; `dict` fields accept any keys.
    """
    if cfg is None or not isinstance(cfg, (dict, DictConfig)):
        return
    fields = _dataclass_fields(cls)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        hints = {name: f.type for name, f in fields.items()}
    for key in cfg.keys():
        full = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{full}' for {component}.{did_you_mean(key, fields)} "
                f"Valid keys: {', '.join(sorted(fields))}."
            )
        nested = _nested_dataclass(hints.get(key))
        if nested is not None:
            value = cfg[key] if isinstance(cfg, dict) else OmegaConf.select(cfg, str(key), default=None)
            check_keys(nested, value, full, component)


def parse_structured(cls: type, cfg: Any = None, path: str = "", component: str = "") -> Any:
    """Build a typed, read-only-keyed OmegaConf object of `cls` from `cfg` (dict/DictConfig/None).

    Unknown keys and values of the wrong type raise ConfigError naming the dotted key.
    """
    component = component or cls.__qualname__
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, (dict, DictConfig)):
        raise ConfigError(
            f"config section '{path or component}' must be a mapping of keys to values, got {cfg!r}."
        )
    check_keys(cls, cfg, path, component)
    try:
        return OmegaConf.merge(OmegaConf.structured(cls), cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        where = f"{path}.{key}" if path and key else (path or key)
        msg = (getattr(exc, "msg", None) or str(exc)).splitlines()[0]
        raise ConfigError(f"invalid value for '{where}' of {component}: {msg}") from None


# ---------------------------------------------------------------- whole-experiment validation
def _check_call_kwargs(target: Any, cfg: Any, path: str, what: str) -> None:
    """Check that every key of `cfg` is a keyword argument of `target` (e.g. Lightning's Trainer)."""
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n in params if n != "self"]
    for key in (cfg or {}).keys():
        if key not in params:
            raise ConfigError(
                f"unknown config key '{path}.{key}' for {what}.{did_you_mean(key, valid)} "
                f"Valid keys: {', '.join(valid)}."
            )


def validate_experiment(cfg: DictConfig, fitting: bool = True) -> None:
    """Validate every section of an experiment before any work starts.

    Resolves data_type and system_type, parses their configs strictly, and lets the system class
    validate its own components (`validate_config`), which does the same for geometry, material,
    background, renderer, guidance, prompt processor and exporter. When not `fitting` (--test,
    --validate, --export) the guidance and prompt processor keys are still checked, but the models
    they would load are not looked up: those runs never load them.
    """
    from lift3d.registry import find

    check_mandatory(cfg)
    if not cfg.data_type:
        raise ConfigError("config has no 'data_type': name a data module, e.g. random-camera-datamodule.")
    if not cfg.system_type:
        raise ConfigError("config has no 'system_type': name a system, e.g. lift3d-system.")
    data_cls = find(cfg.data_type)
    data_cls.validate_config(parse_structured(data_cls.Config, cfg.data, "data", f"data module '{cfg.data_type}'"), "data")
    system_cls = find(cfg.system_type)
    system_cls.validate_config(cfg.system, path="system", resumed=cfg.resume is not None, fitting=fitting,
                               exp_root_dir=cfg.exp_root_dir)

    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    _check_call_kwargs(pl.Trainer.__init__, cfg.trainer, "trainer", "Lightning's Trainer")
    _check_call_kwargs(ModelCheckpoint.__init__, cfg.checkpoint, "checkpoint", "Lightning's ModelCheckpoint")

