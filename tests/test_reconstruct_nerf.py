"""End to end through launch.py: the NeRF stage fitted to a known mesh reaches the known answer,
writes the trial layout users expect, tests and exports from its checkpoint."""
import csv

import imageio.v2 as imageio
import numpy as np
import pytest
import trimesh

from lift3d.evaluation import evaluate_against_reference
from tests.helpers import only_trial, run_launch

CONFIG = "configs/reconstruct-nerf.yaml"
# small enough for the CPU test budget; the full-size figures are in benchmarks/RESULTS.md
SMALL = [
    "trainer.max_steps=160", "trainer.val_check_interval=80", "checkpoint.every_n_train_steps=80",
    "data.width=48", "data.height=48", "data.eval_width=64", "data.eval_height=64",
    "data.n_val_views=2", "data.n_test_views=12", "system.renderer.num_samples_per_ray=64",
    "system.geometry.isosurface_resolution=48", "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon")
    run_launch(["--config", CONFIG, "--train", f"exp_root_dir={root}", *SMALL])
    return only_trial(root, "reconstruct-nerf")


def test_reaches_known_answer_on_held_out_views(trained):
    # held-out: the turntable at an elevation and radius the training cameras never took exactly
    scores = evaluate_against_reference(trained, n_views=8, resolution=64, elevation_deg=5.0)
    assert scores["mask_iou"] >= 0.90, scores
    assert scores["psnr"] >= 20.0, scores


def test_trial_folder_layout(trained):
    for rel in ["configs/parsed.yaml", "configs/raw.yaml", "cmd.txt", "ckpts/last.ckpt",
                "ckpts/epoch=0-step=80.ckpt", "ckpts/epoch=0-step=160.ckpt",
                "save/it80-0.png", "save/it160-1.png", "save/it160-test.mp4"]:
        assert (trained / rel).is_file(), rel
    assert "--train" in (trained / "cmd.txt").read_text()
    assert list((trained / "tb_logs").glob("events.out.tfevents.*"))
    frames = imageio.mimread(trained / "save/it160-test.mp4")
    assert len(frames) == 12 and frames[0].shape[:2] == (64, 64 * 3)
    # the turntable turns: consecutive frames differ, frames are not blank
    assert np.abs(frames[0].astype(float) - frames[3].astype(float)).mean() > 1.0
    with open(trained / "csv_logs/metrics.csv") as fp:
        rows = [r for r in csv.DictReader(fp) if r.get("train/loss")]
    losses = [float(r["train/loss"]) for r in rows]
    assert len(losses) >= 10 and np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])


def test_test_and_export_from_checkpoint(trained):
    ckpt = trained / "ckpts/last.ckpt"
    parsed = trained / "configs/parsed.yaml"
    run_launch(["--config", str(parsed), "--export", f"resume={ckpt}"])
    obj = trained / "save/it160-export/model.obj"
    mesh = trimesh.load(obj, process=False)
    assert len(mesh.faces) > 100
    extent = mesh.bounds[1] - mesh.bounds[0]
    # the capsule is 0.5 x 0.5 x 1.1
    assert np.allclose(extent, [0.5, 0.5, 1.1], atol=0.12), extent
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3]
    assert colors.std() > 5  # two-tone mesh: not a single colour
    run_launch(["--config", str(parsed), "--test", f"resume={ckpt}", "data.n_test_views=4"])
    assert len(imageio.mimread(trained / "save/it160-test.mp4")) == 4
