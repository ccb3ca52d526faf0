"""Base classes of every configurable component.

A component has a nested `Config` dataclass, is built from a config mapping (strictly parsed, see
lift3d.config.parse_structured) and sets itself up in `configure()`. Before anything is built,
the experiment calls the class's `validate_config(cfg, path)` with the component's parsed section
and its real config path (e.g. "system.geometry", "data"), which the messages name. Components
that change with the training step implement `update_step(epoch, global_step)`; `do_update_step`
propagates the call to every attribute that is itself updateable — nn.Module children and plain
objects alike (docs/DESIGN.md, "Core contracts").
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


def component_label(cls: type) -> str:
    """How messages name a component class: its registered name, quoted (lift3d.registry.name_of),
    or its class name when it is not registered (a base class, a test double built directly)."""
    from lift3d.errors import RegistryError
    from lift3d.registry import name_of

    try:
        return f"'{name_of(cls)}'"
    except RegistryError:
        return cls.__qualname__


class Configurable(Updateable):
    """Parses `cfg` strictly into `self.cfg` (a typed view of the nested `Config`) and calls
    `configure(*args, **kwargs)`, where subclasses build what they hold."""

    @dataclass
    class Config:
        pass

    cfg: Any
    # config keys whose value is a checkpoint (file, trial folder, <dir>/LAST or LAST): the system
    # replaces LAST by the newest checkpoint under the run's exp_root_dir before validate_config
    # and construction see the section (lift3d.systems.stage_chain.resolve_checkpoint_keys)
    checkpoint_keys: tuple[str, ...] = ()

    @classmethod
    def validate_config(cls, cfg: Any, path: str) -> None:
        """Raise lift3d.errors.ConfigError, naming `path.<key>` and the fix, for a config this
        component cannot run with. `cfg` is the section already parsed into `Config` (unknown keys
        and wrong types are rejected before); `path` is where the section sits in the experiment
        ("system.geometry", "system.renderer.base_renderer", "data"...). Called on every
        component class before any work starts; the default accepts everything."""

    def __init__(self, cfg: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, component=component_label(type(self)))
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
