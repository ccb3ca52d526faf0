"""multiview-camera-datamodule (threestudio's keys over a nerfstudio transforms.json): sizes, frame
intervals, camera layouts, pixel-corner rays, interpolated eval poses, the editable image buffer."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lift3d import find
from lift3d.errors import ConfigError
from tools.multiview_synthetic import FOCAL, view_colour, write_multiview_scene

N_VIEWS, SIZE = 6, 32


def write_scene(folder: Path, n_views: int = N_VIEWS, size: int = SIZE) -> Path:
    """Constant-colour views (colour = `view_colour(view)`) on a ring, rig off the origin."""
    return write_multiview_scene(folder, n_views, size)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return write_scene(tmp_path_factory.mktemp("mv") / "scene")


def make(scene: Path, **cfg):
    return find("multiview-camera-datamodule")({"dataroot": str(scene), **cfg})


def test_sizes_intervals_colours_and_recentred_cameras(scene):
    dm = make(scene, train_downsample_resolution=2, eval_downsample_resolution=1, eval_data_interval=3, seed=0)
    train = dm.train_dataset
    assert train.images.shape == (N_VIEWS, 16, 16, 3)  # train: size // k
    assert len(dm.val_dataset) == 2  # frames[::3]
    batch = next(iter(dm.val_dataloader()))
    assert batch["rgb"].shape == (1, 16, 16, 3) and batch["height"] == 16  # eval: size // 2**k
    assert batch["index"].tolist() == [0]
    # eval view 1 is frame 3 (interval 3): its colour
    second = dm.val_dataset.collate([1])
    assert torch.allclose(second["gt_rgb"][0, 5, 5], torch.tensor(view_colour(3)) / 255.0, atol=1e-6)
    # camera_layout=around: the camera centres are re-centred on their mean
    assert train.views["c2w"][:, :3, 3].mean(0).abs().max() < 1e-5
    assert torch.all(second["light_positions"] == 0)
    # training batches: whole views, their index and colour
    drawn = train.sample()
    i = int(drawn["index"][0])
    assert drawn["rgb"].shape == (1, 16, 16, 3)
    assert torch.allclose(drawn["rgb"][0], torch.tensor(view_colour(i)).float().div(255).expand(16, 16, 3), atol=1e-6)


def test_rays_go_through_pixel_corners(scene):
    dm = make(scene, train_downsample_resolution=1, eval_downsample_resolution=0)
    batch = dm.val_dataset.collate([2])
    c2w = batch["c2w"][0]
    # threestudio's use_pixel_centers=False: pixel (row 0, col 0) -> camera direction (-cx/f, +cy/f, -1)
    d_cam = torch.tensor([-SIZE / 2 / FOCAL, SIZE / 2 / FOCAL, -1.0])
    expected = torch.nn.functional.normalize(c2w[:3, :3] @ d_cam, dim=0)
    assert torch.allclose(batch["rays_d"][0, 0, 0], expected, atol=1e-5)
    assert torch.allclose(batch["rays_o"][0, 0, 0], c2w[:3, 3], atol=1e-6)


def test_front_layout_and_interpolated_eval_poses(scene):
    around = make(scene, train_downsample_resolution=4, eval_downsample_resolution=2)
    front = make(scene, train_downsample_resolution=4, eval_downsample_resolution=2, camera_layout="front",
                 camera_distance=1.5, eval_interpolation=[1, 4, 5])
    a, f = around.train_dataset.views["c2w"], front.train_dataset.views["c2w"]
    mean_forward = -a[:, :3, 2].mean(0)  # the cameras' mean viewing direction (-z column)
    assert torch.allclose(f[:, :3, 3], a[:, :3, 3] - 1.5 * mean_forward, atol=1e-5)
    assert len(front.val_dataset) == 5
    first, last = front.val_dataset.collate([0]), front.val_dataset.collate([4])
    assert torch.allclose(first["c2w"][0], f[1], atol=1e-5) and torch.allclose(last["c2w"][0], f[4], atol=1e-5)
    middle = front.val_dataset.collate([2])["c2w"][0]
    assert torch.allclose(middle[:3, :3].T @ middle[:3, :3], torch.eye(3), atol=1e-5)
    assert torch.all(first["rgb"] == 0)


def test_image_buffer_replaces_only_the_given_views_and_survives_state_dict(scene):
    dm = make(scene, train_downsample_resolution=4, seed=3)
    train = dm.train_dataset
    before = train.images.clone()
    edit = torch.rand(2, 8, 8, 3)
    train.set_images(torch.tensor([1, 4]), edit)
    assert torch.equal(train.images[[1, 4]], edit)
    keep = [0, 2, 3, 5]
    assert torch.equal(train.images[keep], before[keep])
    assert torch.equal(train.original_images, before)  # the originals never change
    state = dm.state_dict()
    fresh = make(scene, train_downsample_resolution=4, seed=3)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.train_dataset.images, train.images)


@pytest.mark.parametrize("override, key", [
    ({"camera_layout": "front"}, "data.camera_distance"),
    ({"camera_layout": "side"}, "data.camera_layout"),
    ({"eval_interpolation": [0, 9, 3]}, "data.eval_interpolation"),
    ({"train_data_interval": 0}, "data.train_data_interval"),
])
def test_config_errors_name_the_key(scene, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make(scene, **override)
