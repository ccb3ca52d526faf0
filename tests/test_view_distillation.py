"""USD view distillation (custom/usd/view_distillation, docs/methods/usd.md §4) on tiny random models.

- the rectified Zero-1-to-3 prediction equals w (eps_zero123 - eps_sd("")) + eps_sd("") computed
  by calling the two UNets directly; sampling is deterministic and batch-independent;
- DreamBooth-LoRA: a fresh adapter (B = 0) leaves the UNet unchanged; training lowers the loss;
  the saved diffusers-format file reloads to the same UNet;
- DDIM schedules from t = 200 / 999 (numbers); SDEdit at noise_timestep 0 is the VAE round trip,
  at 200 it calls the UNet at exactly the scheduled timesteps;
- the command end to end after a USD image-to-3D run (usd-patch.yaml, tiny models): novel views,
  class images, LoRA a/b, refined dataset with the input's poses, NeuS mesh; a rerun skips every
  step; a deleted done marker redoes that step only; bad inputs and unknown keys fail before any
  work with exit code 2 and the fix.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lift3d.models.ddim import ddim_timesteps
from tests.helpers import REPO, only_trial, run_launch

IMAGE = str(REPO / "load/images/blocks_rgba.png")
REF = (15.0, 45.0, 1.5)  # the camera load/images/blocks_rgba.png was rendered from


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tiny models: one thread


def sd_model(path, guidance_scale=7.5):
    from custom.usd.view_distillation.sd_models import load_stable_diffusion

    return load_stable_diffusion(str(path), guidance_scale, half_precision_weights="false")


# ------------------------------------------------------------------ rectified sampler (§4.3)
def test_rectified_noise_prediction_equals_direct_unet_calls(tmp_path, tiny_zero123_path, tiny_sd_path):
    from custom.usd.view_distillation.rectified_sampler import RectifiedZero123Sampler
    from lift3d.prompt.stable_diffusion import encode_prompts

    w = 3.0
    sampler = RectifiedZero123Sampler(str(tiny_zero123_path), str(tiny_sd_path), IMAGE, *REF, guidance_scale=w,
                                      half_precision_weights="false", cache_dir=str(tmp_path / "cache"))
    cameras = sampler.relative_cameras([15.0, 40.0], [45.0 + 90.0, 45.0 - 120.0], [1.5, 1.8])  # [2,4]
    expected_T = torch.tensor([[0.0, 1.0, 0.0, 0.0],
                               [np.radians(-25.0), np.sin(np.radians(-120.0)), np.cos(np.radians(-120.0)), 0.3]])
    assert torch.allclose(cameras.cpu(), expected_T.float(), atol=1e-5)
    torch.manual_seed(0)
    z_t, t = torch.randn(2, 4, 8, 8), torch.tensor([700, 150])
    eps = sampler.noise_prediction(z_t, t, cameras)

    z123 = sampler.zero123.models
    with torch.no_grad():
        context = z123.clip_camera_projection(torch.cat([sampler.reference.embedding.expand(2, -1, -1),
                                                         cameras[:, None, :]], dim=-1))  # [2,1,D]
        ref = sampler.reference.latents.expand(2, -1, -1, -1)
        eps_zero123 = z123.unet(torch.cat([z_t, ref], dim=1), t, encoder_hidden_states=context).sample
        empty = encode_prompts(str(tiny_sd_path), [""]).expand(2, -1, -1)
        eps_sd = sampler.sd.unet(z_t, t, encoder_hidden_states=empty).sample
        eps_own_uncond = z123.unet(torch.cat([z_t, torch.zeros_like(ref)], dim=1), t,
                                   encoder_hidden_states=torch.zeros_like(context)).sample
    expected = w * (eps_zero123 - eps_sd) + eps_sd
    assert torch.allclose(eps, expected, atol=1e-5), (eps - expected).abs().max()
    # not Zero-1-to-3's own (zero image / zero pose) guidance
    own = w * (eps_zero123 - eps_own_uncond) + eps_own_uncond
    assert (eps - own).abs().max() > 1e-2

    # deterministic with a seed, independent of the batch size; another seed differs
    a = sampler.sample(cameras, num_steps=3, seed=5, batch_size=2)
    b = sampler.sample(cameras, num_steps=3, seed=5, batch_size=1)
    c = sampler.sample(cameras, num_steps=3, seed=6, batch_size=2)
    assert a.shape == (2, 64, 64, 3) and 0.0 <= a.min() and a.max() <= 1.0
    assert torch.allclose(a, b, atol=1e-5) and (a - c).abs().max() > 1e-2


# ------------------------------------------------------------------ DreamBooth-LoRA (§4.2)
def test_lora_starts_as_identity_lowers_its_loss_and_reloads(tmp_path, tiny_sd_path):
    from custom.usd.view_distillation.dreambooth_lora import (
        TrainingSet, add_lora, encode_image_files, load_lora, read_losses, save_lora, train_lora,
    )
    from custom.usd.view_distillation.sd_models import text_embeddings

    sd = sd_model(tiny_sd_path)
    emb = text_embeddings(str(tiny_sd_path), ["photo of a sks object", "photo of a object"])  # [2,77,D]
    torch.manual_seed(0)
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 600])
    with torch.no_grad():
        base = sd.unet(z, t, encoder_hidden_states=emb).sample
    n_attention = sum(1 for name, _ in sd.unet.named_modules() if name.endswith(".to_q"))
    assert n_attention == 8  # self + cross attention in the tiny UNet's 4 transformer blocks
    torch.manual_seed(0)
    params = add_lora(sd.unet, rank=4)
    with torch.no_grad():
        fresh = sd.unet(z, t, encoder_hidden_states=emb).sample
    assert torch.equal(fresh, base)  # B = 0 at init
    assert len(params) == 2 * 4 * n_attention  # A and B of to_q / to_k / to_v / to_out.0 of every attention
    assert all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in sd.unet.named_parameters() if "lora_" not in n)

    # instances: the input view and two crops; prior: three flat-coloured "class images"
    for i, colour in enumerate([(255, 0, 0), (0, 128, 255), (40, 200, 40)]):
        Image.new("RGB", (64, 64), colour).save(tmp_path / f"prior{i}.png")
    Image.open(IMAGE).crop((0, 0, 300, 300)).save(tmp_path / "crop0.png")
    Image.open(IMAGE).crop((100, 100, 400, 400)).save(tmp_path / "crop1.png")
    instances = TrainingSet(encode_image_files(sd, [IMAGE, tmp_path / "crop0.png", tmp_path / "crop1.png"]), emb[:1])
    prior = TrainingSet(encode_image_files(sd, [tmp_path / f"prior{i}.png" for i in range(3)]), emb[1:])
    assert instances.latents.shape == (3, 4, 8, 8)
    losses = train_lora(sd, params, instances, prior, steps=150, loss_csv=tmp_path / "losses.csv",
                        learning_rate=1e-2, seed=0)
    assert read_losses(tmp_path / "losses.csv") == pytest.approx(losses, abs=1e-5) and len(losses) == 150
    first, last = np.mean(losses[:30]), np.mean(losses[-30:])
    assert last < 0.9 * first, (first, last)

    with torch.no_grad():
        trained = sd.unet(z, t, encoder_hidden_states=emb).sample
    assert (trained - base).abs().max() > 1e-2
    path = save_lora(sd.unet, tmp_path / "lora")
    from safetensors.torch import load_file

    keys = list(load_file(str(path)))
    assert len(keys) == len(params) and all(k.startswith("unet.") and ".lora." in k for k in keys)  # diffusers format
    reloaded = sd_model(tiny_sd_path)
    load_lora(reloaded.unet, tmp_path / "lora")
    with torch.no_grad():
        again = reloaded.unet(z, t, encoder_hidden_states=emb).sample
    assert torch.allclose(again, trained, atol=1e-6)


# ------------------------------------------------------------------ DDIM schedule and SDEdit (§4.4)
def test_ddim_timesteps():
    assert ddim_timesteps(200, 10) == [200, 180, 160, 140, 120, 100, 80, 60, 40, 20, -1]
    assert ddim_timesteps(200, 4) == [200, 150, 100, 50, -1]
    assert ddim_timesteps(999, 4) == [999, 749, 500, 250, -1]
    assert ddim_timesteps(5, 10) == [5, 4, 3, 2, 1, -1]  # capped: no repeated timestep
    assert ddim_timesteps(0, 10) == [] and ddim_timesteps(200, 0) == []
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 10)


def test_sdedit_strength_zero_is_the_vae_round_trip_and_t200_follows_the_schedule(tiny_sd_path):
    from custom.usd.view_distillation.sd_models import load_rgb_on_white, text_embeddings
    from custom.usd.view_distillation.sdedit import sdedit

    sd = sd_model(tiny_sd_path, guidance_scale=6.5)
    emb = text_embeddings(str(tiny_sd_path), ["photo of a ohwx sks object", ""])
    rgb, alpha = load_rgb_on_white(IMAGE)
    x = torch.nn.functional.interpolate(rgb.permute(2, 0, 1)[None], size=(64, 64), mode="area")  # [1,3,64,64]
    images = x.permute(0, 2, 3, 1)  # [1,64,64,3]
    out0 = sdedit(sd, images, emb[:1], emb[1:], noise_timestep=0, num_steps=10, seeds=[0])
    with torch.no_grad():
        round_trip = sd.decode_latents(sd.encode_images(x, sample=False))
    assert out0.shape == (1, 64, 64, 3) and torch.allclose(out0, round_trip, atol=1e-6)

    calls = []
    guided = sd.guided_noise

    def record(z_t, t, text):
        calls.append((t.tolist(), text.shape[0]))
        return guided(z_t, t, text)

    sd.guided_noise = record
    out200 = sdedit(sd, images.expand(2, -1, -1, -1), emb[:1], emb[1:], noise_timestep=200, num_steps=10, seeds=[0, 1])
    assert [c[0] for c in calls] == [[t, t] for t in range(200, 0, -20)]
    assert all(c[1] == 4 for c in calls)  # [cond; uncond] for the batch of 2
    assert out200.shape == (2, 64, 64, 3) and (out200 - out0).abs().max() > 1e-3
    assert (out200[0] - out200[1]).abs().max() > 1e-3  # per-frame seeds


# ------------------------------------------------------------------ the command end to end
TINY_NERF = [
    "trainer.max_steps=2", "checkpoint.every_n_train_steps=2", "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false", "system.geometry.pos_encoding_config.n_levels=4",
    "system.geometry.pos_encoding_config.log2_hashmap_size=12", "system.renderer.base_renderer.num_samples_per_ray=24",
    "system.renderer.patch_size=16", "system.renderer.global_downsample=2", "data.width=32", "data.height=32",
    "data.random_camera.width=32", "data.random_camera.height=32", "data.random_camera.eval_width=16",
    "data.random_camera.eval_height=16", "data.random_camera.n_val_views=1", "data.random_camera.n_test_views=8",
    "system.guidance.reference_resolution=null",
]
TINY_PIPELINE = [
    "novel_views.num_views=3", "novel_views.num_steps=4", "class_images.num_images=3", "class_images.num_steps=4",
    "lora.steps_a=12", "lora.steps_b=3", "refine.num_steps=3", "progress=false",
    "neus.overrides=[trainer.max_steps=8,trainer.val_check_interval=8,checkpoint.every_n_train_steps=8,"
    "trainer.enable_progress_bar=false,data.train_num_rays=128,data.n_val_views=1,"
    "system.geometry.isosurface_resolution=32,system.geometry.pos_encoding_config.n_levels=4,"
    "system.geometry.pos_encoding_config.log2_hashmap_size=12,system.renderer.num_samples_per_ray=32]",
]


def run_command(args: list[str], timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "custom.usd.view_distillation", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def usd_run(tmp_path_factory, tiny_zero123_path, tiny_sd_path):
    """A 2-step USD image-to-3D run with tiny models whose test pass wrote 8 RGBA views."""
    root = tmp_path_factory.mktemp("usd-run")
    run_launch(["--config", str(REPO / "custom/usd/configs/usd-patch.yaml"), "--train", f"exp_root_dir={root}",
                *TINY_NERF, f"system.guidance.pretrained_model_name_or_path={tiny_zero123_path}",
                f"system.guidance.sd_model_name_or_path={tiny_sd_path}", f"system.guidance.cache_dir={root / 'cache'}"])
    return only_trial(root, "usd-patch")


def test_pipeline_end_to_end_and_resumable(usd_run):
    out = usd_run / "view-distillation"
    proc = run_command([f"run={usd_run}", *TINY_PIPELINE])
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    steps = ["novel_views", "class_images", "lora_a", "lora_b", "refine", "neus"]
    assert summary["statuses"] == {s: "done" for s in steps}

    # novel views and class images; the models and camera came from the run's parsed.yaml
    assert len(list((out / "novel_views/images").glob("*.png"))) == 3
    cams = json.loads((out / "novel_views/cameras.json").read_text())
    assert cams["azimuth_deg"] == pytest.approx([45.0 + 90.0, 45.0 + 180.0, 45.0 + 270.0])
    assert cams["elevation_deg"] == [15.0] * 3 and cams["camera_distance"] == [1.5] * 3
    assert len(list((out / "class_images/images").glob("*.png"))) == 3
    # LoRA weights and per-step losses
    for step, n in (("lora_a", 12), ("lora_b", 3)):
        assert (out / step / "pytorch_lora_weights.safetensors").stat().st_size > 1000
        with open(out / step / "losses.csv") as fp:
            assert [int(r["step"]) for r in csv.DictReader(fp)] == list(range(n))
    # the refined dataset: the input's frames and poses, refined colours, the renders' alpha
    source = json.loads((usd_run / "save/it2-test-rgba/transforms.json").read_text())
    refined = json.loads((out / "refine/transforms.json").read_text())
    assert len(refined["frames"]) == len(source["frames"]) == 8
    assert [f["transform_matrix"] for f in refined["frames"]] == [f["transform_matrix"] for f in source["frames"]]
    assert (refined["w"], refined["h"], refined["fl_x"]) == (source["w"], source["h"], source["fl_x"])
    for frame in refined["frames"][:3]:
        new = np.asarray(Image.open(out / "refine" / frame["file_path"]))
        old = np.asarray(Image.open(usd_run / "save/it2-test-rgba" / frame["file_path"]))
        assert new.shape == old.shape == (16, 16, 4)
        assert np.array_equal(new[..., 3], old[..., 3]) and not np.array_equal(new[..., :3], old[..., :3])
    # the NeuS mesh
    obj = (out / "neus/export/model.obj").read_text()
    assert obj.count("\nv ") > 100 and obj.count("\nf ") > 100
    assert summary["mesh"] == [str(out / "neus/export/model.obj")]

    # rerun: every step skipped
    again = run_command([f"run={usd_run}", *TINY_PIPELINE])
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads((out / "summary.json").read_text())["statuses"] == {s: "skipped" for s in steps}
    assert again.stdout.count("done before, skipped") == 6

    # a deleted done marker (or a crash mid-step: a leftover .tmp, no marker) redoes that step only;
    # its outputs come out identical (seeded), so the steps after it stay valid
    digest = json.loads((out / "refine.done.json").read_text())["digest"]
    (out / "refine.done.json").unlink()
    (out / "refine.tmp/images").mkdir(parents=True)
    (out / "refine.tmp/images/0000.png").write_bytes(b"half-written")
    third = run_command([f"run={usd_run}", *TINY_PIPELINE])
    assert third.returncode == 0, third.stderr[-4000:]
    statuses = json.loads((out / "summary.json").read_text())["statuses"]
    assert statuses == {**{s: "skipped" for s in steps}, "refine": "done"}
    assert json.loads((out / "refine.done.json").read_text())["digest"] == digest
    assert not (out / "refine.tmp").exists()

    # a changed setting redoes its step and the ones whose inputs change
    fourth = run_command([f"run={usd_run}", *TINY_PIPELINE, "refine.noise_timestep=100", "neus.enabled=false"])
    assert fourth.returncode == 0, fourth.stderr[-4000:]
    statuses = json.loads((out / "summary.json").read_text())["statuses"]
    assert statuses == {**{s: "skipped" for s in steps[:4]}, "refine": "done"}


def test_bad_inputs_fail_before_any_work(tmp_path, usd_run, capsys):
    from custom.usd.view_distillation.__main__ import main

    # the command: a run directory without a test-pass dataset -> exit code 2, the fix in the message
    run = tmp_path / "run"
    shutil.copytree(usd_run / "configs", run / "configs")
    proc = run_command([f"run={run}", "progress=false"], timeout=900)  # a safety net, not a speed limit
    assert proc.returncode == 2
    assert "no test-pass dataset" in proc.stderr and "--test" in proc.stderr and "dataset=" in proc.stderr
    assert not (run / "view-distillation").exists()

    def fails(args: list[str], *words: str) -> None:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words), err

    # (in process from here: the same main(), without 7 s of imports per call)
    shutil.copytree(usd_run / "save/it2-test-rgba", run / "save/it2-test-rgba")
    fails([f"run={run}", f"image_path={tmp_path / 'nope.png'}"], "image_path", "nope.png")
    fails([f"run={run}", f"models.sd={tmp_path / 'no-sd'}"], "models.sd", "tiny_factory")
    fails([f"run={run}", "neus.config=configs/no-such.yaml"], "neus.config", "neus.enabled=false")
    fails([f"run={run}", "lora.stepz_a=3"], "lora.stepz_a", "steps_a", "Valid keys")
    fails([f"run={run}", "refine.noise_timestep=1000"], "refine.noise_timestep")
    fails([f"run={tmp_path / 'missing'}"], "not a directory")
    fails([], "run")  # mandatory
    assert not (run / "view-distillation").exists()
