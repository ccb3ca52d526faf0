"""Components that threestudio's and the USD repository's configs name and lift3d does not have yet.

Each entry says what the name is and which issue brings it. `check_missing_components(raw)` looks at
every registered-name key of an experiment (`data_type`, `system_type`, `system.<x>_type`,
`system.renderer.base_renderer_type`) and, for a name that is in this table and NOT registered at
that moment, raises one ConfigError naming the key, the component, the method and the issue — before
any other check, so the user learns what is missing even before filling the config's ??? values.
The registry is asked at run time: once a module registers the name, the entry is inert (a later
`--check-only` run of tools/config_compat_table.py moves the config to "runs" by itself).
Names in neither the registry nor this table get the registry's "unknown registered name" error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from lift3d.errors import ConfigError


@dataclass(frozen=True)
class MissingComponent:
    what: str  # the kind of component and what it does
    method: str  # the method (paper) it belongs to
    issue: int  # the lift3d issue that brings it


_PD, _M123, _IF, _Z123 = "ProlificDreamer (VSD)", "Magic123", "DeepFloyd IF", "Zero-1-to-3 family"
MISSING_COMPONENTS: dict[str, MissingComponent] = {
    # issue 15: ProlificDreamer, Magic123, HiFA, DeepFloyd IF, Stable Zero123 refinement
    "prolificdreamer-system": MissingComponent("the VSD system (LoRA of the UNet trained alongside)", _PD, 15),
    "stable-diffusion-vsd-guidance": MissingComponent("the variational score distillation guidance", _PD, 15),
    "stable-diffusion-unified-guidance": MissingComponent("threestudio's unified SD guidance (SDS/VSD modes)",
                                                          f"{_M123} / unified guidance", 15),
    "zero123-unified-guidance": MissingComponent("threestudio's unified Zero-1-to-3 guidance", _M123, 15),
    "magic123-system": MissingComponent("the joint Zero-1-to-3 + SD system", _M123, 15),
    "deep-floyd-guidance": MissingComponent("the pixel-space IF guidance", _IF, 15),
    "deep-floyd-prompt-processor": MissingComponent("the T5 prompt processor", _IF, 15),
    "image-condition-dreamfusion-system": MissingComponent("the image-conditioned DreamFusion system", _Z123, 15),
    "zero123-simple-system": MissingComponent("the unified-guidance Zero-1-to-3 system", _Z123, 15),
    # issue 16: SJC, Latent-NeRF, TextMesh, SDI, InstructNeRF2NeRF, Control4D, CO3D, ControlNet
    "sjc-system": MissingComponent("the score Jacobian chaining system", "SJC", 16),
    "volume-grid": MissingComponent("the dense voxel-grid geometry", "SJC", 16),
    "textured-background": MissingComponent("the learned-texture background", "SJC", 16),
    "latentnerf-system": MissingComponent("the latent-space NeRF system", "Latent-NeRF", 16),
    "sd-latent-adapter-material": MissingComponent("the latent-to-RGB adapter material", "Latent-NeRF", 16),
    "textmesh-system": MissingComponent("the SDF + NeuS system", "TextMesh", 16),
    "sdi-system": MissingComponent("the score distillation via inversion system", "SDI", 16),
    "stable-diffusion-sdi-guidance": MissingComponent("the DDIM-inversion SDS guidance", "SDI", 16),
}


# values of keys of registered components that name a feature lift3d does not have yet:
# (section under system, key, values) -> entry. Unlike names, a value cannot be asked of the registry:
# remove an entry when its feature lands (tests/test_threestudio_configs.py lists them).
MISSING_VALUES: dict[tuple[str, str, tuple[Any, ...]], MissingComponent] = {
}


def registered_name_keys(raw: Any) -> Iterator[tuple[str, str]]:
    """(dotted key, value) of every registered-name key of an experiment config (unresolved values
    that are interpolations are skipped). `system.guidance.guidance_type` and the like are modes of a
    component, not registered names, and are not looked at."""
    def plain(section: Any, key: str) -> Optional[str]:
        if not isinstance(section, (dict, DictConfig)) or key not in section:
            return None
        node = section._get_node(key) if isinstance(section, DictConfig) else None
        if node is not None and (node._is_interpolation() or node._is_missing()):
            return None
        value = section[key]
        return value if isinstance(value, str) and value else None

    for key in ("data_type", "system_type"):
        value = plain(raw, key)
        if value:
            yield key, value
    system = raw.get("system") if isinstance(raw, (dict, DictConfig)) else None
    if isinstance(system, (dict, DictConfig)):
        for key in list(system.keys()):
            if str(key).endswith("_type"):
                value = plain(system, key)
                if value:
                    yield f"system.{key}", value
        renderer = system.get("renderer")
        value = plain(renderer, "base_renderer_type")
        if value:
            yield "system.renderer.base_renderer_type", value


def missing_names(raw: Any) -> list[tuple[str, str, MissingComponent]]:
    """(key, name, entry) of every name of `raw` that is in the table and not registered now, then of
    every value in MISSING_VALUES."""
    from lift3d.registry import is_registered

    found = []
    for key, name in registered_name_keys(raw):
        entry = MISSING_COMPONENTS.get(name)
        if entry is not None and not is_registered(name):
            found.append((key, name, entry))
    system = raw.get("system") if isinstance(raw, (dict, DictConfig)) else None
    for (section, key, values), entry in MISSING_VALUES.items():
        body = system.get(section) if isinstance(system, (dict, DictConfig)) else None
        value = body.get(key) if isinstance(body, (dict, DictConfig)) and key in body else None
        if isinstance(value, (str, bool)) and any(value is v or (isinstance(v, str) and value == v) for v in values):
            found.append((f"system.{section}.{key}", str(value), entry))
    return found


def describe(key: str, name: str, entry: MissingComponent) -> str:
    return f"{key} = '{name}' needs {entry.what} of {entry.method}, which lift3d does not have yet (issue #{entry.issue})"


def check_missing_components(raw: Any) -> None:
    """ConfigError naming every missing component of `raw` (see the module docstring)."""
    found = missing_names(raw)
    if not found:
        return
    first = describe(*found[0])
    more = "".join(f"; also {describe(*f)}" for f in found[1:])
    raise ConfigError(f"this config cannot run yet: {first}{more}. Nothing was run.")


__all__ = ["MISSING_COMPONENTS", "MISSING_VALUES", "MissingComponent", "check_missing_components", "describe", "missing_names",
           "registered_name_keys"]
