"""Registry, strict configs, schedules, update_step propagation, optimizer parsing."""
from dataclasses import dataclass, field

import pytest
import torch
from omegaconf import OmegaConf

import lift3d
from lift3d.config import load_config, parse_overrides, parse_structured
from lift3d.errors import ConfigError, RegistryError
from lift3d.systems.optim import make_optimizer, make_scheduler
from lift3d.utils.base import BaseModule, BaseObject
from lift3d.utils.schedule import C


def test_registry_roundtrip_and_duplicates():
    @lift3d.register("test-core-thing")
    class Thing:
        pass

    assert lift3d.find("test-core-thing") is Thing

    with pytest.raises(RegistryError) as err:
        @lift3d.register("test-core-thing")
        class Other:
            pass
    assert "test-core-thing" in str(err.value) and "Thing" in str(err.value) and "Other" in str(err.value)


def test_unknown_name_suggests_close_names():
    with pytest.raises(RegistryError) as err:
        lift3d.find("implicit-volum")
    assert "Did you mean: implicit-volume" in str(err.value)


@dataclass
class _Inner:
    lr: float = 0.1


@dataclass
class _Outer:
    a: int = 1
    inner: _Inner = field(default_factory=_Inner)
    free: dict = field(default_factory=dict)


def test_parse_structured_rejects_unknown_nested_key():
    cfg = parse_structured(_Outer, {"a": 2, "inner": {"lr": 0.5}, "free": {"anything": 1}})
    assert cfg.a == 2 and cfg.inner.lr == 0.5 and cfg.free.anything == 1
    with pytest.raises(ConfigError) as err:
        parse_structured(_Outer, {"inner": {"lrr": 0.5}}, path="system.guidance", component="guidance 'x'")
    msg = str(err.value)
    assert "system.guidance.inner.lrr" in msg and "guidance 'x'" in msg and "Valid keys: lr" in msg


def test_parse_structured_type_error_names_key():
    with pytest.raises(ConfigError) as err:
        parse_structured(_Outer, {"a": "many"}, path="system", component="c")
    assert "'system.a'" in str(err.value)


@pytest.mark.parametrize("bad", ["trainer.max_steps", "--foo=1", "=3", "a b=1"])
def test_bad_override_syntax(bad):
    with pytest.raises(ConfigError) as err:
        parse_overrides([bad])
    assert "key=value" in str(err.value)


def test_load_config_merges_overrides_and_resolves(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text('name: n\ntag: "${rmspace:${system.prompt},_}"\nsystem: {prompt: a b}\n')
    cfg = load_config(str(path), cli_args=["system.prompt=a red cube", "seed=3"])
    assert cfg.tag == "a_red_cube" and cfg.seed == 3
    with pytest.raises(ConfigError) as err:
        load_config(str(path), cli_args=["sed=3"])
    assert "unknown config key 'sed'" in str(err.value) and "seed" in str(err.value)


@pytest.mark.parametrize(
    "value, step, expected",
    [
        (0.5, 100, 0.5),
        ([1.0, 3.0, 100], 50, 2.0),  # [v0, v1, end]
        ([10, 1.0, 3.0, 20], 5, 1.0),  # before start
        ([10, 1.0, 3.0, 20], 15, 2.0),
        ([10, 1.0, 3.0, 20], 99, 3.0),
        ([5000, 0.98, 0.5, 5001], 4999, 0.98),  # USD max_step_percent
        ([5000, 0.98, 0.5, 5001], 5001, 0.5),
        ([0, 0.0, 1.0, 10, 5.0, 20], 15, 3.0),  # piecewise
        ([0, 0.0, 1.0, 10, 5.0, 20], 25, 5.0),
    ],
)
def test_schedule_forms(value, step, expected):
    assert C(value, 0, step) == pytest.approx(expected)


def test_schedule_float_end_uses_epoch():
    assert C([0.0, 1.0, 4.0], 2, 10_000) == pytest.approx(0.5)


class _Counter(BaseObject):
    def configure(self):
        self.seen = []

    def update_step(self, epoch, global_step):
        self.seen.append(global_step)


class _Leaf(BaseModule):
    def configure(self):
        self.seen = []
        self.lin = torch.nn.Linear(2, 2)

    def update_step(self, epoch, global_step):
        self.seen.append(global_step)


class _Root(BaseModule):
    def configure(self):
        self.leaf = _Leaf()
        self.nested = torch.nn.Sequential(_Leaf())
        self.plain = _Counter()  # not an nn.Module: still reached
        self.also_plain = self.plain  # reached once only


def test_update_step_reaches_modules_and_plain_objects_once():
    root = _Root()
    root.do_update_step(0, 7)
    assert root.leaf.seen == [7] and root.nested[0].seen == [7] and root.plain.seen == [7]


def test_optimizer_dotted_groups_and_scheduler():
    root = _Root()
    cfg = OmegaConf.create(
        {"name": "Adam", "args": {"lr": 0.5}, "params": {"leaf.lin": {"lr": 0.01}, "nested": {"lr": 0.002}}}
    )
    opt = make_optimizer(root, cfg)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.002]
    assert sum(len(g["params"]) for g in opt.param_groups) == 4
    sched = make_scheduler(
        OmegaConf.create({"name": "SequentialLR", "interval": "step", "args": {"milestones": [2]},
                          "schedulers": [{"name": "ConstantLR", "args": {"factor": 0.5, "total_iters": 2}},
                                         {"name": "ExponentialLR", "args": {"gamma": 0.5}}]}),
        opt,
    )
    assert sched["interval"] == "step"
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)
    with pytest.raises(ConfigError) as err:
        make_optimizer(root, OmegaConf.create({"name": "Adam", "params": {"leaf.nope": {"lr": 1}}}))
    assert "leaf.nope" in str(err.value)


def test_saved_images_keep_their_values(tmp_path):
    import numpy as np
    from PIL import Image

    from lift3d.utils.saving import image_row, save_image

    grey = torch.full((4, 4, 3), 0.5)
    row = image_row([grey, torch.zeros(4, 4, 1)])
    save_image(tmp_path / "x.png", row)  # uint8 in: unchanged
    save_image(tmp_path / "y.png", grey)  # float in: scaled
    x = np.asarray(Image.open(tmp_path / "x.png"))
    assert x.shape == (4, 8, 3) and x[0, 0, 0] == 128 and x[0, 7, 0] == 0
    assert np.asarray(Image.open(tmp_path / "y.png"))[0, 0, 0] == 128


def test_plugins_are_discovered_from_custom_and_plugin_path(tmp_path, monkeypatch):
    import lift3d.plugins as plugins

    pkg = tmp_path / "myplugins" / "hello"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import lift3d\n"
        "from lift3d.guidance.base import BaseGuidance\n"
        "@lift3d.register('test-hello-guidance')\n"
        "class Hello(BaseGuidance):\n"
        "    produces = ('loss_hello',)\n"
    )
    monkeypatch.setenv("LIFT3D_PLUGIN_PATH", str(tmp_path / "myplugins"))
    monkeypatch.setattr(plugins, "_loaded", False)
    cls = lift3d.find("test-hello-guidance")  # not registered yet: find loads the plugins
    assert cls.__name__ == "Hello" and cls.produces == ("loss_hello",)
    assert str(plugins.REPO_ROOT / "custom") in [str(p) for p in plugins.plugin_dirs()]


def test_import_lift3d_is_light():
    import subprocess
    import sys

    code = "import sys, lift3d; print(sorted(m for m in ('diffusers','transformers','pytorch_lightning','trimesh') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
