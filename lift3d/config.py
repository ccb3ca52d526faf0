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
def schedule_max(value: Any) -> float:
    """The largest value a C() schedule takes (lift3d.utils.schedule): a number is itself; a list
    [v0, v1, end], [start, v0, v1, end] or [s0, v0, v1, s1, v2, s2, ...] is linear between its
    knot values, so its maximum is the largest knot value."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    items = list(OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value)
    if len(items) == 3:
        items = [0] + items
    if len(items) < 4 or len(items) % 2:
        raise ConfigError(f"schedule {items} has {len(items)} entries; use v, [v0, v1, end], [start, v0, v1, end] "
                          f"or [s0, v0, v1, s1, v2, s2, ...].")
    knot_values = [items[1], items[2]] + items[4::2]
    return float(max(knot_values))


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
    # whether a C() schedule is ever > 0 (threestudio's, e.g. data.requires_depth from lambda_depth)
    "cmaxgt0": lambda value: schedule_max(value) > 0,
    "cmaxgt0orcmaxgt0": lambda a, b: schedule_max(a) > 0 or schedule_max(b) > 0,
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
    # launch.py's pre-flight memory estimate refuses a run that does not fit (lift3d/memory_check.py);
    # false: print the estimate and run anyway (memory_check=false on the command line wins over the file)
    memory_check: bool = True


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
    merged = OmegaConf.create()
    for arg in cli_args:  # one at a time, so that the message names the bad one
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([arg]))
        except Exception as exc:  # OmegaConf errors, and yaml's for an unbalanced [ or {
            reason = " ".join(str(exc).split())[:200]
            raise ConfigError(
                f"bad override '{arg}': {reason}. Quote values with brackets or braces as a whole YAML list/map, "
                f"e.g. 'data.elevation_range=[-10,90]', or write a literal string as key='\"[text\"'."
            ) from None
    return merged


def check_mandatory(cfg: DictConfig) -> None:
    """Values marked ??? must be given (on the command line or in another YAML)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"mandatory config value(s) not given: {', '.join(missing)} (marked ??? in the config). "
            f"Give them on the command line, e.g. {missing[0]}=<value>."
        )


def _yaml_top_level(path: str) -> str:
    """What a YAML file holds at its top level: mapping, list, empty or a scalar's type name."""
    import yaml

    with open(path) as fp:
        node = yaml.compose(fp, Loader=yaml.SafeLoader)
    if node is None:
        return "empty"
    return {"MappingNode": "mapping", "SequenceNode": "list"}.get(type(node).__name__, "scalar value")


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
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml.YAMLError and friends
            raise ConfigError(f"cannot parse config file '{path}': {exc}") from None
        top = _yaml_top_level(path)
        if not isinstance(loaded, DictConfig) or top not in ("mapping", "empty"):
            raise ConfigError(
                f"config file '{path}' holds a {top} at its top level; an experiment config is a mapping "
                f"(name:, data_type:, system: ...)."
            )
        cfgs.append(loaded)
    cfgs.append(parse_overrides(list(cli_args)))
    raw = OmegaConf.merge(*cfgs)
    from lift3d.compat import prepare_raw

    prepare_raw(raw)  # threestudio / USD configs: missing components named first, referenced defaults filled
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


# encoding / network types that take the same keys as another (a progressive-band hash grid is a hash grid)
_OTYPE_FAMILY = {"ProgressiveBandHashGrid": "HashGrid", "Grid": "HashGrid", "ProgressiveBandFrequency": "Frequency",
                 "SphereInitVanillaMLP": "VanillaMLP"}


def _switched_types(base: DictConfig, cfg: Any) -> list:
    """Keys of `cfg` holding a mapping whose `otype` is of another family than the default mapping's
    (an encoding / network config switched to another kind): such a mapping replaces the default
    instead of being merged into it, so no key of the default kind leaks into the new one — threestudio
    builds its configs from the given dict alone (e.g. `dir_encoding_config: {otype:
    ProgressiveBandFrequency, n_frequencies: 6}` over the default `{otype: SphericalHarmonics, degree: 3}`)."""
    keys = []
    for key in cfg.keys():
        if key not in base:
            continue
        default, given = base._get_node(key), cfg[key]
        if not isinstance(default, DictConfig) or default._is_none() or default._is_missing():
            continue
        if isinstance(given, (dict, DictConfig)) and "otype" in default and "otype" in given:
            old, new = str(default["otype"]), str(given["otype"])
            if _OTYPE_FAMILY.get(old, old) != _OTYPE_FAMILY.get(new, new):
                keys.append(key)
    return keys


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
        base = OmegaConf.structured(cls)
        switched = _switched_types(base, cfg)
        merged = OmegaConf.merge(base, {k: v for k, v in cfg.items() if k not in switched} if switched else cfg)
        for key in switched:  # a dict of another `otype` replaces the default one (threestudio's meaning)
            merged[key] = cfg[key]
        return merged
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        where = f"{path}.{key}" if path and key else (path or key)
        msg = (getattr(exc, "msg", None) or str(exc)).splitlines()[0]
        raise ConfigError(f"invalid value for '{where}' of {component}: {msg}") from None


# ---------------------------------------------------------------- whole-experiment validation
def _matches(value: Any, annotation: Any) -> bool:
    """Whether a config value fits a signature annotation, for the plain types a YAML can hold
    (int, float, bool, str, None, Literal, list, dict and unions of them); any other class (a
    Logger, a timedelta, ...) cannot be written in a YAML value and is not judged here."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        return any(_matches(value, a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return not isinstance(value, (int, float, bool, str, type(None))) or origin is not None


# (key, lowest allowed value, example) for counts whose type alone does not make them valid
_LOWER_BOUNDS = {
    "max_steps": (-1, "trainer.max_steps=10000 (-1: no limit)"),
    "max_epochs": (-1, "trainer.max_epochs=1"),
    "log_every_n_steps": (1, "trainer.log_every_n_steps=50"),
    "accumulate_grad_batches": (1, "trainer.accumulate_grad_batches=1"),
    "check_val_every_n_epoch": (1, "trainer.check_val_every_n_epoch=1"),
    "num_sanity_val_steps": (-1, "trainer.num_sanity_val_steps=0"),
    "every_n_train_steps": (0, "checkpoint.every_n_train_steps=500"),
    "every_n_epochs": (0, "checkpoint.every_n_epochs=1"),
    "save_top_k": (-1, "checkpoint.save_top_k=-1 (keep all)"),
}


def _check_call_kwargs(target: Any, cfg: Any, path: str, what: str) -> None:
    """Check that every key of `cfg` is a keyword argument of `target` (e.g. Lightning's Trainer)
    and that its value has the argument's type (and, for counts, a valid range)."""
    try:
        params = inspect.signature(target, eval_str=True).parameters
    except Exception:  # an annotation that does not evaluate: names only
        params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n in params if n != "self"]
    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else (cfg or {})
    for key in values.keys():
        if key not in params:
            raise ConfigError(
                f"unknown config key '{path}.{key}' for {what}.{did_you_mean(key, valid)} "
                f"Valid keys: {', '.join(valid)}."
            )
        value, annotation = values[key], params[key].annotation
        if not _matches(value, annotation):
            shown = str(annotation).replace("typing.", "")
            raise ConfigError(f"{path}.{key} = {value!r} has the wrong type for {what}: expected {shown}.")
        if key in _LOWER_BOUNDS and isinstance(value, int) and not isinstance(value, bool):
            low, example = _LOWER_BOUNDS[key]
            if value < low:
                raise ConfigError(f"{path}.{key} = {value} is below {low}: give e.g. {example}.")


def validate_experiment(cfg: DictConfig, fitting: bool = True, cli_args: Optional[list[str]] = None) -> None:
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
    from lift3d.systems.base import BaseLift3DSystem

    if fitting and issubclass(system_cls, BaseLift3DSystem):  # optimizer names and arguments, before any build
        from lift3d.systems.optim import validate_optimizer_config

        validate_optimizer_config(cfg.system, cli_args)

    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    _check_call_kwargs(pl.Trainer.__init__, cfg.trainer, "trainer", "Lightning's Trainer")
    _check_call_kwargs(ModelCheckpoint.__init__, cfg.checkpoint, "checkpoint", "Lightning's ModelCheckpoint")

