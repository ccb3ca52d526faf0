"""Interpolation targets that threestudio-style configs reference but leave out.

threestudio builds each component's config from its dataclass, so `${data.default_elevation_deg}`
in a data section resolves to the data module's default when the YAML does not set the key (e.g.
`experimental/imagecondition_zero123nerf_refine.yaml`: random cameras whose eval camera interpolates
the single-image keys). lift3d resolves the whole experiment before it is parsed, so such a reference
would fail; `fill_referenced_defaults` puts the declared default of the data module's Config in
place first. It only fills keys that the data module declares: any other dangling reference keeps
OmegaConf's "missing key" error.

`link_keys(name, {"data.image_path": "system.guidance.image_path"})` (called by a plugin at import)
declares that an experiment whose `data_type` or `system_type` is `name` takes a key left out of
one section from another, as an interpolation (the USD repository's image-to-3D config keeps its
input image in the guidance section only).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lift3d.errors import ConfigError

_REFERENCE = re.compile(r"\$\{data\.([A-Za-z_][A-Za-z0-9_]*)\}")
_LINKS: dict[str, dict[str, str]] = {}


def link_keys(name: str, links: dict[str, str]) -> None:
    """For experiments using the registered `name`: each target key left out gets `${source}`."""
    _LINKS.setdefault(name, {}).update(links)


def linked_keys(name: str) -> dict[str, str]:
    return dict(_LINKS.get(name, {}))


def _strings(node: Any):
    """Every string value (interpolations unresolved) of a plain container tree."""
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def _field_default(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
    raise KeyError(name)


def fill_referenced_defaults(raw: DictConfig) -> None:
    from lift3d.registry import find, is_registered

    for owner in (raw.get("data_type"), raw.get("system_type")):
        if isinstance(owner, str) and owner in _LINKS:
            for target, source in _LINKS[owner].items():
                if OmegaConf.select(raw, target, default=None, throw_on_missing=False) is None \
                        and OmegaConf.select(raw, source, default=None, throw_on_missing=False) is not None:
                    OmegaConf.update(raw, target, f"${{{source}}}", force_add=True)
    data_type = raw.get("data_type")
    if not isinstance(data_type, str) or not data_type or not is_registered(data_type):
        return
    config_cls = find(data_type).Config
    if not dataclasses.is_dataclass(config_cls):
        return
    data = raw.get("data")
    if data is None:
        raw.data = {}
        data = raw.data
    if not isinstance(data, DictConfig):
        raise ConfigError(f"'data' must be a mapping of keys to values, got {data!r}.")
    for text in list(_strings(OmegaConf.to_container(raw, resolve=False))):
        for key in _REFERENCE.findall(text):
            if key in data.keys():  # `key in data` is False for a ??? value: that one stays mandatory
                continue
            try:
                data[key] = _field_default(config_cls, key)
            except KeyError:
                continue  # not a key of this data module: OmegaConf's own error names it


__all__ = ["fill_referenced_defaults", "link_keys", "linked_keys"]
