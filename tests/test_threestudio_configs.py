"""Configs from threestudio and the USD repository (issue #14, docs/compat.md): the missing-component
mechanism (derived from the registry at run time), threestudio's resolvers / referenced defaults /
C() forms, loggers, fantasia3d's latent phase, the efficient data module, Adan, the zero123 normal
smoothness terms, the USD repository's names — and the configs of tests/data/threestudio_style/
validated and run end to end (train, test, export) with overrides only (tools/config_compat_table.py)."""
from __future__ import annotations

import math
import types
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lift3d.compat import check_missing_components, missing_names
from lift3d.compat import missing as missing_module
from lift3d.compat.loggers import build_loggers, validate_loggers
from lift3d.config import load_config, schedule_max
from lift3d.errors import ConfigError
from lift3d.registry import find, register
from lift3d.utils.schedule import C
from tools.config_compat_table import TinyModels, check_config, make_inputs, run_config

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "data" / "threestudio_style"
REPO = HERE.parent


# ------------------------------------------------------------------ missing components
def test_missing_component_is_named_until_a_module_registers_it(monkeypatch):
    name = "test-compat-system-that-arrives-later"
    monkeypatch.setitem(missing_module.MISSING_COMPONENTS, name,
                        missing_module.MissingComponent("a test system", "Test Method", 99))
    raw = OmegaConf.create({"data_type": "random-camera-datamodule", "system_type": name,
                            "system": {"prompt_processor": {"prompt": "???"}}})
    with pytest.raises(ConfigError, match=rf"system_type = '{name}' needs a test system of Test Method.*issue #99"):
        check_missing_components(raw)  # before the ??? prompt is asked for

    @register(name)
    class ArrivedLater:  # the component lands: the same config is no longer "missing"
        pass

    assert missing_names(raw) == []
    check_missing_components(raw)


def test_every_missing_name_and_value_of_a_config_is_listed(monkeypatch):
    for name in ("test-compat-geometry", "test-compat-background"):
        monkeypatch.setitem(missing_module.MISSING_COMPONENTS, name, missing_module.MissingComponent("x", "M", 98))
    monkeypatch.setitem(missing_module.MISSING_VALUES, ("renderer", "sampler_test_key", ("fancy",)),
                        missing_module.MissingComponent("a fancy sampler", "M", 98))
    raw = OmegaConf.create({"data_type": "random-camera-datamodule", "system_type": "dreamfusion-system", "system": {
        "geometry_type": "test-compat-geometry", "background_type": "test-compat-background",
        "renderer": {"base_renderer_type": "test-compat-geometry", "sampler_test_key": "fancy"},
        "guidance": {"guidance_type": "test-compat-geometry"}}})  # a guidance's mode is not a registered name
    found = [(key, name) for key, name, _ in missing_names(raw)]
    assert found == [("system.geometry_type", "test-compat-geometry"), ("system.background_type", "test-compat-background"),
                     ("system.renderer.base_renderer_type", "test-compat-geometry"),
                     ("system.renderer.sampler_test_key", "fancy")]
    with pytest.raises(ConfigError, match=r"cannot run yet: system.geometry_type = .*; also .*a fancy sampler of M"):
        check_missing_components(raw)


# ------------------------------------------------------------------ resolvers, referenced defaults, C()
def test_threestudio_resolvers_and_schedule_forms():
    assert schedule_max(0.0) == 0.0 and schedule_max([0, 0.0, 0.05, 100]) == 0.05
    assert schedule_max([100, 7.0, 5.0, 150, 10.0, 200]) == 10.0 and schedule_max([0.0, 2.0, 10]) == 2.0
    cfg = OmegaConf.create({"loss": {"a": 0.0, "b": [0, 0.0, 0.05, 100]},
                            "x": "${cmaxgt0:${loss.a}}", "y": "${cmaxgt0:${loss.b}}",
                            "z": "${cmaxgt0orcmaxgt0:${loss.a},${loss.b}}", "w": "${cmaxgt0orcmaxgt0:${loss.a},${loss.a}}"})
    assert (cfg.x, cfg.y, cfg.z, cfg.w) == (False, True, True, False)
    # threestudio's 6-entry form: linear 7 -> 5 over steps 100..150, then 5 -> 10 over 150..200
    sched = [100, 7.0, 5.0, 150, 10.0, 200]
    assert [C(sched, 0, s) for s in (0, 100, 125, 150, 175, 200, 300)] == [7.0, 7.0, 6.0, 5.0, 7.5, 10.0, 10.0]
    assert C([5000, 0.98, 0.5, 5001], 0, 4999) == 0.98 and C([5000, 0.98, 0.5, 5001], 0, 5001) == 0.5


def test_data_default_interpolations_resolve_to_the_data_modules_defaults():
    cfg = load_config(str(CONFIGS / "imagecondition_zero123nerf_refine.yaml"),
                      cli_args=["system.prompt_processor.prompt=a cat", "system.geometry_convert_from=null"])
    # random cameras declare single-image's default_* with the eval defaults: the eval camera is unchanged
    assert (cfg.data.eval_elevation_deg, cfg.data.eval_camera_distance, cfg.data.eval_fovy_deg) == (15.0, 1.5, 70.0)
    cfg = load_config(str(CONFIGS / "imagecondition_zero123nerf_refine.yaml"),
                      cli_args=["system.prompt_processor.prompt=a cat", "system.geometry_convert_from=null",
                                "data.default_elevation_deg=30"])
    assert cfg.data.eval_elevation_deg == 30.0


# ------------------------------------------------------------------ loggers
def test_loggers_wandb_disabled_enabled_and_not_installed(monkeypatch, tmp_path):
    from lift3d.compat import loggers

    assert build_loggers({"wandb": {"enable": False, "project": "threestudio", "name": "None"}}, tmp_path, "t") == []
    with pytest.raises(ConfigError, match="unknown config key 'system.loggers.tensorboard'"):
        validate_loggers({"tensorboard": {}}, "system.loggers")
    monkeypatch.setattr(loggers, "wandb_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"wandb.enable=true needs the wandb package.*pip install wandb"):
        build_loggers({"wandb": {"enable": True}}, tmp_path, "t")
    made = []
    monkeypatch.setattr(loggers, "wandb_installed", lambda: True)
    monkeypatch.setattr(loggers, "wandb_logger_class", lambda: lambda **kw: made.append(kw) or "logger")
    out = build_loggers({"wandb": {"enable": True, "project": "p", "name": "None"}}, tmp_path, "a_cat@1")
    assert out == ["logger"] and made[0]["project"] == "p" and made[0]["name"] == "a_cat@1"
    assert made[0]["save_dir"] == str(tmp_path)
    build_loggers({"wandb": {"enable": True, "name": "run-1"}}, tmp_path, "a_cat@1")
    assert made[1]["name"] == "run-1"


# ------------------------------------------------------------------ fantasia3d, efficient dreamfusion
def test_fantasia3d_scores_normal_and_mask_as_latents_then_normals_then_rgb():
    cls = find("fantasia3d-system")
    normal = torch.rand(2, 8, 8, 3)
    opacity = torch.rand(2, 8, 8, 1)
    out = {"comp_normal": normal, "opacity": opacity, "comp_rgb": torch.rand(2, 8, 8, 3)}
    fake = types.SimpleNamespace(cfg=types.SimpleNamespace(texture=False, latent_steps=1000), true_global_step=999)
    image, kwargs = cls.guidance_image(fake, out, {})
    assert kwargs == {"rgb_as_latents": True} and image.shape == (2, 8, 8, 4)
    assert torch.allclose(image[..., :3], normal * 2 - 1) and torch.equal(image[..., 3:], opacity)
    fake.true_global_step = 1000
    image, kwargs = cls.guidance_image(fake, out, {})
    assert kwargs == {} and image is normal
    fake.cfg.texture = True
    assert cls.guidance_image(fake, out, {})[0] is out["comp_rgb"]


def test_eff_lattice_batches_and_unmask_reproduce_a_linear_image():
    from lift3d.data.eff_random_camera import lattice
    from lift3d.systems.aliases import unmask

    dm = find("eff-random-camera-datamodule")({"height": 32, "width": 32, "sample_height": 9, "sample_width": 9,
                                               "batch_size": 2, "seed": 3})
    batch = dm.train_dataset.sample()
    rows, cols = batch["efficiency_rows"], batch["efficiency_cols"]
    row0, col0 = int(batch["efficiency_window"][0]), int(batch["efficiency_window"][1])
    assert batch["rays_d"].shape == (2, 9, 9, 3) and (batch["height"], batch["width"]) == (32, 32)
    assert 0 <= row0 <= 8 and rows[0] == row0 and rows[-1] == min(row0 + 24, 31) and torch.all(rows[1:] > rows[:-1])
    assert torch.equal(rows, lattice(32, 9, row0)) and torch.equal(cols, lattice(32, 9, col0))
    # the rays are the full image's rays at the lattice pixels: back in the camera frame, their columns
    c2w = batch["c2w"]
    local = torch.einsum("bhwc,bcd->bhwd", batch["rays_d"], c2w[:, :3, :3])  # camera-space directions
    focal = 0.5 * 32 / torch.tan(batch["fovy"] / 2)
    x_pix = local[..., 0] / -local[..., 2] * focal[:, None, None] + 16 - 0.5
    assert torch.allclose(x_pix[0, 0], cols.float(), atol=1e-3)
    # unmask: exact for a linear image inside the window, zero outside
    window = torch.tensor([4.0, 2.0, 24.0, 24.0])
    ys, xs = lattice(32, 9, 4).float(), lattice(32, 9, 2).float()
    f = lambda y, x: 0.01 * y - 0.02 * x + 0.5  # noqa: E731
    render = f(ys[:, None], xs[None, :])[None, :, :, None]  # [1,9,9,1]
    image = unmask(render, window, 32, 32)[0, :, :, 0]
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    inside = (yy >= 4) & (yy <= 28) & (xx >= 2) & (xx <= 26)
    assert torch.allclose(image[inside], f(yy, xx)[inside], atol=1e-5)
    # beyond one lattice cell (3 pixels) outside the window: zero (grid_sample's zero padding)
    assert torch.all(image[:, 30:] == 0) and torch.all(image[0] == 0) and float(image[10, 27]) != 0


def test_eff_sample_size_must_fit():
    with pytest.raises(ConfigError, match="data.sample_width = 40 does not fit data.width = 32"):
        find("eff-random-camera-datamodule").validate_config({"height": 32, "width": 32, "sample_height": 16, "sample_width": 40})


# ------------------------------------------------------------------ Adan, normal smoothness
def test_adan_follows_the_papers_update():
    from lift3d.systems.adan import Adan

    lr, wd, (b1, b2, b3), eps = 0.1, 0.01, (0.98, 0.92, 0.99), 1e-8
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Adan([p], lr=lr, weight_decay=wd, eps=eps)
    g1, g2 = torch.tensor([3.0, -0.5]), torch.tensor([1.0, 2.0])
    p.grad = g1.clone()
    opt.step()
    # step 1: no gradient change; bias-corrected moments m = g, n = g^2: the update is sign(g)
    expected = (torch.tensor([1.0, -2.0]) - lr * g1 / (g1.abs() + eps)) / (1 + lr * wd)
    assert torch.allclose(p.detach(), expected, atol=1e-6)
    p.grad = g2.clone()
    opt.step()
    d = g2 - g1
    m = (b1 * (1 - b1) * g1 + (1 - b1) * g2) / (1 - b1 ** 2)
    v = ((1 - b2) * d) / (1 - b2 ** 2)
    n = (b3 * (1 - b3) * g1 ** 2 + (1 - b3) * (g2 + b2 * d) ** 2) / (1 - b3 ** 2)
    expected = (expected - lr * (m + b2 * v) / (n.sqrt() + eps)) / (1 + lr * wd)
    assert torch.allclose(p.detach(), expected, atol=1e-6)


def test_adan_is_an_optimizer_name():
    from lift3d.systems.optim import validate_optimizer_config

    validate_optimizer_config(OmegaConf.create({"optimizer": {"name": "Adan", "args": {
        "lr": 0.01, "max_grad_norm": 5.0, "eps": 1e-8, "weight_decay": 1e-5, "foreach": False}}}))


def test_zero123_normal_smoothness_terms():
    from lift3d.systems.regularizers import REGULARIZERS

    n = torch.zeros(1, 2, 2, 3)
    n[0, 1, 0] = torch.tensor([1.0, 0.0, 0.0])  # one pixel differs from its neighbours above and to the right
    # vertical pairs: 1 differing of 2x(2x3) values -> mean over [1,1,2,3]; horizontal likewise
    assert math.isclose(float(REGULARIZERS["normal_smooth"].fn({"comp_normal": n})), 1 / 6 + 1 / 6, rel_tol=1e-6)
    a, b = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.6, 0.8]])
    assert math.isclose(float(REGULARIZERS["3d_normal_smooth"].fn({"normal": a, "normal_perturb": b})), 0.8 / 3, rel_tol=1e-6)


# ------------------------------------------------------------------ the USD repository's names
def test_usd_original_keys_translate_to_lift3d_meaning():
    from custom.usd.original_keys import to_lift3d_system

    image = to_lift3d_system({"stage": "coarse", "loss": {"lambda_vsd": 1.0, "lambda_lora": 0.0, "lambda_sparsity": 10.0},
                              "prompt_processor_type": "stable-diffusion-prompt-processor",
                              "prompt_processor": {"prompt": "", "front_threshold": 30.0}}, reference_term=True)
    assert image["loss"] == {"lambda_usd": 1.0, "lambda_usd_ref": 1.0, "lambda_sparsity": 10.0}
    assert image["prompt_processor_type"] == "dummy-prompt-processor" and image["prompt_processor"] == {"prompt": ""}
    text = to_lift3d_system({"stage": "geometry", "loss": {"lambda_vsd": [0, 1.0, 2.0, 10]}}, reference_term=False)
    assert text["loss"] == {"lambda_usd": [0, 1.0, 2.0, 10]} and text["guidance_input"] == "comp_normal"
    with pytest.raises(ConfigError, match="USD trains no LoRA"):
        to_lift3d_system({"loss": {"lambda_lora": 1.0}}, reference_term=False)
    with pytest.raises(ConfigError, match="system.stage = 'refine'"):
        to_lift3d_system({"stage": "refine"}, reference_term=False)


def test_usd_guidance_takes_the_original_layout(tiny_sd_path):
    cls = find("usd-guidance")
    cfg = cls.lift3d_layout({"pretrained_model_name_or_path": "/sd", "zero123_model_name_or_path": "/z123",
                             "image_path": "load/images/blocks_rgba.png"})
    assert (cfg.sd_model_name_or_path, cfg.pretrained_model_name_or_path, cfg.cond_image_path) == \
        ("/sd", "/z123", "load/images/blocks_rgba.png")
    assert (cfg.cond_elevation_deg, cfg.cond_azimuth_deg, cfg.cond_camera_distance) == (15.0, 90.0, 1.5)
    again = cls.lift3d_layout(cfg)  # idempotent
    assert (again.sd_model_name_or_path, again.pretrained_model_name_or_path) == ("/sd", "/z123")


def test_usd_random_camera_datamodule_has_the_originals_reference_camera():
    from lift3d.data.cameras import spherical_to_cartesian

    dm = find("usd-random-camera-datamodule")({
        "image_path": "load/images/blocks_rgba.png", "width": 16, "height": 16, "batch_size": 1,
        "camera_distance_range": [1.5, 1.5], "fovy_range": [39.6, 39.6], "elevation_range": [-10, 45],
        "eval_height": 8, "eval_width": 8, "n_test_views": 120})
    batch = dm.train_dataset.sample()
    expected = spherical_to_cartesian(torch.tensor([15.0]), torch.tensor([90.0]), torch.tensor([1.5]))
    assert torch.allclose(batch["c2w"][:, :3, 3], expected, atol=1e-5)
    assert torch.allclose(batch["fovy"], torch.tensor([0.6911112070083618]), atol=1e-6)
    assert batch["rgb"].shape == (1, 16, 16, 3) and batch["random_camera"]["rays_o"].shape == (1, 16, 16, 3)
    elevation = torch.cat([b["elevation"] for b in dm.test_dataloader()])
    assert elevation.shape == (120,) and elevation.min() >= -10 and elevation.max() <= 45


# ------------------------------------------------------------------ the test copies: validation
VALIDATES = ["dreamfusion-sd", "dreamfusion-sd-eff", "magic3d-coarse-sd", "magic3d-refine-sd", "fantasia3d",
             "fantasia3d-texture", "usd-patch", "usd-text-to-3D-patch", "usd-text-to-3D-geometry",
             "usd-text-to-3D-texture",
             # ProlificDreamer's variants (issue #15; unified-*: configs/experimental/unified-guidance/)
             "prolificdreamer-patch", "prolificdreamer-geometry", "prolificdreamer-texture", "prolificdreamer-hifa",
             "unified-prolificdreamer-hifa", "unified-magic123"]
# configs of methods other issues bring: they stop naming what is missing until it is registered, then validate
OTHERS = ["sjc", "prolificdreamer-propnet", "zero123", "stable-zero123", "imagecondition_zero123nerf_refine"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_sd_path, tiny_zero123_path):
    folder = tmp_path_factory.mktemp("compat-inputs")
    return TinyModels(sd=str(tiny_sd_path), zero123=str(tiny_zero123_path), deepfloyd_if="unused",
                      image=make_inputs(folder))


@pytest.mark.parametrize("name", VALIDATES)
def test_config_copies_validate_with_overrides_only(name, tiny):
    row = check_config(CONFIGS / f"{name}.yaml", tiny)
    assert row.outcome == "validates", row.detail


@pytest.mark.parametrize("name", OTHERS)
def test_other_methods_configs_validate_or_name_their_missing_component(name, tiny):
    row = check_config(CONFIGS / f"{name}.yaml", tiny)
    missing = missing_names(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    assert row.outcome == ("needs" if missing else "validates"), row.detail
    for key, value, entry in missing:
        assert f"{key} = '{value}'" in row.detail and f"issue #{entry.issue}" in row.detail


def test_debugging_snippet_stops_as_not_an_experiment(tiny):
    row = check_config(CONFIGS / "debugging-stablediffusion.yaml", tiny)
    assert row.outcome == ("needs" if missing_names(OmegaConf.load(CONFIGS / "debugging-stablediffusion.yaml"))
                           else "not an experiment"), row.detail


# ------------------------------------------------------------------ end to end: train, test, export
def _run(name, tiny, root, previous=None):
    row = run_config(CONFIGS / f"{name}.yaml", tiny, root / name, previous)
    assert row.outcome == "runs", row.detail
    return row


def _last_ckpt(row):
    return str(sorted((row.trial / "ckpts").glob("*.ckpt"))[-1])


def _losses(row):
    import csv

    with open(row.trial / "csv_logs/metrics.csv") as fp:
        return [r for r in csv.DictReader(fp) if r.get("train/loss")]


@pytest.mark.slow
def test_dreamfusion_sd_verbatim(tiny, tmp_path, one_torch_thread):
    row = _run("dreamfusion-sd", tiny, tmp_path)
    logged = _losses(row)
    assert len(logged) == 2 and all(float(r["train/loss_sds"]) > 0 for r in logged)
    assert list((row.trial / "save").glob("it2-export/*.obj")) and (row.trial / "save/it2-test.mp4").is_file()


@pytest.mark.slow
def test_magic3d_coarse_then_refine_verbatim(tiny, tmp_path, one_torch_thread):
    coarse = _run("magic3d-coarse-sd", tiny, tmp_path)
    refine = _run("magic3d-refine-sd", tiny, tmp_path, _last_ckpt(coarse))
    parsed = OmegaConf.load(refine.trial / "configs/parsed.yaml")
    assert parsed.system.refinement is True and parsed.system.geometry_type == "tetrahedra-sdf-grid"
    assert list((refine.trial / "save").glob("it2-export/*.obj"))


@pytest.mark.slow
def test_fantasia3d_geometry_then_texture_verbatim(tiny, tmp_path, one_torch_thread):
    geometry = _run("fantasia3d", tiny, tmp_path)
    texture = _run("fantasia3d-texture", tiny, tmp_path, _last_ckpt(geometry))
    assert OmegaConf.load(texture.trial / "configs/parsed.yaml").system.texture is True
    assert list((texture.trial / "save").glob("it2-export/*.obj"))


@pytest.mark.slow
def test_usd_repository_configs_verbatim(tiny, tmp_path, one_torch_thread):
    image = _run("usd-patch", tiny, tmp_path)
    logged = _losses(image)
    assert all(float(r["train/loss_usd"]) > 0 and float(r["train/loss_usd_ref"]) > 0 for r in logged)
    patch = _run("usd-text-to-3D-patch", tiny, tmp_path)
    geometry = _run("usd-text-to-3D-geometry", tiny, tmp_path, _last_ckpt(patch))
    texture = _run("usd-text-to-3D-texture", tiny, tmp_path, _last_ckpt(geometry))
    assert all(float(r["train/loss_usd"]) > 0 for r in _losses(texture))
    assert list((texture.trial / "save").glob("it2-export/*.obj"))


@pytest.mark.slow
def test_zero123_and_stable_zero123_verbatim(tiny, tmp_path, one_torch_thread):
    zero123 = _run("zero123", tiny, tmp_path)  # Adan, freq, normal smoothness (3D: return_normal_perturb)
    logged = _losses(zero123)
    assert all(float(r["train/loss_3d_normal_smooth"]) >= 0 and float(r["train/loss_rgb"]) > 0 for r in logged)
    stable = _run("stable-zero123", tiny, tmp_path)  # resolution milestones, cmaxgt0 resolvers
    assert list((stable.trial / "save").glob("it2-export/*.obj"))


# issue #16: SDI with Perp-Neg, co3d-datamodule (a synthetic CO3D sequence, reference losses before
# freq.ref_only_steps), the gradio demos' dummy-exporter (--export succeeds and writes nothing)
VERBATIM_16 = {"sdi": ("loss_sdi",), "co3d-imagecondition": ("loss_rgb", "loss_mask"),
               "gradio-latentnerf": ("loss_sds",), "gradio-sjc": ("loss_sds",)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VERBATIM_16))
def test_issue16_configs_verbatim(name, tiny, tmp_path, one_torch_thread):
    row = _run(name, tiny, tmp_path)
    logged = _losses(row)
    assert len(logged) == 2 and all(float(r[f"train/{loss}"]) > 0 for r in logged for loss in VERBATIM_16[name])
    meshes = [p for ext in ("obj", "glb", "ply") for p in (row.trial / "save").rglob(f"*.{ext}")]
    assert bool(meshes) == (not name.startswith("gradio-")), meshes  # dummy-exporter: no mesh


# ProlificDreamer's variants: HiFA's image-space VSD loss, the unified guidance's VSD mode (+ HiFA), the
# two-camera single-image data module; each weighs a loss that only exists when its piece runs
PROLIFICDREAMER_VARIANTS = {"prolificdreamer-hifa": ("loss_vsd_img", "loss_lora"),
                            "unified-prolificdreamer-hifa": ("loss_sd_img", "loss_train_phi"),
                            "unified-magic123": ("loss_sd", "loss_3d_sd")}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PROLIFICDREAMER_VARIANTS))
def test_prolificdreamer_variants_verbatim(name, tiny, tmp_path, one_torch_thread):
    row = _run(name, tiny, tmp_path)
    logged = _losses(row)
    assert logged and all(float(r[f"train/{loss}"]) > 0 for r in logged for loss in PROLIFICDREAMER_VARIANTS[name])
    assert list((row.trial / "save").glob("it2-export/*.obj"))


@pytest.mark.slow
def test_prolificdreamer_patch_geometry_texture_verbatim(tiny, tmp_path, one_torch_thread):
    patch = _run("prolificdreamer-patch", tiny, tmp_path)  # base-renderer keys beside the patch keys
    parsed = OmegaConf.load(patch.trial / "configs/parsed.yaml")
    assert parsed.system.renderer.num_samples_per_ray == 16 and "base_renderer" not in parsed.system.renderer
    geometry = _run("prolificdreamer-geometry", tiny, tmp_path, _last_ckpt(patch))  # DMTet from the NeRF
    texture = _run("prolificdreamer-texture", tiny, tmp_path, _last_ckpt(geometry))  # lambda_vsd_img: 0 weighs nothing
    assert all(float(r["train/loss_vsd"]) > 0 for r in _losses(texture))
    assert list((texture.trial / "save").glob("it2-export/*.obj"))
