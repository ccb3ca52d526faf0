"""co3d-datamodule (#16): a synthetic CO3D sequence in CO3D's layout (tests/co3d_synthetic.py) read as
threestudio reads it. The loaded views must reproject the scene: rays through the blobs of three known
3D points meet at points related to the originals by a similarity with +z up; depths scale with it;
the median camera distance is scale_radius x cam_scale_factor; splits, ray batches, the test path,
resumable draws and the errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tools.co3d_synthetic import DISTANCE, POINTS, write_co3d_sequence
from lift3d.data.co3d import Co3dDataModule
from lift3d.errors import ConfigError

SMALL = {"height": 32, "width": 32, "box_crop_context": 0.1,
         "random_camera": {"height": 16, "width": 16, "eval_height": 16, "eval_width": 16, "n_test_views": 3}}


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    return write_co3d_sequence(tmp_path_factory.mktemp("co3d"))


def make(sequence, **cfg):
    return Co3dDataModule({"root_dir": str(sequence), **SMALL, **cfg})


def triangulate(origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares meeting point of rays (o [N,3], unit d [N,3]) and the mean distance of the rays to it."""
    projectors = np.eye(3)[None] - directions[:, :, None] * directions[:, None, :]  # [N,3,3]
    point = np.linalg.solve(projectors.sum(0), (projectors @ origins[:, :, None]).sum(0))[:, 0]
    return point, float(np.linalg.norm((projectors @ (point - origins)[:, :, None])[:, :, 0], axis=-1).mean())


def blob_rays(views, channel: int) -> tuple[np.ndarray, np.ndarray]:
    """World rays through the intensity centroid of a colour channel's blob in every loaded view."""
    origins, directions = [], []
    for i in range(views["rgb"].shape[0]):
        img = views["rgb"][i, ..., channel].double()
        weight = torch.where(img > 0.2, img, torch.zeros_like(img))
        rows, cols = torch.meshgrid(torch.arange(img.shape[0]) + 0.5, torch.arange(img.shape[1]) + 0.5, indexing="ij")
        u, v = float((weight * cols).sum() / weight.sum()), float((weight * rows).sum() / weight.sum())
        (fx, fy), (cx, cy) = views["focal"][i].tolist(), views["principal"][i].tolist()
        c2w = views["c2w"][i].double().numpy()
        d = c2w[:3, :3] @ np.array([(u - cx) / fx, -(v - cy) / fy, -1.0])  # OpenGL camera: y up, looking down -z
        origins.append(c2w[:3, 3])
        directions.append(d / np.linalg.norm(d))
    return np.stack(origins), np.stack(directions)


def test_loaded_views_reproject_the_scene_up_to_a_similarity_with_z_up(sequence):
    dm = make(sequence)
    views = dm.views
    assert views["rgb"].shape == (12, 32, 32, 3)  # 13 frames of the sequence, the "unseen" one dropped
    points, misses = zip(*(triangulate(*blob_rays(views, c)) for c in range(3)))
    scale = np.linalg.norm(points[1] - points[0]) / np.linalg.norm(POINTS[1] - POINTS[0])
    assert max(misses) < 0.01 * scale * DISTANCE, misses  # the rays of each blob meet
    # a similarity: distances scale alike; the original up (+y of the CO3D world) is +z now
    assert np.linalg.norm(points[2] - points[0]) / np.linalg.norm(POINTS[2] - POINTS[0]) == pytest.approx(scale, rel=0.03)
    up = (points[1] - points[0]) / np.linalg.norm(points[1] - points[0])
    assert up[2] > 0.995, up
    # the median camera distance to the origin is scale_radius x cam_scale_factor (1.0 x 0.95)
    assert float(np.median(views["c2w"][:, :3, 3].norm(dim=-1).numpy())) == pytest.approx(0.95, abs=1e-5)
    # the cameras' distance to the object scales likewise, and so do the depth maps (DISTANCE stored)
    distances = np.linalg.norm(views["c2w"][:, :3, 3].numpy() - points[0], axis=-1)
    assert distances == pytest.approx(np.full(12, DISTANCE * scale), rel=0.03)
    inside = views["mask"][..., 0] > 0.99
    assert views["depth"][..., 0][inside].numpy() == pytest.approx(DISTANCE * scale, rel=0.03)


def test_splits_ray_batches_test_path_and_resume(sequence):
    dm = make(sequence, train_views=[0, 5], train_num_rays=10)
    assert dm.splits["train"] == [0, 5] and len(dm.splits["val"]) == 10 and len(dm.splits["test"]) == 12
    stream = dm.train_dataset
    drawn = [int(stream.sample()["index"]) for _ in range(4)]
    assert sorted(drawn[:2]) == [0, 5] and sorted(drawn[2:]) == [0, 5]  # a permutation per pass
    state = stream.state_dict()
    batch = stream.sample()
    assert batch["rays_o"].shape == (1, 10, 1, 3) and batch["rgb"].shape == (1, 10, 1, 3)
    assert batch["mask"].shape == (1, 10, 1, 1) and (batch["height"], batch["width"]) == (10, 1)
    assert batch["random_camera"]["rays_o"].shape == (1, 16, 16, 3)
    stream.load_state_dict(state)
    again = stream.sample()
    assert int(again["index"]) == int(batch["index"]) and torch.equal(again["rgb"], batch["rgb"])
    assert len(dm.test_dataset) == 3  # render_path: circle -> the random-camera turntable
    views = make(sequence, render_path="views")
    test = next(iter(views.test_dataloader()))
    assert len(views.test_dataset) == 12 and test["rgb"].shape == (1, 32, 32, 3)
    full = make(sequence).train_dataset.sample()
    assert full["rays_o"].shape == (1, 32, 32, 3) and torch.equal(full["alpha"], full["mask"])


def test_errors_name_the_key(sequence, tmp_path):
    with pytest.raises(ConfigError, match=r"data.train_views = \[0, 50\] names views outside the 12 views"):
        make(sequence, train_views=[0, 50])
    with pytest.raises(ConfigError, match="data.root_dir = .* is not a folder"):
        make(tmp_path / "nowhere")
    (tmp_path / "cat" / "lonely").mkdir(parents=True)
    with pytest.raises(ConfigError, match="frame_annotations.jgz"):
        make(tmp_path / "cat" / "lonely")
    with pytest.raises(ConfigError, match="no frames of sequence 'elsewhere'"):
        (sequence.parent / "elsewhere").mkdir(exist_ok=True)
        make(sequence.parent / "elsewhere")
    with pytest.raises(ConfigError, match="data.train_split = 'dev' is not a split"):
        make(sequence, train_split="dev")
