"""configs/dreamfusion-sd.yaml and configs/zero123.yaml end to end through launch.py with tiny models:
train a few steps, resume with more max_steps, test, export; an absent model fails fast and cleanly."""
import csv

import pytest
import torch

from tests.helpers import only_trial, run_launch

# tiny everything: 32² renders (the guidance resizes them to the tiny model's 64²), a small hash grid
SMALL = [
    "trainer.max_steps=3", "checkpoint.every_n_train_steps=3", "trainer.val_check_interval=3",
    "trainer.enable_progress_bar=false", "system.renderer.num_samples_per_ray=24",
    "system.geometry.isosurface_resolution=24", "system.geometry.isosurface_threshold=auto",
    "system.geometry.pos_encoding_config.n_levels=4",
    "system.geometry.pos_encoding_config.log2_hashmap_size=12", "system.guidance.guidance_eval_interval=2",
]
DREAMFUSION = [
    "data.width=32", "data.height=32", "data.eval_width=32", "data.eval_height=32",
    "data.n_val_views=1", "data.n_test_views=2", "system.prompt_processor.prompt=lib:pineapple",
]
ZERO123 = [
    "data.width=32", "data.height=32", "data.random_camera.width=32", "data.random_camera.height=32",
    "data.random_camera.batch_size=2", "data.random_camera.eval_width=32", "data.random_camera.eval_height=32",
    "data.random_camera.n_val_views=1", "data.random_camera.n_test_views=2",
]


def steps_logged(trial):
    with open(trial / "csv_logs/metrics.csv") as fp:
        return [int(r["step"]) for r in csv.DictReader(fp) if r.get("train/loss_sds")]


def check_checkpoint_has_no_frozen_model(ckpt):
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert not any(k.split(".")[0] in ("guidance", "prompt_processor") for k in state), sorted(state)[:10]
    assert not any(word in k for k in state for word in ("unet", "vae", "text_encoder", "image_encoder"))
    assert any(k.startswith("geometry.") for k in state)


def run_stages(root, config, name, extra, test_too):
    run_launch(["--config", config, "--train", f"exp_root_dir={root}", *SMALL, *extra])
    trial = only_trial(root, name)
    save = trial / "save"
    assert (trial / "ckpts/last.ckpt").is_file() and (save / "it3-test.mp4").is_file()
    assert (save / "it2-guidance.png").is_file()  # guidance-evaluation images (render | noisy | x0 | denoised)
    check_checkpoint_has_no_frozen_model(trial / "ckpts/last.ckpt")
    parsed, last = trial / "configs/parsed.yaml", trial / "ckpts/last.ckpt"
    # resume with more steps: same trial, continues at the saved step
    run_launch(["--config", str(parsed), "--train", f"resume={last}", "trainer.max_steps=6"])
    assert only_trial(root, name) == trial
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 6
    assert steps_logged(trial) == [0, 1, 2, 3, 4, 5]
    if test_too:
        (save / "it6-test.mp4").unlink()
        run_launch(["--config", str(parsed), "--test", f"resume={last}"])
        assert (save / "it6-test.mp4").is_file()
    run_launch(["--config", str(parsed), "--export", f"resume={last}"])
    assert (save / "it6-export/model.obj").is_file()
    return trial


def test_dreamfusion_sd_config(tmp_path, tiny_sd_path):
    cache = tmp_path / "text-cache"
    extra = [*DREAMFUSION, f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
             f"system.prompt_processor.cache_dir={cache}"]
    trial = run_stages(tmp_path / "out", "configs/dreamfusion-sd.yaml", "dreamfusion-sd", extra, test_too=False)
    assert trial.name.startswith("lib_pineapple@")  # ":" is not kept in folder names (lift3d.utils.paths)
    assert len(list(cache.glob("*.pt"))) == 6  # the resumed run read its embeddings from the cache
    parsed = (trial / "configs/parsed.yaml").read_text()
    assert f"pretrained_model_name_or_path: {tiny_sd_path}" in parsed  # the guidance follows the prompt processor


def test_zero123_config(tmp_path, tiny_zero123_path):
    extra = [*ZERO123, f"system.guidance.pretrained_model_name_or_path={tiny_zero123_path}"]
    trial = run_stages(tmp_path / "out", "configs/zero123.yaml", "zero123", extra, test_too=True)
    with open(trial / "csv_logs/metrics.csv") as fp:
        rows = [r for r in csv.DictReader(fp) if r.get("train/loss_sds")]
    # reference-view losses and the SDS loss are all logged
    assert all(float(r["train/loss_rgb"]) > 0 and float(r["train/loss_mask"]) > 0 for r in rows)


@pytest.mark.parametrize("config, extra, what", [
    ("configs/dreamfusion-sd.yaml", ["system.prompt_processor.prompt=a cat",
                                     "system.prompt_processor.pretrained_model_name_or_path=nonexistent-org/no-such-sd"],
     "Stable Diffusion"),
    ("configs/zero123.yaml", ["system.guidance.pretrained_model_name_or_path=nonexistent-org/no-such-zero123"], "Zero-1-to-3"),
])
def test_absent_model_fails_fast_and_cleanly(tmp_path, config, extra, what):
    # "fast" is structural (nothing written, no model found so none loaded), not a wall-clock limit
    proc = run_launch(["--config", config, "--train", f"exp_root_dir={tmp_path}", *extra], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"{what} for system.guidance.pretrained_model_name_or_path" in proc.stderr
    assert "no usable model found" in proc.stderr and "Looked in" in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing was started
