"""Name → class registry (docs/DESIGN.md, "Core contracts").

`@register("name")` records a class; `find("name")` returns it, `is_registered("name")` says
whether it exists, and `name_of(cls)` is the inverse of `find`. Built-in modules are imported on
the first lookup so that `import lift3d` stays light; plugins register when `lift3d.plugins`
imports them. The table itself is private to this module: read it through these functions.
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Type, TypeVar

from lift3d.errors import RegistryError, did_you_mean

T = TypeVar("T")

_REGISTRY: Dict[str, type] = {}

# Modules that register the built-in components; imported lazily by `find` / `registered_names`.
BUILTIN_MODULES = (
    "lift3d.data.random_camera",
    "lift3d.data.eff_random_camera",
    "lift3d.data.single_image",
    "lift3d.data.single_image2",
    "lift3d.geometry.implicit_volume",
    "lift3d.materials.no_material",
    "lift3d.materials.diffuse_with_point_light",
    "lift3d.background.solid_color",
    "lift3d.background.neural_environment_map",
    "lift3d.renderers.nerf_volume_renderer",
    "lift3d.renderers.patch_renderer",
    "lift3d.guidance.reference_mesh",
    "lift3d.prompt.dummy",
    "lift3d.systems.lift3d_system",
    "lift3d.export.mesh_exporter",
    "lift3d.geometry.tetrahedra_sdf_grid",
    "lift3d.geometry.implicit_sdf",
    "lift3d.geometry.custom_mesh",
    "lift3d.renderers.rasterizer",
    "lift3d.prompt.stable_diffusion",
    "lift3d.guidance.stable_diffusion",
    "lift3d.guidance.zero123",
    "lift3d.prompt.deep_floyd",
    "lift3d.guidance.deep_floyd",
    "lift3d.systems.aliases",
    "lift3d.systems.magic123",
    "lift3d.systems.image_condition",
    "lift3d.guidance.unified",
    "lift3d.materials.pbr",
    "lift3d.export.pbr_textures",
    "lift3d.renderers.neus_volume_renderer",
    "lift3d.data.multiview_images",
    "lift3d.data.multiview_camera",
    "lift3d.guidance.instructpix2pix",
    "lift3d.systems.instructnerf2nerf",
    "lift3d.systems.multiview_reconstruction",
    "lift3d.gan.triplane_generator",
    "lift3d.gan.discriminator",
    "lift3d.gan.eg3d_datamodule",
    "lift3d.gan.gan_system",
    "lift3d.guidance.vsd",
    "lift3d.systems.prolificdreamer",
    "lift3d.guidance.sdi",
    "lift3d.systems.sdi",
    "lift3d.materials.sd_latent_adapter",
    "lift3d.systems.latentnerf",
    "lift3d.geometry.volume_grid",
    "lift3d.background.textured_background",
    "lift3d.systems.sjc",
    "lift3d.systems.textmesh",
    "lift3d.guidance.controlnet",
    "lift3d.materials.hybrid_rgb_latent",
    "lift3d.renderers.gan_volume_renderer",
    "lift3d.systems.control4d",
    "lift3d.export.dummy_exporter",
    "lift3d.data.co3d",
)
_builtins_loaded = False


def _owner(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(name: str) -> Callable[[Type[T]], Type[T]]:
    """Class decorator: make `cls` findable as `name`. A name may be registered once."""

    def decorator(cls: Type[T]) -> Type[T]:
        existing = _REGISTRY.get(name)
        if existing is not None and _owner(existing) != _owner(cls):
            raise RegistryError(
                f"registered name '{name}' is already taken by {_owner(existing)}; "
                f"{_owner(cls)} cannot register it too. Pick another name for one of them."
            )
        _REGISTRY[name] = cls
        return cls

    return decorator


def load_builtins() -> None:
    """Import every built-in component module once."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def registered_names() -> list[str]:
    load_builtins()
    return sorted(_REGISTRY)


def _load_all() -> None:
    load_builtins()
    from lift3d.plugins import load_plugins

    load_plugins()


def is_registered(name: str) -> bool:
    """Whether a built-in or plugin component is registered as `name`."""
    if name not in _REGISTRY:
        _load_all()
    return name in _REGISTRY


def find(name: str) -> type:
    """Return the class registered as `name`, or raise an error listing the closest names."""
    if not is_registered(name):
        raise RegistryError(
            f"unknown registered name '{name}'.{did_you_mean(name, _REGISTRY, cutoff=0.5)} "
            f"Registered names: {', '.join(sorted(_REGISTRY))}."
        )
    return _REGISTRY[name]


def name_of(cls: type) -> str:
    """The name `cls` is registered under (the inverse of `find`); RegistryError if it has none.
    A class is looked up by identity: a subclass of a registered class is not registered."""
    for name, registered in _REGISTRY.items():
        if registered is cls:
            return name
    raise RegistryError(
        f"{_owner(cls)} is not a registered component: decorate it with "
        f"@lift3d.registry.register(\"<name>\") (in a built-in module or a custom/<plugin> package)."
    )
