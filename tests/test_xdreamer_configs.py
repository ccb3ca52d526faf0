"""custom/xdreamer/configs end to end through launch.py with the tiny SD model:
geometry stage from a coarse mesh (coarse [normal, mask] phase, then VAE-encoded normals; AMA on) →
appearance stage (chained with geometry_convert_from, CG-LoRA carried with lora_from) → resume →
--test → --export of the PBR textures. Checkpoints hold the CG-LoRA but no frozen model.
"""
from __future__ import annotations

import csv

import numpy as np

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import run_launch

GEOMETRY = "custom/xdreamer/configs/xdreamer-geometry.yaml"
TEXTURE = "custom/xdreamer/configs/xdreamer-texture.yaml"
BLOCKS = "load/shapes/blocks_union.ply"


def common(tiny_sd_path, root):
    return [
        f"system.guidance.pretrained_model_name_or_path={tiny_sd_path}",
        f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
        "system.prompt_processor.prompt=a red car", f"system.prompt_processor.cache_dir={root}/cache",
        f"exp_root_dir={root}", "use_timestamp=false", "trainer.enable_progress_bar=false",
        "data.batch_size=2", "data.width=32", "data.height=32", "data.eval_width=32", "data.eval_height=32",
        "data.n_val_views=1", "data.n_test_views=1", "system.geometry.isosurface_resolution=24",
    ]


def state(ckpt):
    return torch.load(ckpt, map_location="cpu", weights_only=False)


def lora_b(sd):
    return torch.cat([v.flatten() for k, v in sorted(sd.items()) if k.startswith("guidance_params.") and k.endswith(".B")])


def test_configs_parse_with_their_documented_keys():
    from lift3d.config import load_config

    for config in (GEOMETRY, TEXTURE):
        cfg = load_config(config, cli_args=["system.prompt_processor.prompt=a cat", "system.geometry_convert_from=x"])
        assert cfg.system.guidance_type == "xdreamer-guidance" and cfg.system.loss.lambda_ama == 0.1
        assert list(cfg.system.guidance.camera_fovy_range) == [25.7, 45.0]
    # the appearance stage needs the geometry stage's checkpoint
    assert OmegaConf.is_missing(OmegaConf.load(TEXTURE).system, "geometry_convert_from")


def test_geometry_then_texture_chain_resume_and_export(tmp_path, tiny_sd_path):
    import trimesh

    root = tmp_path / "out"
    base = common(tiny_sd_path, root)
    # geometry from a coarse mesh (the README's example): steps 0-1 coarse ([normal, mask] latents), 2-3 fine;
    # AMA from step 1; a large LoRA lr so that the carried weights are recognisable below
    run_launch(["--config", GEOMETRY, "--train", *base, "trainer.max_steps=4", "trainer.val_check_interval=4",
                f"system.geometry.shape_init=mesh:{BLOCKS}", "system.geometry.shape_init_params=0.6",
                "system.guidance.coarse_steps=2", "system.guidance.ama_start_step=1",
                "system.guidance.max_step_percent=[1, 0.5, 0.98, 2]",
                "system.optimizer.params.guidance_params.lr=0.01", "system.guidance.guidance_eval_interval=2"])
    geo_trial = root / "xdreamer-geometry" / "a_red_car"
    geo = state(geo_trial / "ckpts/last.ckpt")["state_dict"]
    assert not any(w in k for k in geo for w in ("unet", "vae", "text_encoder", "light"))
    b_geo = lora_b(geo)
    assert float(b_geo.abs().max()) >= 0.009  # AdamW's first steps move B by ~lr
    with open(geo_trial / "csv_logs/metrics.csv") as fp:
        rows = [r for r in csv.DictReader(fp) if r.get("train/loss_sds")]
    assert [float(r["train/coarse_phase"]) for r in rows] == [1.0, 1.0, 0.0, 0.0]
    assert float(rows[0]["train/loss_ama"]) == 0.0 and all(float(r["train/loss_ama"]) > 0 for r in rows[1:])
    assert (geo_trial / "save/it4-test.mp4").is_file()
    # guidance evaluation through CG-LoRA, in the coarse (latent) and the fine (VAE) phase
    assert (geo_trial / "save/it0-guidance.png").is_file() and (geo_trial / "save/it2-guidance.png").is_file()

    # appearance: DMTet copied and frozen, PBR texture field, CG-LoRA from the geometry stage
    tex_args = [*base, "trainer.max_steps=3", "trainer.val_check_interval=3", "checkpoint.every_n_train_steps=3",
                f"system.geometry_convert_from={geo_trial}", f"system.guidance.lora_from={geo_trial}",
                "system.guidance.ama_start_step=2", "system.geometry.pos_encoding_config.n_levels=4",
                "system.geometry.pos_encoding_config.log2_hashmap_size=12", "system.exporter.texture_size=64"]
    run_launch(["--config", TEXTURE, "--train", *tex_args])
    tex_trial = root / "xdreamer-texture" / "a_red_car"
    tex = state(tex_trial / "ckpts/last.ckpt")
    b_tex = lora_b(tex["state_dict"])
    # carried over: one AMA step (lr 1e-4) away from the geometry stage's weights
    assert float((b_tex - b_geo).abs().max()) <= 1.5e-4 and not torch.equal(b_tex, b_geo)
    assert torch.equal(tex["state_dict"]["geometry.sdf"], geo["geometry.sdf"])  # the mesh is fixed

    # resume: the CG-LoRA and its optimizer state come back from the checkpoint
    parsed, last = tex_trial / "configs/parsed.yaml", tex_trial / "ckpts/last.ckpt"
    run_launch(["--config", str(parsed), "--train", f"resume={last}", "trainer.max_steps=4"])
    resumed = state(last)
    assert resumed["global_step"] == 4
    adam = resumed["optimizer_states"][0]
    lora_group = next(g for g in adam["param_groups"] if g["name"] == "guidance_params")
    steps = {int(adam["state"][i]["step"]) for i in lora_group["params"] if i in adam["state"]}
    assert steps == {2}  # AMA steps 2 and 3: Adam's step count survived the resume
    assert float((lora_b(resumed["state_dict"]) - b_tex).abs().max()) <= 1.5e-4

    (tex_trial / "save/it4-test.mp4").unlink()
    run_launch(["--config", str(parsed), "--test", f"resume={last}"])  # no guidance: the adapters are skipped
    assert (tex_trial / "save/it4-test.mp4").is_file()
    run_launch(["--config", str(parsed), "--export", f"resume={last}"])
    folder = tex_trial / "save/it4-export"
    for name in ("model.obj", "model.mtl", "texture_kd.png", "texture_ks.png", "texture_nrm.png"):
        assert (folder / name).is_file(), name
    mtl = (folder / "model.mtl").read_text()
    assert "map_Ks texture_ks.png" in mtl and "map_Bump texture_nrm.png" in mtl
    tm = trimesh.load(folder / "model.obj", process=False, force="mesh")
    assert len(tm.faces) > 100 and tm.visual.uv is not None
    # the surface is the coarse mesh's (normalised: x ±0.6, y ±0.28, z ±0.5), not the default ellipsoid's
    from lift3d.geometry.sdf_init import load_init_mesh

    ref, _ = load_init_mesh(BLOCKS, 0.6)
    extent = np.abs(np.asarray(tm.vertices)).max(0)
    assert np.abs(extent - np.abs(ref).max(0)).max() < 0.1, extent  # the grid step is 0.1


@pytest.mark.parametrize("override, message", [
    ("system.guidance.lora_rnak=2", "unknown config key 'system.guidance.lora_rnak'"),
    ("system.guidance.coarse_weighting_strategy=linear", "coarse_weighting_strategy 'linear' is unknown"),
    ("system.material.environment_texture=load/lights/none.hdr", "environment_texture: HDR environment map"),
    ("system.loss.lambda_amma=0.1", "lambda_amma weighs no loss"),
])
def test_config_errors_are_found_before_any_work(tmp_path, tiny_sd_path, override, message):
    """What launch.py runs first (validate_experiment); launch.py turns these into one-line exits."""
    from lift3d.config import load_config
    from lift3d.errors import ConfigError

    config = TEXTURE if "material" in override else GEOMETRY
    extra = ["system.geometry_convert_from=nowhere"] if config == TEXTURE else []
    with pytest.raises(ConfigError, match=message):
        load_config(config, cli_args=[*common(tiny_sd_path, tmp_path), *extra, override], validate=True)
