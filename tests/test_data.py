"""Cameras, random-camera and single-image data modules (lift3d/data)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lift3d.config import parse_structured
from lift3d.data.cameras import (
    c2w_to_w2c,
    focal_from_fovy,
    get_mvp_matrix,
    get_projection_matrix,
    get_ray_directions,
    get_rays,
    look_at_c2w,
    ndc_to_pixel,
    project_points,
    spherical_to_cartesian,
)
from lift3d.data.image_io import ImageNotFoundError, load_rgba
from lift3d.data.random_camera import (
    CAMERA_BATCH_KEYS,
    RandomCameraDataModule,
    RandomCameraIterableDataset,
)
from lift3d.data.single_image import SingleImageDataModule
from lift3d.errors import ConfigError
from lift3d.registry import find, name_of

SMALL_EVAL = {"eval_height": 4, "eval_width": 6}


# ---------------------------------------------------------------- conventions
def test_spherical_positions_follow_z_up_convention():
    pos = spherical_to_cartesian(
        torch.tensor([0.0, 0.0, 90.0, 30.0]), torch.tensor([0.0, 90.0, 0.0, 180.0]), torch.tensor([2.0, 1.0, 1.5, 1.0])
    )
    expected = torch.tensor(
        [[2.0, 0, 0], [0, 1.0, 0], [0, 0, 1.5], [-math.cos(math.pi / 6), 0, 0.5]]
    )
    torch.testing.assert_close(pos, expected, atol=1e-6, rtol=0)


def test_camera_at_azimuth0_elevation0_sits_on_plus_x_and_looks_at_origin():
    pos = spherical_to_cartesian(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([1.5]))
    c2w = look_at_c2w(pos)[0]
    torch.testing.assert_close(c2w[:3, 3], torch.tensor([1.5, 0.0, 0.0]))
    # OpenGL: the camera looks down its -z axis, i.e. from +x towards the origin
    torch.testing.assert_close(-c2w[:3, 2], torch.tensor([-1.0, 0.0, 0.0]))
    torch.testing.assert_close(c2w[:3, 1], torch.tensor([0.0, 0.0, 1.0]))  # up = world +z
    torch.testing.assert_close(c2w[:3, 0], torch.tensor([0.0, 1.0, 0.0]))  # right = world +y
    torch.testing.assert_close(c2w[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_look_at_is_orthonormal_right_handed_and_handles_poles():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(64, 3, generator=g) * 2
    center = torch.randn(64, 3, generator=g) * 0.2
    up = torch.tensor([0.0, 0.0, 1.0]) + 0.05 * torch.randn(64, 3, generator=g)
    c2w = look_at_c2w(pos, center, up)
    rot = c2w[:, :3, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3).expand(64, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(64), atol=1e-5, rtol=0)
    forward = torch.nn.functional.normalize(center - pos, dim=-1)
    torch.testing.assert_close(-rot[:, :, 2], forward, atol=1e-5, rtol=0)
    torch.testing.assert_close(c2w_to_w2c(c2w) @ c2w, torch.eye(4).expand(64, 4, 4), atol=1e-5, rtol=0)
    # camera straight above: view direction parallel to up, still a valid frame
    top = look_at_c2w(torch.tensor([[0.0, 0.0, 2.0]]))[0]
    assert torch.isfinite(top).all()
    torch.testing.assert_close(top[:3, :3].T @ top[:3, :3], torch.eye(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(-top[:3, 2], torch.tensor([0.0, 0.0, -1.0]))


def test_ray_directions_pixel_centres_row0_is_top():
    H, W, f = 4, 6, 3.0
    d = get_ray_directions(H, W, f)
    assert d.shape == (H, W, 3)
    for i in range(H):
        for j in range(W):
            torch.testing.assert_close(
                d[i, j], torch.tensor([(j + 0.5 - W / 2) / f, -(i + 0.5 - H / 2) / f, -1.0])
            )
    assert (d[0, :, 1] > 0).all() and (d[-1, :, 1] < 0).all()  # top row points up
    assert (d[:, 0, 0] < 0).all() and (d[:, -1, 0] > 0).all()  # left column points left
    batched = get_ray_directions(H, W, torch.tensor([3.0, 6.0]))
    assert batched.shape == (2, H, W, 3)
    torch.testing.assert_close(batched[0], d)
    torch.testing.assert_close(batched[1, ..., :2], d[..., :2] / 2)


def test_centre_ray_passes_through_look_at_point():
    g = torch.Generator().manual_seed(1)
    B, H, W = 16, 5, 7  # odd sizes: pixel (2, 3) is the principal point
    pos = torch.randn(B, 3, generator=g) * 2
    center = torch.randn(B, 3, generator=g) * 0.3
    c2w = look_at_c2w(pos, center)
    rays_o, rays_d = get_rays(get_ray_directions(H, W, 4.0), c2w)
    assert rays_o.shape == rays_d.shape == (B, H, W, 3)
    torch.testing.assert_close(rays_d.norm(dim=-1), torch.ones(B, H, W))
    o, d = rays_o[:, 2, 3], rays_d[:, 2, 3]
    to_center = center - o
    distance = torch.linalg.cross(to_center, d, dim=-1).norm(dim=-1)  # point-to-line distance
    assert distance.max() < 1e-5
    assert ((to_center * d).sum(-1) > 0).all()  # the centre is in front of the camera
    flat_o, flat_d = get_rays(get_ray_directions(H, W, 4.0), c2w, keepdim=False, normalize=False)
    assert flat_d.shape == (B * H * W, 3)
    # unnormalised directions keep z = -1 in camera space
    torch.testing.assert_close((c2w_to_w2c(c2w)[:, None, :3, :3] @ flat_d.view(B, -1, 3, 1))[..., 2, 0],
                               -torch.ones(B, H * W), atol=1e-5, rtol=0)


def test_projection_matrix_maps_frustum_to_ndc():
    fovy, aspect, near, far = torch.tensor([math.radians(60.0)]), 1.5, 0.1, 10.0
    proj = get_projection_matrix(fovy, aspect, near, far)
    t = math.tan(math.radians(30.0))
    pts = torch.tensor([[[0.0, 0.0, -near], [0.0, 0.0, -far], [aspect * t * 2, t * 2, -2.0]]])
    ndc, w = project_points(pts, proj)
    torch.testing.assert_close(ndc[0, 0, 2], torch.tensor(-1.0))
    torch.testing.assert_close(ndc[0, 1, 2], torch.tensor(1.0))
    torch.testing.assert_close(ndc[0, 2, :2], torch.tensor([1.0, 1.0]))  # top-right frustum corner
    torch.testing.assert_close(w[0], torch.tensor([near, far, 2.0]))


@pytest.mark.parametrize("H,W", [(6, 10), (9, 5)])
def test_mvp_reprojects_ray_points_to_their_pixel(H, W):
    dataset = RandomCameraIterableDataset({"height": H, "width": W, "batch_size": 4, "seed": 3})
    batch = dataset.sample()
    B = 4
    t = torch.rand(B, H, W, 1, generator=torch.Generator().manual_seed(0)) * 2.5 + 0.3
    points = batch["rays_o"] + t * batch["rays_d"]  # [B, H, W, 3]
    ndc, w = project_points(points.view(B, -1, 3), batch["mvp_mtx"])
    assert (w > 0).all() and (ndc[..., 2].abs() <= 1).all()
    pix = ndc_to_pixel(ndc[..., :2], H, W).view(B, H, W, 2)
    rows, cols = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    torch.testing.assert_close(pix[..., 0], cols.expand(B, H, W), atol=2e-3, rtol=0)
    torch.testing.assert_close(pix[..., 1], rows.expand(B, H, W), atol=2e-3, rtol=0)
    # row 0 <=> top of the image <=> NDC y near +1
    ndc_img = ndc.view(B, H, W, 3)
    torch.testing.assert_close(ndc_img[:, 0, :, 1], torch.full((B, W), 1 - 1 / H), atol=1e-3, rtol=0)
    # the batch's matrices agree with each other
    torch.testing.assert_close(batch["mvp_mtx"], get_mvp_matrix(batch["c2w"], batch["proj_mtx"]))
    torch.testing.assert_close(
        batch["proj_mtx"], get_projection_matrix(batch["fovy"], W / H, dataset.cfg.near, dataset.cfg.far)
    )
    torch.testing.assert_close(batch["c2w"][:, :3, 3], batch["camera_positions"])
    torch.testing.assert_close(batch["rays_o"][:, 0, 0], batch["camera_positions"])


def test_focal_matches_fovy():
    fovy = math.radians(40.0)
    assert focal_from_fovy(fovy, 64) == pytest.approx(32 / math.tan(math.radians(20.0)))
    d = get_ray_directions(64, 64, focal_from_fovy(fovy, 64))
    # the top edge (not pixel centre) of the image is at half-angle fovy/2
    top_edge = d[0, 32, 1] + 0.5 / focal_from_fovy(fovy, 64)
    assert math.degrees(math.atan(top_edge)) == pytest.approx(20.0, abs=1e-4)


# ---------------------------------------------------------------- random cameras: sampling
def _mixture_cdf(x_deg: np.ndarray, lo: float, hi: float) -> np.ndarray:
    angle = (x_deg - lo) / (hi - lo)
    s = np.sin(np.radians(x_deg))
    sphere = (s - math.sin(math.radians(lo))) / (math.sin(math.radians(hi)) - math.sin(math.radians(lo)))
    return 0.5 * angle + 0.5 * sphere


def test_elevation_is_half_uniform_angle_half_uniform_sphere():
    lo, hi = -10.0, 90.0
    dataset = RandomCameraIterableDataset({"batch_size": 8, "seed": 0, "elevation_range": [lo, hi]})
    elev = torch.cat([dataset.sample_poses()["elevation"] for _ in range(1000)]).numpy()
    assert elev.min() >= lo - 1e-4 and elev.max() <= hi + 1e-4
    xs = np.sort(elev)
    empirical = np.arange(1, len(xs) + 1) / len(xs)
    ks_mixture = np.abs(empirical - _mixture_cdf(xs, lo, hi)).max()
    ks_angle = np.abs(empirical - (xs - lo) / (hi - lo)).max()
    assert ks_mixture < 0.03, ks_mixture
    assert ks_angle > 0.06, ks_angle  # a pure uniform-in-angle sampler would fail (it differs by ~0.09)


def test_stratified_azimuth_covers_the_range():
    B = 8
    dataset = RandomCameraIterableDataset({"batch_size": B, "seed": 1})
    all_az = []
    for _ in range(50):
        az = dataset.sample_poses()["azimuth"]
        slot = torch.floor((az + 180.0) / (360.0 / B))
        assert torch.equal(slot, torch.arange(B).float())  # one sample per slice of the range
        all_az.append(az)
    all_az = torch.cat(all_az)
    hist = torch.histc(all_az, bins=16, min=-180, max=180)
    assert (hist > 0).all()
    assert all_az.min() >= -180 and all_az.max() <= 180
    # without stratification a batch of 8 often leaves a slice empty
    plain = RandomCameraIterableDataset({"batch_size": B, "seed": 1, "batch_uniform_azimuth": False})
    empty = 0
    for _ in range(50):
        slot = torch.floor((plain.sample_poses()["azimuth"] + 180.0) / (360.0 / B))
        empty += len(set(range(B)) - set(slot.int().tolist())) > 0
    assert empty > 25


def test_train_batch_keys_shapes_and_ranges():
    cfg = {"height": 6, "width": 8, "batch_size": 5, "seed": 2, "camera_distance_range": [1.0, 1.5],
           "fovy_range": [40, 70], "light_distance_range": [0.8, 1.5]}
    dm = RandomCameraDataModule(cfg)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == set(CAMERA_BATCH_KEYS)
    B, H, W = 5, 6, 8
    for key in ("rays_o", "rays_d"):
        assert batch[key].shape == (B, H, W, 3) and batch[key].dtype == torch.float32
    for key in ("mvp_mtx", "c2w", "proj_mtx"):
        assert batch[key].shape == (B, 4, 4)
    for key in ("camera_positions", "light_positions"):
        assert batch[key].shape == (B, 3)
    for key in ("elevation", "azimuth", "camera_distances", "fovy"):
        assert batch[key].shape == (B,)
    assert batch["height"] == H and batch["width"] == W
    assert isinstance(batch["height"], int)
    torch.testing.assert_close(batch["rays_d"].norm(dim=-1), torch.ones(B, H, W))
    assert ((batch["camera_distances"] >= 1.0) & (batch["camera_distances"] <= 1.5)).all()
    fovy_deg = torch.rad2deg(batch["fovy"])
    assert ((fovy_deg >= 40) & (fovy_deg <= 70)).all()
    light_r = batch["light_positions"].norm(dim=-1)
    assert ((light_r >= 0.8 - 1e-5) & (light_r <= 1.5 + 1e-5)).all()
    # perturbations are bounded: camera position within camera_perturb (0.1) per axis of the orbit
    orbit = spherical_to_cartesian(batch["elevation"], batch["azimuth"], batch["camera_distances"])
    assert (batch["camera_positions"] - orbit).abs().max() <= 0.1 + 1e-6
    assert (batch["camera_positions"] - orbit).abs().max() > 0


def test_no_perturbation_gives_exact_orbit_cameras():
    dataset = RandomCameraIterableDataset(
        {"height": 3, "width": 3, "batch_size": 4, "seed": 0, "camera_perturb": 0.0, "center_perturb": 0.0,
         "up_perturb": 0.0}
    )
    batch = dataset.sample()
    orbit = spherical_to_cartesian(batch["elevation"], batch["azimuth"], batch["camera_distances"])
    torch.testing.assert_close(batch["camera_positions"], orbit)
    centre_ray = batch["rays_d"][:, 1, 1]
    torch.testing.assert_close(centre_ray, -orbit / orbit.norm(dim=-1, keepdim=True), atol=1e-5, rtol=0)


def test_light_sampling_strategies():
    n = 400
    dream = RandomCameraIterableDataset({"batch_size": n, "seed": 0, "light_position_perturb": 0.0})
    poses = dream.sample_poses()
    cos = torch.nn.functional.cosine_similarity(poses["light_positions"], poses["camera_positions"], dim=-1)
    torch.testing.assert_close(cos, torch.ones(n), atol=1e-5, rtol=0)  # no perturbation: light on camera axis

    magic = RandomCameraIterableDataset({"batch_size": n, "seed": 0, "light_sample_strategy": "magic3d",
                                         "elevation_range": [-90, 90]})
    poses = magic.sample_poses()
    angle = torch.rad2deg(torch.arccos(torch.nn.functional.cosine_similarity(
        poses["light_positions"], poses["camera_positions"], dim=-1).clamp(-1, 1)))
    assert angle.max() <= 60.0 + 1e-3
    assert angle.max() > 50.0 and angle.min() < 10.0  # fills the cone
    r = poses["light_positions"].norm(dim=-1)
    assert ((r >= 0.8 - 1e-5) & (r <= 1.5 + 1e-5)).all()


def test_progressive_resolution_switches_at_milestone():
    dm = RandomCameraDataModule({"height": [8, 16], "width": [6, 12], "batch_size": [4, 2],
                                 "resolution_milestones": [10], "seed": 0})
    ds = dm.train_dataset
    assert ds.sample()["rays_o"].shape == (4, 8, 6, 3)
    ds.do_update_step(0, 9)
    batch = ds.sample()
    assert batch["rays_o"].shape == (4, 8, 6, 3) and batch["height"] == 8 and batch["width"] == 6
    ds.do_update_step(0, 10)
    batch = ds.sample()
    assert batch["rays_o"].shape == (2, 16, 12, 3) and batch["height"] == 16 and batch["width"] == 12
    assert batch["proj_mtx"][0, 0, 0] == pytest.approx(batch["proj_mtx"][0, 1, 1].item() * 16 / 12)
    # scalars broadcast over the stages
    ds2 = RandomCameraDataModule({"height": [8, 16], "width": [8, 16], "batch_size": 3,
                                  "resolution_milestones": [5]}).train_dataset
    ds2.do_update_step(0, 100)
    assert ds2.sample()["rays_o"].shape == (3, 16, 16, 3)


def test_progressive_view_ranges_widen():
    ds = RandomCameraIterableDataset({"batch_size": 16, "seed": 0, "progressive_until": 100,
                                      "eval_elevation_deg": 15.0})
    ds.do_update_step(0, 0)
    poses = ds.sample_poses()
    torch.testing.assert_close(poses["elevation"], torch.full((16,), 15.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(poses["azimuth"], torch.zeros(16))
    ds.do_update_step(0, 50)
    assert ds.azimuth_range == (-90.0, 90.0)
    ds.do_update_step(0, 100)
    assert ds.elevation_range == (-10.0, 90.0) and ds.azimuth_range == (-180.0, 180.0)


def test_sampling_is_reproducible_and_resumable():
    a = RandomCameraDataModule({"height": 4, "width": 4, "batch_size": 3, "seed": 7})
    b = RandomCameraDataModule({"height": 4, "width": 4, "batch_size": 3, "seed": 7})
    c = RandomCameraDataModule({"height": 4, "width": 4, "batch_size": 3, "seed": 8})
    ba, bb, bc = a.train_dataset.sample(), b.train_dataset.sample(), c.train_dataset.sample()
    torch.testing.assert_close(ba["c2w"], bb["c2w"])
    assert not torch.allclose(ba["c2w"], bc["c2w"])
    state = a.state_dict()
    next_a = a.train_dataset.sample()
    b.load_state_dict(state)
    torch.testing.assert_close(b.train_dataset.sample()["rays_d"], next_a["rays_d"])
    # seed null: follows the global torch seed (pl.seed_everything)
    torch.manual_seed(123)
    d = RandomCameraDataModule({"height": 4, "width": 4})
    torch.manual_seed(123)
    e = RandomCameraDataModule({"height": 4, "width": 4})
    torch.testing.assert_close(d.train_dataset.sample()["c2w"], e.train_dataset.sample()["c2w"])


# ---------------------------------------------------------------- random cameras: eval
def test_test_turntable_has_120_frames_over_360_degrees():
    dm = RandomCameraDataModule({**SMALL_EVAL, "eval_batch_size": 4})
    batches = list(dm.test_dataloader())
    assert len(batches) == 30
    assert set(batches[0]) == set(CAMERA_BATCH_KEYS) | {"index"}
    index = torch.cat([b["index"] for b in batches])
    assert index.dtype == torch.long and torch.equal(index, torch.arange(120))
    azimuth = torch.cat([b["azimuth"] for b in batches])
    assert azimuth.min() >= -180 and azimuth.max() < 180
    steps = torch.remainder(azimuth.roll(-1) - azimuth, 360.0)  # consecutive frames, wrapping
    torch.testing.assert_close(steps, torch.full((120,), 3.0), atol=1e-4, rtol=0)  # 120 x 3° = 360°
    assert azimuth[0] == 0.0
    first = batches[0]
    assert first["rays_o"].shape == (4, 4, 6, 3) and first["height"] == 4 and first["width"] == 6
    torch.testing.assert_close(first["elevation"], torch.full((4,), 15.0))
    torch.testing.assert_close(first["camera_distances"], torch.full((4,), 1.5))
    torch.testing.assert_close(first["fovy"], torch.full((4,), math.radians(70.0)))
    torch.testing.assert_close(first["camera_positions"].norm(dim=-1), torch.full((4,), 1.5))
    torch.testing.assert_close(first["light_positions"], first["camera_positions"])
    elev = torch.rad2deg(torch.asin(first["camera_positions"][:, 2] / 1.5))
    torch.testing.assert_close(elev, torch.full((4,), 15.0), atol=1e-4, rtol=0)
    val = list(dm.val_dataloader())
    assert len(val) == 1 and val[0]["index"].tolist() == [0]
    assert len(list(dm.predict_dataloader())) == 30


def test_val_views_are_evenly_spaced():
    dm = RandomCameraDataModule({**SMALL_EVAL, "n_val_views": 4, "eval_batch_size": 2})
    azimuth = torch.cat([b["azimuth"] for b in dm.val_dataloader()])
    torch.testing.assert_close(azimuth, torch.tensor([0.0, 90.0, -180.0, -90.0]))


# ---------------------------------------------------------------- random cameras: config errors
@pytest.mark.parametrize(
    "cfg,needle",
    [
        ({"height": [64, 128], "width": [64, 128]}, "data.resolution_milestones"),
        ({"height": [64, 128], "width": [64, 128, 256], "resolution_milestones": [5]}, "data.width"),
        ({"height": [64, 128], "width": [64, 128], "resolution_milestones": [5, 3]}, "strictly increasing"),
        ({"elevation_range": [90, -10]}, "data.elevation_range"),
        ({"elevation_range": [-100, 90]}, "data.elevation_range"),
        ({"camera_distance_range": [0.0, 1.0]}, "data.camera_distance_range"),
        ({"fovy_range": [70]}, "data.fovy_range = [70.0] is not a pair"),
        ({"fovy_range": [40, 70, 80]}, "data.fovy_range = [40.0, 70.0, 80.0] is not a pair"),
        ({"light_sample_strategy": "sun"}, "dreamfusion, magic3d"),
        ({"height": 0}, "data.height"),
        ({"n_test_views": 0}, "data.n_test_views"),
        ({"near": 1.0, "far": 0.5}, "data.far"),
        ({"camera_perturb": -1.0}, "data.camera_perturb"),
        ({"heigth": 64}, "unknown config key 'data.heigth'"),
    ],
)
def test_random_camera_config_errors(cfg, needle):
    with pytest.raises(ConfigError) as info:
        RandomCameraDataModule(cfg)
    assert needle in str(info.value)


def test_validate_config_accepts_threestudio_style_config():
    cfg = OmegaConf.create({"height": [64, 128, 256], "width": [64, 128, 256], "batch_size": [12, 8, 4],
                            "resolution_milestones": [200, 300], "elevation_range": [-10, 80],
                            "light_sample_strategy": "magic3d", "eval_elevation_deg": 15.0})
    parsed = parse_structured(RandomCameraDataModule.Config, cfg, "data")
    RandomCameraDataModule.validate_config(parsed)
    RandomCameraDataModule.validate_config(cfg)  # a raw mapping works too
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RandomCameraDataModule.validate_config({"height": 64, "resolution_milestones": [10]})
    assert any("ignored" in str(w.message) for w in caught)
    assert find("random-camera-datamodule") is RandomCameraDataModule
    assert find("single-image-datamodule") is SingleImageDataModule
    assert name_of(SingleImageDataModule) == "single-image-datamodule"


# ---------------------------------------------------------------- single image
def _write_rgba(path, size=(20, 16)):
    """An RGBA image: a red disc (opaque) on a transparent background, 20 wide x 16 high."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (xx + 0.5 - w / 2) ** 2 + (yy + 0.5 - h / 2) ** 2 < (min(w, h) * 0.35) ** 2
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 1] = 30
    rgba[..., 3] = np.where(inside, 255, 0)
    Image.fromarray(rgba, "RGBA").save(path)
    return path


@pytest.fixture
def rgba_path(tmp_path):
    return str(_write_rgba(tmp_path / "disc_rgba.png", size=(16, 16)))


def _single_cfg(image_path, **overrides):
    cfg = {"image_path": image_path, "height": 8, "width": 8, "seed": 0,
           "random_camera": {"height": 4, "width": 4, "batch_size": 3, **SMALL_EVAL}}
    cfg.update(overrides)
    return cfg


def test_load_rgba_values(rgba_path):
    rgb, mask = load_rgba(rgba_path, 8, 8)
    assert rgb.shape == (8, 8, 3) and mask.shape == (8, 8, 1)
    assert rgb.dtype == torch.float32 and 0 <= rgb.min() and rgb.max() <= 1
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask[4, 4, 0] == 1 and mask[0, 0, 0] == 0
    torch.testing.assert_close(rgb[4, 4], torch.tensor([200 / 255, 30 / 255, 0.0]), atol=1e-3, rtol=0)


def test_single_image_batch_shapes_and_repeat(rgba_path):
    dm = SingleImageDataModule(_single_cfg(rgba_path, batch_size=2))
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == set(CAMERA_BATCH_KEYS) | {"rgb", "alpha", "mask", "random_camera"}
    assert batch["rgb"].shape == (2, 8, 8, 3) and batch["mask"].shape == (2, 8, 8, 1)
    assert batch["rays_o"].shape == (2, 8, 8, 3) and batch["c2w"].shape == (2, 4, 4)
    for key in ("elevation", "azimuth", "camera_distances", "fovy"):
        assert batch[key].shape == (2,)
    for key in ("rgb", "mask", "rays_d", "mvp_mtx", "camera_positions"):
        torch.testing.assert_close(batch[key][0], batch[key][1])  # the reference view, repeated
    # default reference camera: elevation 0, azimuth 0, distance 1.2 -> on +x, light at the camera
    torch.testing.assert_close(batch["camera_positions"][0], torch.tensor([1.2, 0.0, 0.0]))
    torch.testing.assert_close(batch["light_positions"], batch["camera_positions"])
    torch.testing.assert_close(batch["fovy"], torch.full((2,), math.radians(60.0)))
    assert batch["mask"][0, 4, 4, 0] == 1 and batch["mask"][0, 0, 0, 0] == 0
    rc = batch["random_camera"]
    assert set(rc) == set(CAMERA_BATCH_KEYS)
    assert rc["rays_o"].shape == (3, 4, 4, 3) and rc["height"] == 4
    # eval: the random camera's turntable
    test = list(dm.test_dataloader())
    assert len(test) == 120 and test[0]["rays_o"].shape == (1, 4, 6, 3) and test[0]["index"].tolist() == [0]


def test_single_image_reference_camera_and_noise(rgba_path):
    dm = SingleImageDataModule(_single_cfg(rgba_path, default_elevation_deg=15.0, default_azimuth_deg=90.0,
                                           default_camera_distance=1.5, default_fovy_deg=39.6,
                                           rays_noise_scale=0.01, batch_size=2, use_random_camera=False))
    ds = dm.train_dataset
    b1, b2 = ds.sample(), ds.sample()
    assert "random_camera" not in b1
    expected = spherical_to_cartesian(15.0, 90.0, 1.5)
    torch.testing.assert_close(b1["camera_positions"][0], expected)
    assert not torch.allclose(b1["rays_d"], b2["rays_d"])  # fresh noise every batch
    assert not torch.allclose(b1["rays_d"][0], b1["rays_d"][1])
    torch.testing.assert_close(b1["rays_d"].norm(dim=-1), torch.ones(2, 8, 8))
    clean = SingleImageDataModule(_single_cfg(rgba_path, default_elevation_deg=15.0, default_azimuth_deg=90.0,
                                              default_camera_distance=1.5, default_fovy_deg=39.6)).train_dataset.sample()
    assert (b1["rays_d"] - clean["rays_d"]).abs().max() < 0.1


def test_single_image_progressive_resolution(rgba_path):
    dm = SingleImageDataModule(_single_cfg(rgba_path, height=[4, 8], width=[4, 8], resolution_milestones=[5],
                                           random_camera={"height": [2, 4], "width": [2, 4], "batch_size": 1,
                                                          "resolution_milestones": [7]}))
    ds = dm.train_dataset
    b = ds.sample()
    assert b["rgb"].shape == (1, 4, 4, 3) and b["random_camera"]["height"] == 2
    ds.do_update_step(0, 5)
    b = ds.sample()
    assert b["rgb"].shape == (1, 8, 8, 3) and b["rays_o"].shape == (1, 8, 8, 3) and b["height"] == 8
    assert b["random_camera"]["height"] == 2
    ds.do_update_step(0, 7)
    assert ds.sample()["random_camera"]["rays_o"].shape == (1, 4, 4, 3)


def test_unknown_key_under_random_camera(rgba_path):
    with pytest.raises(ConfigError) as info:
        SingleImageDataModule(_single_cfg(rgba_path, random_camera={"heigth": 64}))
    assert "data.random_camera.heigth" in str(info.value) and "height" in str(info.value)
    # dot-list overrides reach the nested config
    cfg = OmegaConf.merge(OmegaConf.create(_single_cfg(rgba_path)),
                          OmegaConf.from_dotlist(["random_camera.height=5", "random_camera.width=7"]))
    batch = SingleImageDataModule(cfg).train_dataset.sample()
    assert batch["random_camera"]["rays_o"].shape == (3, 5, 7, 3)
    with pytest.raises(ConfigError) as info:
        SingleImageDataModule(_single_cfg(rgba_path, random_camera={"elevation_range": [50, 0]}))
    assert "data.random_camera.elevation_range" in str(info.value)


def test_missing_image_fails_at_construction(tmp_path):
    missing = str(tmp_path / "nope_rgba.png")
    with pytest.raises(ConfigError) as info:
        SingleImageDataModule(_single_cfg(missing))
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ImageNotFoundError)
    assert missing in str(info.value) and "data.image_path" in str(info.value)
    with pytest.raises(ConfigError, match="data.image_path is empty"):
        SingleImageDataModule(_single_cfg(""))


def test_image_without_alpha_fails(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    with pytest.raises(ConfigError) as info:
        SingleImageDataModule(_single_cfg(str(path)))
    msg = str(info.value)
    assert "no alpha channel" in msg and "RGBA" in msg and "transparent background" in msg
    assert str(path) in msg and "data.image_path" in msg
    opaque = tmp_path / "opaque_rgba.png"
    Image.new("RGBA", (8, 8), (10, 20, 30, 255)).save(opaque)
    with pytest.raises(ConfigError, match="fully opaque"):
        SingleImageDataModule.validate_config(_single_cfg(str(opaque)))
    empty = tmp_path / "empty_rgba.png"
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(empty)
    with pytest.raises(ConfigError, match="fully transparent"):
        SingleImageDataModule.validate_config(_single_cfg(str(empty)))


def test_palette_and_grey_alpha_images_are_accepted(tmp_path):
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (2, 2, 6, 6))  # a red 4x4 square, index 0 transparent
    path = tmp_path / "palette.png"
    pal.save(path, transparency=0)
    rgb, mask = load_rgba(str(path), 8, 8)
    assert mask.sum() == 16 and mask[3, 3, 0] == 1 and mask[0, 0, 0] == 0
    torch.testing.assert_close(rgb[3, 3], torch.tensor([1.0, 0.0, 0.0]))
    alpha = Image.new("L", (8, 8), 0)
    alpha.paste(255, (0, 0, 4, 8))
    la = tmp_path / "la.png"
    Image.merge("LA", [Image.new("L", (8, 8), 128), alpha]).save(la)
    rgb, mask = load_rgba(str(la), 8, 8)
    torch.testing.assert_close(rgb[:, :4, 0], torch.full((8, 4), 128 / 255))
    torch.testing.assert_close(rgb[..., 0], rgb[..., 1])  # grey converted to RGB
    assert mask.sum() == 32


def test_corrupt_image_fails(tmp_path):
    junk = tmp_path / "junk_rgba.png"
    junk.write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(ConfigError) as info:
        SingleImageDataModule(_single_cfg(str(junk)))
    assert "corrupt or not an image" in str(info.value) and str(junk) in str(info.value)
    good = _write_rgba(tmp_path / "good_rgba.png", size=(64, 64))
    truncated = tmp_path / "truncated_rgba.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ConfigError, match="corrupt or not an image"):
        SingleImageDataModule.validate_config(_single_cfg(str(truncated)))


def test_stretched_image_warns(tmp_path):
    path = _write_rgba(tmp_path / "wide_rgba.png", size=(20, 10))
    with pytest.warns(UserWarning, match="stretched"):
        rgb, mask = load_rgba(str(path), 8, 8)
    assert rgb.shape == (8, 8, 3)


def test_requires_depth_is_rejected(rgba_path):
    with pytest.raises(ConfigError, match="data.requires_depth"):
        SingleImageDataModule(_single_cfg(rgba_path, requires_depth=True))


def test_single_image_state_dict_resumes(rgba_path):
    a = SingleImageDataModule(_single_cfg(rgba_path))
    b = SingleImageDataModule(_single_cfg(rgba_path))
    a.train_dataset.sample()
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.train_dataset.sample()["random_camera"]["c2w"],
                               b.train_dataset.sample()["random_camera"]["c2w"])
