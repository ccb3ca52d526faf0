"""The component contract declared on base classes (issue #13 item 3): registry.name_of,
validate_config(cls, cfg, path) with the real config path, BaseGuidance's trainable_modules /
reference_view_losses defaults, check_schedule_range."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lift3d.config import parse_structured
from lift3d.errors import ConfigError, RegistryError
from lift3d.guidance.base import BaseGuidance
from lift3d.registry import find, is_registered, name_of, registered_names
from lift3d.utils.base import BaseModule, BaseObject
from lift3d.utils.schedule import check_schedule_range

REPO = Path(__file__).resolve().parents[1]
CAPSULE = str(REPO / "load/shapes/capsule_bicolor.ply")


# ------------------------------------------------------------------ registry
def test_name_of_round_trips_every_registered_name():
    for name in registered_names():
        cls = find(name)
        assert find(name_of(cls)) is cls  # a class registered twice reports one of its names
    assert name_of(find("implicit-volume")) == "implicit-volume"
    assert is_registered("implicit-volume") and not is_registered("no-such-component")


def test_name_of_an_unregistered_class_is_a_clear_error():
    class NotRegistered(BaseObject):
        pass

    with pytest.raises(RegistryError, match=r"NotRegistered is not a registered component: .*@lift3d\.registry\.register"):
        name_of(NotRegistered)


def test_no_module_reads_the_private_table():
    offenders = []
    for root in ("lift3d", "custom", "tools", "benchmarks", "tests", "extern"):
        for path in (REPO / root).rglob("*.py"):
            if path.name != "registry.py" and "_REGISTRY" in path.read_text(encoding="utf-8"):
                offenders.append(str(path.relative_to(REPO)))
    offenders = [p for p in offenders if p != "tests/test_component_contract.py"]
    assert offenders == []


# ------------------------------------------------------------------ validate_config(cls, cfg, path)
def test_base_validate_config_accepts_everything():
    BaseObject.validate_config(parse_structured(BaseObject.Config, {}), "anywhere")
    BaseModule.validate_config(parse_structured(BaseModule.Config, {}), "anywhere")


@pytest.mark.parametrize("name, cfg, key", [
    ("implicit-volume", {"density_bias": "blob_nope"}, "density_bias"),
    ("implicit-sdf", {"isosurface_method": "nope"}, "isosurface_method"),
    ("tetrahedra-sdf-grid", {"convert_sdf": "nope"}, "convert_sdf"),
    ("custom-mesh", {"shape_init": "sphere"}, "shape_init"),
    ("implicit-sdf", {"shape_init": "mesh:" + CAPSULE, "shape_init_mesh_up": "+q"}, "shape_init_mesh_up"),
])
def test_geometry_messages_name_the_real_path(name, cfg, key):
    cls = find(name)
    path = "stages.second.geometry"
    with pytest.raises(ConfigError, match=rf"^{path}\.{key}\b") as err:
        cls.validate_config(parse_structured(cls.Config, cfg, path), path)
    assert "system.geometry" not in str(err.value)


def test_system_passes_each_component_its_real_path():
    """A system validated under another path (e.g. a stage of a chained experiment) hands that
    path down: `<path>.geometry`, `<path>.renderer.base_renderer`, `<path>.exporter`, ..."""
    system = find("lift3d-system")
    base = {"geometry_type": "implicit-volume", "renderer_type": "nerf-volume-renderer",
            "guidance_type": "reference-mesh-guidance", "guidance": {"mesh_path": CAPSULE}}
    cases = [
        ({"geometry": {"normal_type": "nope"}}, r"^stage2\.geometry\.normal_type"),
        ({"renderer_type": "patch-renderer", "renderer": {"base_renderer_type": "neus-volume-renderer",
                                                          "base_renderer": {"num_samples_per_ray": 1}}},
         r"^stage2\.renderer\.base_renderer\.num_samples_per_ray"),
        ({"exporter": {"fmt": "stl"}}, r"^stage2\.exporter\.fmt"),
        ({"material_type": "pbr-material", "material": {"environment_scale": 0.0}}, r"^stage2\.material\.environment_scale"),
    ]
    for extra, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            system.validate_config(OmegaConf.create({**base, **extra}), path="stage2", fitting=False)


def test_a_component_type_must_derive_from_its_base():
    system = find("lift3d-system")
    cfg = {"geometry_type": "implicit-volume", "renderer_type": "nerf-volume-renderer",
           "guidance_type": "implicit-volume"}
    with pytest.raises(ConfigError, match=r"system\.guidance_type = 'implicit-volume' is not a guidance .*BaseGuidance"):
        system.validate_config(OmegaConf.create(cfg))


def test_data_module_messages_name_the_real_path():
    cls = find("random-camera-datamodule")
    with pytest.raises(ConfigError, match=r"^stage2\.data\.fovy_range = \[40\.0, 200\.0\] leaves \[-inf, 179\]"):
        cls.validate_config({"fovy_range": [40, 200]}, "stage2.data")


# ------------------------------------------------------------------ BaseGuidance defaults
def test_guidance_contract_defaults():
    assert BaseGuidance.reference_view_losses == ()
    assert BaseGuidance.produces == ()

    class Plain(BaseGuidance):
        pass

    guidance = Plain({})
    assert guidance.trainable_modules() is None
    assert type(guidance).reference_view_losses == ()


# ------------------------------------------------------------------ check_schedule_range
@pytest.mark.parametrize("value", [0, 1, 0.5, [5000, 0.98, 0.5, 5001], [0.02, 0.5, 1000], [0, 0.0, 1.0, 10, 0.5, 20],
                                   OmegaConf.create([100, 0.9, 0.1, 200])])
def test_schedule_range_accepts(value):
    check_schedule_range(value, "system.guidance.max_step_percent")


@pytest.mark.parametrize("value, pattern", [
    (1.5, r"^k = 1\.5 leaves \[0, 1\]: give fractions\.$"),
    (-0.1, r"^k = -0\.1 leaves \[0, 1\]"),
    ([0, 0.5, 1.2, 100], r"^k = \[0, 0\.5, 1\.2, 100\] leaves \[0, 1\]"),  # only the end is out of range
    ([0, -0.5, 0.5, 100], r"^k = \[0, -0\.5, 0\.5, 100\] leaves"),      # only the start is
    ([0, 0.5, 0.5, 10, 2.0, 20], r"leaves \[0, 1\]"),                     # a later knot
    (OmegaConf.create([0, 0.5, 1.5, 10]), r"^k = \[0, 0\.5, 1\.5, 10\] leaves"),
    (float("nan"), r"leaves \[0, 1\]"),
    ([0.5, 0.6], r"^k: schedule \[0\.5, 0\.6\] has 2 entries"),
    ("high", r"^k: cannot schedule 'high'"),
    (None, r"^k is null"),
])
def test_schedule_range_rejects(value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        check_schedule_range(value, "k", hint="give fractions.")


def test_schedule_range_other_bounds():
    check_schedule_range([0, 2.0, 7.5, 100], "k", low=0.0, high=7.5)
    with pytest.raises(ConfigError, match=r"^k = 8 leaves \[0, 7\.5\]\.$"):
        check_schedule_range(8, "k", low=0.0, high=7.5)
