"""USD configs (custom/usd/configs/) and data module: the spec's values in the YAMLs; usd-image-datamodule's
reference camera, batches and test turntable; every config end to end through launch.py with tiny
models — image-to-3D (train with batch 2 + test pass writing the 120-view RGBA dataset and its
transforms.json) and the text-to-3D chain patch -> geometry -> texture -> --export."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lift3d.config import load_config, validate_experiment
from lift3d.data.cameras import spherical_to_cartesian
from lift3d.errors import ConfigError
from lift3d.registry import find

from tests.helpers import REPO, only_trial, run_launch

CONFIGS = REPO / "custom/usd/configs"
SHORT = ["trainer.max_steps=3", "checkpoint.every_n_train_steps=3", "trainer.val_check_interval=3",
         "trainer.enable_progress_bar=false"]
SMALL_GRID = ["system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=12"]
SMALL_PATCH_NERF = [*SMALL_GRID, "system.renderer.base_renderer.num_samples_per_ray=24", "system.renderer.patch_size=16",
                    "system.renderer.global_downsample=2"]


def rows(trial):
    with open(trial / "csv_logs/metrics.csv") as fp:
        return [r for r in csv.DictReader(fp) if r.get("train/loss")]


def state_dict(ckpt):
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


# ------------------------------------------------------------------ the YAMLs hold the spec's values (usd.md §2-3)
def test_configs_hold_the_spec_values():
    img = OmegaConf.load(CONFIGS / "usd-patch.yaml")
    g, d = img.system.guidance, img.data
    assert (img.data_type, img.system_type, img.system.renderer_type) == ("usd-image-datamodule", "usd-system", "patch-renderer")
    assert img.system.guidance_type == "usd-image-guidance"
    assert (g.guidance_scale, g.usd_lambda, g.unconditional, g.min_step_percent) == (7.5, 0.0, "sd", 0.02)
    assert list(g.max_step_percent) == [5000, 0.98, 0.5, 5001] and g.reference_resolution == 512
    assert (d.default_elevation_deg, d.default_camera_distance, d.default_fovy_deg) == (15.0, 1.5, 39.6)
    assert list(d.random_camera.elevation_range) == [-10, 45] and list(d.test_elevation_range) == [-10, 45]
    assert d.random_camera.n_test_views == 120 and img.system.save_rgba_dataset
    assert img.system.renderer.base_renderer.num_samples_per_ray == 512 and img.system.renderer.patch_size == 128
    loss = img.system.loss
    assert (loss.lambda_usd, loss.lambda_usd_ref, loss.lambda_sparsity, loss.lambda_rgb) == (1.0, 1.0, 10.0, 0.0)
    assert list(loss.lambda_opaque) == [10000, 0.0, 1000.0, 10001] and img.trainer.max_steps == 15000
    assert img.system.optimizer.name == "AdamW" and img.system.optimizer.params["geometry.encoding"].lr == 0.01

    patch = OmegaConf.load(CONFIGS / "usd-text-to-3D-patch.yaml").system
    assert (patch.guidance_type, patch.guidance.usd_lambda, patch.guidance.guidance_scale) == ("usd-text-guidance", 0.0, 7.5)
    assert patch.background_type == "neural-environment-map-background" and patch.background.random_aug_prob == 0.5
    assert (patch.prompt_processor.front_threshold, patch.prompt_processor.overhead_threshold) == (30.0, 60.0)
    geo = OmegaConf.load(CONFIGS / "usd-text-to-3D-geometry.yaml").system
    assert (geo.guidance_type, geo.guidance.guidance_scale, geo.guidance_input) == ("stable-diffusion-guidance", 100.0, "comp_normal")
    assert (geo.geometry_type, geo.geometry.isosurface_resolution, geo.geometry.geometry_only) == ("tetrahedra-sdf-grid", 128, True)
    assert (geo.geometry.convert_threshold, geo.geometry.convert_sdf) == (25.0, "clamp")
    assert geo.loss.lambda_normal_consistency == geo.loss.lambda_laplacian_smoothness == 1.0e4
    assert geo.optimizer.args.lr == 0.005
    assert list(geo.guidance.max_step_percent) == [5000, 0.98, 0.5, 5001]  # per stage, as the original
    tex = OmegaConf.load(CONFIGS / "usd-text-to-3D-texture.yaml").system
    assert (tex.guidance_type, tex.guidance.usd_lambda, tex.geometry.fix_geometry) == ("usd-text-guidance", 0.0, True)
    assert list(tex.guidance.max_step_percent) == [5000, 0.98, 0.5, 5001] and not tex.background.get("random_aug")
    assert not tex.geometry_convert_inherit_texture


@pytest.mark.parametrize("name", ["usd-patch", "usd-text-to-3D-patch", "usd-text-to-3D-geometry", "usd-text-to-3D-texture"])
def test_configs_validate(name):
    """Every section and key is known (models are not looked up when not fitting)."""
    overrides = ["system.prompt_processor.prompt=a cat"] if "text" in name else []
    if name.endswith(("geometry", "texture")):  # mandatory (???): the previous stage; none to convert here
        overrides.append("system.geometry_convert_from=null")
    validate_experiment(load_config(str(CONFIGS / f"{name}.yaml"), cli_args=overrides), fitting=False)


# ------------------------------------------------------------------ usd-image-datamodule
def test_image_datamodule_reference_camera_batches_and_test_turntable():
    dm = find("usd-image-datamodule")({
        "image_path": "load/images/blocks_rgba.png", "height": 16, "width": 16, "batch_size": 3,
        "default_elevation_deg": 15.0, "default_azimuth_deg": 45.0, "default_camera_distance": 1.5, "default_fovy_deg": 39.6,
        "test_elevation_range": [-10, 45], "test_elevation_seed": 7,
        "random_camera": {"height": 8, "width": 8, "batch_size": 2, "eval_height": 8, "eval_width": 8,
                          "eval_camera_distance": 1.5, "eval_fovy_deg": 39.6, "n_test_views": 120},
    })
    batch = dm.train_dataset.sample()
    assert batch["rgb"].shape == (3, 16, 16, 3) and batch["mask"].shape == (3, 16, 16, 1)
    assert batch["elevation"].tolist() == [15.0] * 3 and batch["azimuth"].tolist() == [45.0] * 3
    assert torch.allclose(batch["fovy"], torch.deg2rad(torch.tensor([39.6] * 3)))
    expected = spherical_to_cartesian(torch.tensor([15.0]), torch.tensor([45.0]), torch.tensor([1.5]))
    assert torch.allclose(batch["c2w"][:, :3, 3], expected.expand(3, 3), atol=1e-6)
    assert batch["random_camera"]["rays_o"].shape == (2, 8, 8, 3)

    test = dm.test_dataloader()
    batches = list(test)
    elevation = torch.cat([b["elevation"] for b in batches])
    azimuth = torch.cat([b["azimuth"] for b in batches])
    assert elevation.shape == (120,) and elevation.min() >= -10 and elevation.max() <= 45 and elevation.std() > 10
    assert torch.allclose(torch.remainder(azimuth, 360.0), torch.arange(120) * 3.0)
    # a view's elevation does not depend on the batch it comes in
    assert torch.equal(dm.test_dataset.collate([5, 77])["elevation"], elevation[[5, 77]])
    c2w = torch.cat([b["c2w"] for b in batches])
    pos = spherical_to_cartesian(elevation, azimuth, torch.full((120,), 1.5))
    assert torch.allclose(c2w[:, :3, 3], pos, atol=1e-5)

    # without test_elevation_range: single-image-datamodule's fixed-elevation turntable
    base = find("usd-image-datamodule")({"image_path": "load/images/blocks_rgba.png",
                                         "random_camera": {"eval_elevation_deg": 15.0, "n_test_views": 4}})
    assert base.test_dataset.collate([0, 1, 2])["elevation"].tolist() == [15.0] * 3
    with pytest.raises(ConfigError, match="data.test_elevation_range"):
        find("usd-image-datamodule")({"image_path": "load/images/blocks_rgba.png", "test_elevation_range": [45, -10]})


# ------------------------------------------------------------------ end to end through launch.py
def test_usd_image_to_3d_config_writes_an_rgba_dataset(tmp_path, tiny_zero123_path, tiny_sd_path):
    root = tmp_path / "out"
    run_launch([
        "--config", str(CONFIGS / "usd-patch.yaml"), "--train", f"exp_root_dir={root}", *SHORT, *SMALL_PATCH_NERF,
        "data.width=32", "data.height=32", "data.batch_size=2", "data.random_camera.width=32",
        "data.random_camera.height=32", "data.random_camera.batch_size=2", "data.random_camera.eval_width=16",
        "data.random_camera.eval_height=16", "data.random_camera.n_val_views=1",
        f"system.guidance.pretrained_model_name_or_path={tiny_zero123_path}",
        f"system.guidance.sd_model_name_or_path={tiny_sd_path}", "system.guidance.reference_resolution=null",
        f"system.guidance.cache_dir={tmp_path / 'cache'}", "system.guidance.guidance_eval_interval=2",
    ])
    trial = only_trial(root, "usd-patch")
    assert (trial / "save/it2-guidance.png").is_file()  # render | noisy | x0 | denoised of the USD step
    logged = rows(trial)
    assert [int(r["step"]) for r in logged] == [0, 1, 2]
    assert all(float(r["train/loss_usd"]) > 0 and float(r["train/loss_usd_ref"]) > 0 for r in logged)
    assert all(not r.get("train/loss_rgb") for r in logged)  # lambda_rgb 0: not computed
    state = state_dict(trial / "ckpts/last.ckpt")
    assert not any(w in k for k in state for w in ("unet", "vae", "image_encoder", "guidance"))

    dataset = trial / "save/it3-test-rgba"
    meta = json.loads((dataset / "transforms.json").read_text())
    frames = meta["frames"]
    assert len(frames) == 120 and len(list((dataset / "images").glob("*.png"))) == 120
    fl = 0.5 * 16 / math.tan(math.radians(39.6) / 2)
    assert (meta["w"], meta["h"], meta["cx"], meta["cy"]) == (16, 16, 8.0, 8.0)
    assert meta["fl_x"] == pytest.approx(fl) and meta["camera_angle_x"] == pytest.approx(math.radians(39.6), rel=1e-5)
    elevation = torch.tensor([f["elevation_deg"] for f in frames])
    azimuth = torch.tensor([f["azimuth_deg"] for f in frames])
    assert elevation.min() >= -10 and elevation.max() <= 45 and elevation.std() > 10
    assert torch.allclose(torch.remainder(azimuth, 360.0), torch.arange(120) * 3.0, atol=1e-4)
    c2w = torch.tensor([f["transform_matrix"] for f in frames])  # [120,4,4] OpenGL camera-to-world
    pos = spherical_to_cartesian(elevation, azimuth, torch.full((120,), 1.5))
    assert torch.allclose(c2w[:, :3, 3], pos, atol=1e-4)
    forward = -c2w[:, :3, 2]  # the camera looks down its -z axis, at the origin
    assert torch.allclose(forward, -pos / pos.norm(dim=-1, keepdim=True), atol=1e-4)
    assert torch.allclose(c2w[:, :3, :3].transpose(1, 2) @ c2w[:, :3, :3], torch.eye(3).expand(120, 3, 3), atol=1e-5)
    image = np.asarray(Image.open(dataset / frames[0]["file_path"]))
    assert image.shape == (16, 16, 4)
    # the initial density blob: opaque in the middle, transparent at the border
    assert image[8, 8, 3] > 200 and image[0, 0, 3] < image[8, 8, 3]


def test_usd_text_to_3d_chain_and_export(tmp_path, tiny_sd_path):
    root = tmp_path / "out"
    common = [
        f"exp_root_dir={root}", *SHORT, "data.width=32", "data.height=32", "data.eval_width=32",
        "data.eval_height=32", "data.n_val_views=1", "data.n_test_views=2", "system.prompt_processor.prompt=lib:pineapple",
        f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
        f"system.prompt_processor.cache_dir={tmp_path / 'cache'}",
    ]
    # 1: NeRF + USD text guidance (patch renderer)
    run_launch(["--config", str(CONFIGS / "usd-text-to-3D-patch.yaml"), "--train", *common, *SMALL_PATCH_NERF])
    nerf = only_trial(root, "usd-text-to-3D-patch")
    assert all(float(r["train/loss_usd"]) > 0 and float(r["train/usd_lambda"]) == 0.0 for r in rows(nerf))
    # stages 2 and 3 anneal t at their own step 5000 ([5000, 0.98, 0.5, 5001]); here at their own step 2: a
    # chained stage is a new run that counts from 0 (stage 1 ended at step 3), so max t is 980 at steps 0-1
    anneal = "system.guidance.max_step_percent=[1, 0.98, 0.5, 2]"
    # 2: DMTet geometry, SDS on normals; the 3-step NeRF's blob peaks at a density of about 10, not 25
    run_launch(["--config", str(CONFIGS / "usd-text-to-3D-geometry.yaml"), "--train", *common,
                f"system.geometry_convert_from={nerf}", "system.geometry.isosurface_resolution=16",
                "system.geometry.convert_threshold=5.0", anneal])
    geo = only_trial(root, "usd-text-to-3D-geometry")
    assert all(float(r["train/loss_sds"]) > 0 and float(r["train/loss_normal_consistency"]) > 0
               and float(r["train/loss_laplacian_smoothness"]) > 0 for r in rows(geo))
    assert [(int(r["step"]), float(r["train/max_step"])) for r in rows(geo)] == [(0, 980.0), (1, 980.0), (2, 500.0)]
    geo_state = state_dict(geo / "ckpts/last.ckpt")
    assert not any(k.startswith("geometry.encoding") for k in geo_state)  # geometry only
    # 3: fixed surface, fresh texture field, USD text guidance; then --export
    run_launch(["--config", str(CONFIGS / "usd-text-to-3D-texture.yaml"), "--train", *common, *SMALL_GRID,
                f"system.geometry_convert_from={geo / 'ckpts/last.ckpt'}", "system.geometry.isosurface_resolution=16",
                "system.exporter.texture_size=64", anneal])
    tex = only_trial(root, "usd-text-to-3D-texture")
    assert all(float(r["train/loss_usd"]) > 0 for r in rows(tex))
    assert [(int(r["step"]), float(r["train/max_step"])) for r in rows(tex)] == [(0, 980.0), (1, 980.0), (2, 500.0)]
    tex_state = state_dict(tex / "ckpts/last.ckpt")
    assert torch.equal(tex_state["geometry.sdf"], geo_state["geometry.sdf"])  # the stage-2 surface, unchanged
    assert torch.equal(tex_state["geometry.deformation"], geo_state["geometry.deformation"])
    run_launch(["--config", str(tex / "configs/parsed.yaml"), "--export", f"resume={tex / 'ckpts/last.ckpt'}"])
    export = tex / "save/it3-export"
    obj = (export / "model.obj").read_text()
    assert obj.count("\nf ") > 10 and "mtllib" in obj and (export / "texture_kd.png").is_file()
