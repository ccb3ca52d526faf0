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
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from lift3d.errors import ConfigError


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


def parameter_groups(system: nn.Module, params_cfg: Any) -> list[dict]:
    if not params_cfg:
        return [{"params": [p for p in system.parameters() if p.requires_grad]}]
    groups = []
    for dotted, args in params_cfg.items():
        target = _resolve_module(system, dotted)
        params = list(target.parameters()) if isinstance(target, nn.Module) else [target]
        params = [p for p in params if isinstance(p, torch.Tensor) and p.requires_grad]
        if params:
            groups.append({"params": params, "name": dotted, **dict(args or {})})
    if not groups:
        raise ConfigError("system.optimizer.params selects no trainable parameter.")
    return groups


def make_optimizer(system: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    cfg = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    name = cfg.get("name", "Adam")
    if not hasattr(torch.optim, name):
        raise ConfigError(f"system.optimizer.name '{name}' is not a torch.optim optimizer.")
    return getattr(torch.optim, name)(parameter_groups(system, cfg.get("params")), **cfg.get("args", {}))


def _make_scheduler(cfg: dict, optimizer: torch.optim.Optimizer) -> Any:
    sched = torch.optim.lr_scheduler
    name = cfg.get("name")
    if not name or not hasattr(sched, name):
        raise ConfigError(f"system.scheduler.name '{name}' is not a torch.optim.lr_scheduler class.")
    if name in ("SequentialLR", "ChainedScheduler"):
        children = [_make_scheduler(c, optimizer) for c in cfg.get("schedulers", [])]
        if name == "ChainedScheduler":
            return sched.ChainedScheduler(children)
        return sched.SequentialLR(optimizer, schedulers=children, **cfg.get("args", {}))
    return getattr(sched, name)(optimizer, **cfg.get("args", {}))


def make_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> dict:
    cfg = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    return {"scheduler": _make_scheduler(cfg, optimizer), "interval": cfg.get("interval", "step")}
