"""Optimizer and LR scheduler from config, with dotted parameter groups (threestudio style).

```yaml
optimizer:
  name: AdamW
  args: {lr: 0.01, betas: [0.9, 0.99], eps: 1.e-15}
  params:                       # optional; without it every trainable parameter is optimised
    geometry.encoding: {lr: 0.01}
    geometry.density_network: {lr: 0.001}
scheduler:                      # optional
  name: SequentialLR | ChainedScheduler | <any torch.optim.lr_scheduler class>
  interval: step
  args: {...}
  schedulers: [{name: ..., args: ...}, ...]   # for SequentialLR / ChainedScheduler
```
A group may also be written nested, as a dot-list override makes it:
`system.optimizer.params.geometry.encoding.lr=0.02` gives `params: {geometry: {encoding: {lr: 0.02}}}`,
which `flatten_groups` reads as group `geometry.encoding` with lr 0.02 (overriding the YAML's value).
`validate_optimizer_config` checks names, argument names and values before anything is built;
`check_param_groups` resolves every group against the built system before any model is loaded.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Optional

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from lift3d.errors import ConfigError, did_you_mean


def _resolve_module(root: nn.Module, dotted: str) -> Any:
    obj: Any = root
    for part in dotted.split("."):
        if not hasattr(obj, part):
            raise ConfigError(
                f"system.optimizer.params names '{dotted}', but '{part}' does not exist on "
                f"{type(obj).__name__}. Name a module of the system, e.g. geometry.encoding."
            )
        obj = getattr(obj, part)
    return obj


def flatten_groups(params_cfg: Any, prefix: str = "") -> dict[str, dict]:
    """{dotted module name: optimizer args} from a params mapping in which a group may be nested
    (a mapping value is a deeper module; anything else is an optimizer argument). Later entries
    override earlier ones, so a nested override wins over the YAML's dotted group."""
    if params_cfg is None:
        return {}
    if not isinstance(params_cfg, dict):
        params_cfg = OmegaConf.to_container(params_cfg, resolve=True)
    groups: dict[str, dict] = {}
    for key, value in params_cfg.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        value = value or {}
        if not isinstance(value, dict):
            raise ConfigError(
                f"system.optimizer.params.{dotted} = {value!r}: give a mapping of optimizer arguments, e.g. "
                f"system.optimizer.params.{dotted}.lr=0.01."
            )
        args = {k: v for k, v in value.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in value.items() if isinstance(v, dict)}
        if args or not nested:
            groups.setdefault(dotted, {}).update(args)
        for sub, sub_groups in flatten_groups(nested, dotted).items():
            groups.setdefault(sub, {}).update(sub_groups)
    return groups


def _optimizer_class(name: Any) -> type:
    from lift3d.systems.adan import EXTRA_OPTIMIZERS  # threestudio's Adan

    cls = EXTRA_OPTIMIZERS.get(str(name)) or getattr(torch.optim, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        names = [n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)
                 and issubclass(getattr(torch.optim, n), torch.optim.Optimizer) and n != "Optimizer"]
        raise ConfigError(f"system.optimizer.name '{name}' is not a torch.optim optimizer.{did_you_mean(name, names)} "
                          f"Use one of {', '.join(sorted(names))}.")
    return cls


def _check_args(cls: type, args: dict, where: str) -> None:
    params = inspect.signature(cls.__init__).parameters
    valid = [n for n in params if n not in ("self", "params")]
    for key, value in args.items():
        if key not in params:
            raise ConfigError(f"unknown optimizer argument '{where}.{key}' for {cls.__module__}.{cls.__name__}."
                              f"{did_you_mean(key, valid)} Valid arguments: {', '.join(valid)}.")
        if key in ("lr", "eps", "weight_decay", "momentum"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{where}.{key} = {value!r} is not a finite number >= 0: give e.g. {where}.{key}=0.01.")


def validate_optimizer_config(cfg: Any, cli_args: Optional[list[str]] = None) -> None:
    """Check `system.optimizer` / `system.scheduler` names and arguments before anything is built.
    `cli_args`: the run's overrides; overriding `system.optimizer.args.lr` while every parameter
    group sets its own lr (so the override would change nothing) is an error naming the groups."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    opt = cfg.get("optimizer") or {}
    if not isinstance(opt, dict):
        raise ConfigError(f"system.optimizer = {opt!r}: give a mapping with name, args and optional params.")
    cls = _optimizer_class(opt.get("name", "Adam"))
    args = opt.get("args") or {}
    if not isinstance(args, dict):
        raise ConfigError(f"system.optimizer.args = {args!r}: give a mapping, e.g. {{lr: 0.01}}.")
    _check_args(cls, args, "system.optimizer.args")
    groups = flatten_groups(opt.get("params"))
    for dotted, group_args in groups.items():
        _check_args(cls, group_args, f"system.optimizer.params.{dotted}")
    if groups and all("lr" in g for g in groups.values()) and any(
            a.split("=", 1)[0].strip() == "system.optimizer.args.lr" for a in (cli_args or [])):
        raise ConfigError(
            "system.optimizer.args.lr is overridden, but every parameter group sets its own lr, so it would "
            "change nothing. Override the groups' lr instead: "
            + ", ".join(f"system.optimizer.params.{d}.lr=<value>" for d in groups) + "."
        )
    sched = cfg.get("scheduler")
    if sched:
        _check_scheduler_names(sched, "system.scheduler")


def _check_scheduler_names(cfg: Any, where: str) -> None:
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where} = {cfg!r}: give a mapping with name and args.")
    name = cfg.get("name")
    sched = torch.optim.lr_scheduler
    if not name or not isinstance(getattr(sched, str(name), None), type):
        names = [n for n in dir(sched) if n.endswith("LR") or n in ("ChainedScheduler", "ReduceLROnPlateau")]
        raise ConfigError(f"{where}.name '{name}' is not a torch.optim.lr_scheduler class.{did_you_mean(name, names)}")
    for i, child in enumerate(cfg.get("schedulers") or []):
        _check_scheduler_names(child, f"{where}.schedulers[{i}]")


def check_param_groups(system: nn.Module, cfg: Any, skip_prefixes: tuple[str, ...] = ("guidance_params",)) -> None:
    """Resolve every parameter group's module on the built system (a ConfigError naming an unknown
    one); groups under `skip_prefixes` (built with the guidance, later) are not checked here."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    owner: dict[int, str] = {}  # id(parameter) -> the group that holds it
    for dotted in flatten_groups((cfg or {}).get("params")):
        if dotted.split(".")[0] in skip_prefixes:
            continue
        target = _resolve_module(system, dotted)
        for p in (target.parameters() if isinstance(target, nn.Module) else [target]):
            if id(p) in owner:
                raise ConfigError(
                    f"system.optimizer.params: groups '{owner[id(p)]}' and '{dotted}' hold the same parameters "
                    f"(one contains the other); a parameter belongs to one group. Give the lr of each of "
                    f"'{owner[id(p)]}' and '{dotted}' separately, or only the larger one."
                )
            owner[id(p)] = dotted


def self_optimised_parameters(system: nn.Module) -> set[int]:
    """ids of the parameters of modules that step them with their own optimizer (`steps_own_parameters =
    True`, e.g. the proposal network of lift3d.renderers.proposal_network): not in system.optimizer."""
    return {id(p) for m in system.modules() if getattr(m, "steps_own_parameters", False) for p in m.parameters()}


def parameter_groups(system: nn.Module, params_cfg: Any) -> list[dict]:
    own = self_optimised_parameters(system)
    if not params_cfg:
        return [{"params": [p for p in system.parameters() if p.requires_grad and id(p) not in own]}]
    groups = []
    for dotted, args in flatten_groups(params_cfg).items():
        target = _resolve_module(system, dotted)
        params = list(target.parameters()) if isinstance(target, nn.Module) else [target]
        params = [p for p in params if isinstance(p, torch.Tensor) and p.requires_grad and id(p) not in own]
        if params:
            groups.append({"params": params, "name": dotted, **dict(args or {})})
    if not groups:
        raise ConfigError("system.optimizer.params selects no trainable parameter.")
    return groups


def make_optimizer(system: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    cfg = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    cls = _optimizer_class(cfg.get("name", "Adam"))
    return cls(parameter_groups(system, cfg.get("params")), **(cfg.get("args") or {}))


def _make_scheduler(cfg: dict, optimizer: torch.optim.Optimizer) -> Any:
    sched = torch.optim.lr_scheduler
    name = cfg.get("name")
    if not name or not hasattr(sched, name):
        raise ConfigError(f"system.scheduler.name '{name}' is not a torch.optim.lr_scheduler class.")
    if name in ("SequentialLR", "ChainedScheduler"):
        children = [_make_scheduler(c, optimizer) for c in cfg.get("schedulers", [])]
        if name == "ChainedScheduler":
            return sched.ChainedScheduler(children)
        args = dict(cfg.get("args") or {})
        if "milestones" in cfg:  # threestudio writes SequentialLR's milestones next to `schedulers`
            args.setdefault("milestones", cfg["milestones"])
        return sched.SequentialLR(optimizer, schedulers=children, **args)
    return getattr(sched, name)(optimizer, **cfg.get("args", {}))


def make_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> dict:
    cfg = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    return {"scheduler": _make_scheduler(cfg, optimizer), "interval": cfg.get("interval", "step")}
