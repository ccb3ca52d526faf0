"""configs/demo/*.yaml end to end through launch.py on the shipped toy priors (issue #7): train,
test pass (turntable video + RGBA views), export — a few steps each (the full demo's figures are
in benchmarks/RESULTS.md, from benchmarks/toyworld.py)."""
from __future__ import annotations

import json

import pytest

from helpers import only_trial, run_launch

SHORT = ["trainer.max_steps=6", "trainer.val_check_interval=6", "checkpoint.every_n_train_steps=6",
         "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "data.n_val_views=1",
         "use_timestamp=false"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _check_outputs(trial, n_test_views):
    save = trial / "save"
    assert (save / "it6-test.mp4").stat().st_size > 0
    meta = json.loads((save / "it6-test-rgba" / "transforms.json").read_text())
    assert len(meta["frames"]) == n_test_views
    assert len(list((save / "it6-test-rgba" / "images").glob("*.png"))) == n_test_views
    return save


def test_text_to_3d_demo_trains_tests_and_exports(tmp_path):
    """As scripts/demo.sh runs it: `--train --export`, fit, test pass and export in one process."""
    run_launch(["--config", "configs/demo/text-to-3d.yaml", "--train", "--export", f"exp_root_dir={tmp_path}",
                "system.prompt_processor.prompt=a green cone", "data.n_test_views=3", *SHORT,
                "system.geometry.isosurface_threshold=0.5"])  # 6 steps leave a faint field; the demo's own threshold after 400
    trial = only_trial(tmp_path, "demo-text-to-3d")
    assert trial.name == "a_green_cone"
    _check_outputs(trial, 3)
    parsed = (trial / "configs/parsed.yaml").read_text()
    assert "load/priors/toy-sd" in parsed and "usd-text-guidance" in parsed
    obj = next((trial / "save").glob("it6-export/*.obj"))
    assert sum(line.startswith("f ") for line in obj.read_text().splitlines()) > 100


def test_image_to_3d_demo_trains_and_writes_the_rgba_turntable(tmp_path):
    run_launch(["--config", "configs/demo/image-to-3d.yaml", "--train", f"exp_root_dir={tmp_path}",
                "data.random_camera.n_test_views=3", "data.random_camera.n_val_views=1",
                *[s for s in SHORT if not s.startswith("data.")]])
    trial = only_trial(tmp_path, "demo-image-to-3d")
    _check_outputs(trial, 3)
    metrics = (trial / "csv_logs/metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    assert "train/loss_usd" in header and "train/loss_usd_ref" in header
