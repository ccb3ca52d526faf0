"""Base classes of every configurable component.

A component has a nested `Config` dataclass, is built from a config mapping (strictly parsed, see
lift3d.config.parse_structured) and sets itself up in `configure()`. Components that change with
the training step implement `update_step(epoch, global_step)`; `do_update_step` propagates the
call to every attribute that is itself updateable — nn.Module children and plain objects alike
(docs/DESIGN.md, "Core contracts").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

from lift3d.config import parse_structured


class Updateable:
    def do_update_step(self, epoch: int, global_step: int, _seen: Optional[set] = None) -> None:
        seen = set() if _seen is None else _seen
        if id(self) in seen:
            return
        seen.add(id(self))
        children = list(vars(self).values())
        if isinstance(self, nn.Module):
            children += list(self._modules.values())
        for child in children:
            if isinstance(child, Updateable):
                child.do_update_step(epoch, global_step, seen)
            elif isinstance(child, nn.Module):  # plain containers (Sequential, ModuleList, ...)
                for sub in child.modules():
                    if isinstance(sub, Updateable):
                        sub.do_update_step(epoch, global_step, seen)
        self.update_step(epoch, global_step)

    def update_step(self, epoch: int, global_step: int) -> None:
        """Override to react to the training step; the default does nothing."""


def _component_name(obj: Any) -> str:
    from lift3d.registry import _REGISTRY

    for name, cls in _REGISTRY.items():
        if cls is type(obj):
            return f"'{name}'"
    return type(obj).__qualname__


class Configurable(Updateable):
    """Parses `cfg` strictly into `self.cfg` (a typed view of the nested `Config`) and calls
    `configure(*args, **kwargs)`, where subclasses build what they hold."""

    @dataclass
    class Config:
        pass

    cfg: Any

    def __init__(self, cfg: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, component=_component_name(self))
        self.setup_defaults()
        self.configure(*args, **kwargs)

    def setup_defaults(self) -> None:
        """Attributes every instance has before configure() runs."""

    def configure(self, *args: Any, **kwargs: Any) -> None:
        pass


class BaseObject(Configurable):
    """A configurable component that holds no trainable state (guidance, prompt processor...)."""

    @dataclass
    class Config(Configurable.Config):
        pass

    def setup_defaults(self) -> None:
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> "BaseObject":
        self.device = torch.device(device)
        return self


class BaseModule(Configurable, nn.Module):
    """A configurable nn.Module (geometry, material, background, renderer...)."""

    @dataclass
    class Config(Configurable.Config):
        pass

    @property
    def device(self) -> torch.device:
        for tensor in list(self.parameters()) + list(self.buffers()):
            return tensor.device
        return torch.device("cpu")
