"""StyleAvatar3D (issue #18, custom/styleavatar3d): pose bins, the coarse-to-fine label sampling of the
pose-aware discriminator, and flip augmentation with mirrored labels."""
import math

import pytest
import torch

from lift3d.errors import ConfigError
from lift3d.gan.camera_label import look_at_labels, split_label
from lift3d.plugins import load_plugins

load_plugins()

from custom.styleavatar3d.flip_augmentation import flip_images_and_labels, mirror_labels  # noqa: E402
from custom.styleavatar3d.pose_aware_discriminator import PoseAwareDiscriminator  # noqa: E402
from custom.styleavatar3d.pose_bins import PoseBinning, bin_index, yaw_pitch_from_labels  # noqa: E402

TINY_D = dict(image_resolution=16, channel_base=256, channel_max=16, cmap_dim=8)


def toy_labels(elevation, azimuth):
    e, a = torch.tensor(elevation, dtype=torch.float32), torch.tensor(azimuth, dtype=torch.float32)
    return look_at_labels(e, a, torch.full_like(e, 2.0), 40.0)


def test_yaw_pitch_of_toy_cameras_are_azimuth_and_elevation():
    labels = toy_labels([0.0, 20.0, -25.0, 10.0], [0.0, 90.0, -135.0, 170.0])
    yaw, pitch = yaw_pitch_from_labels(labels)
    assert torch.allclose(yaw, torch.tensor([0.0, 90.0, -135.0, 170.0]), atol=1e-3)
    assert torch.allclose(pitch, torch.tensor([0.0, 20.0, -25.0, 10.0]), atol=1e-3)


@pytest.mark.parametrize("value,lo,hi,n,expected", [
    (-180.0, -180.0, 180.0, 36, 0), (-170.0001, -180.0, 180.0, 36, 0), (-170.0, -180.0, 180.0, 36, 1),
    (-0.0001, -180.0, 180.0, 36, 17), (0.0, -180.0, 180.0, 36, 18), (179.999, -180.0, 180.0, 36, 35),
    (180.0, -180.0, 180.0, 36, 35), (-90.0, -180.0, 180.0, 4, 1), (89.999, -180.0, 180.0, 4, 2),
    (90.0, -180.0, 180.0, 4, 3), (-30.0, -30.0, 30.0, 6, 0), (-20.0, -30.0, 30.0, 6, 1), (30.0, -30.0, 30.0, 6, 5),
    (45.0, -30.0, 30.0, 6, 5), (-45.0, -30.0, 30.0, 6, 0), (0.0, -30.0, 30.0, 2, 1), (-1e-4, -30.0, 30.0, 2, 0),
])
def test_bins_at_their_edges(value, lo, hi, n, expected):
    assert int(bin_index(torch.tensor([value]), lo, hi, n)[0]) == expected


def test_one_hots_name_the_bins_of_yaw_and_pitch():
    b = PoseBinning()
    fine, coarse = b.one_hots(torch.tensor([-175.0, 95.0]), torch.tensor([-29.0, 12.0]))
    assert fine.shape == (2, 42) and coarse.shape == (2, 6)
    assert fine.sum(1).tolist() == [2.0, 2.0] and coarse.sum(1).tolist() == [2.0, 2.0]
    assert fine[0].nonzero().flatten().tolist() == [0, 36 + 0]
    assert fine[1].nonzero().flatten().tolist() == [27, 36 + 4]  # 95° -> bin 27; 12° -> bin 4
    assert coarse[1].nonzero().flatten().tolist() == [3, 4 + 1]


def test_label_sampling_follows_p_high_and_p_low():
    b = PoseBinning(p_high=0.8, p_low=0.25, confident_yaw_deg=45.0)
    n = 20000
    yaw = torch.cat([torch.full((n,), 30.0), torch.full((n,), -150.0)])
    pitch = torch.zeros(2 * n)
    labels, keep_fine = b.sample_labels(yaw, pitch, generator=torch.Generator().manual_seed(0))
    for part, p in ((keep_fine[:n], 0.8), (keep_fine[n:], 0.25)):
        count = int(part.sum())
        assert abs(count - n * p) < 5 * math.sqrt(n * p * (1 - p)), (count, n * p)
    fine_on = labels[:, :b.fine_dim].sum(1)
    coarse_on = labels[:, b.fine_dim:].sum(1)
    # exactly one block per image: the fine one (2 ones) where kept, the coarse one (2 ones) otherwise
    assert torch.equal(fine_on, 2.0 * keep_fine.float()) and torch.equal(coarse_on, 2.0 * (~keep_fine).float())


def test_pose_aware_discriminator_logs_its_sampling_and_depends_on_the_pose_label():
    torch.manual_seed(0)
    d = PoseAwareDiscriminator({**TINY_D, "p_high": 1.0, "p_low": 0.0})
    image = torch.randn(8, 3, 16, 16)
    front, back = toy_labels([10.0] * 8, [5.0] * 8), toy_labels([10.0] * 8, [175.0] * 8)
    logits_front = d(image, front)
    stats = d.training_stats()
    assert stats["pose_fine_fraction"] == 1.0 and stats["pose_confident_fraction"] == 1.0
    logits_back = d(image, back)
    assert d.training_stats()["pose_fine_fraction_other"] == 0.0
    assert logits_front.shape == (8, 1) and not torch.allclose(logits_front, logits_back)
    # the 25-D label enters only through the pose bins: a camera 1° away in the same bins gives the same logits
    assert torch.allclose(d(image, toy_labels([11.0] * 8, [6.0] * 8)), logits_front)


@pytest.mark.parametrize("key,value,message", [
    ("p_high", 1.5, "p_high"), ("fine_yaw_bins", 0, "fine_yaw_bins"), ("pitch_range", [30.0, -30.0], "pitch_range"),
    ("front", [0.0, 0.0, 2.0], "parallel"),
])
def test_pose_aware_discriminator_config_errors(key, value, message):
    from lift3d.config import parse_structured

    cfg = parse_structured(PoseAwareDiscriminator.Config, {**TINY_D, key: value}, "system.discriminator", "d")
    with pytest.raises(ConfigError, match=message):
        PoseAwareDiscriminator.validate_config(cfg, "system.discriminator")


def test_flip_mirrors_yaw_and_the_label():
    labels = toy_labels([15.0, -20.0, 0.0], [40.0, -120.0, 180.0])
    images = torch.arange(3 * 3 * 4 * 4, dtype=torch.float32).reshape(3, 3, 4, 4)
    flipped, mirrored = flip_images_and_labels(images, labels)
    assert torch.equal(flipped[..., 0], images[..., -1])
    yaw, pitch = yaw_pitch_from_labels(labels)
    yaw_m, pitch_m = yaw_pitch_from_labels(mirrored)
    assert torch.allclose(pitch_m, pitch, atol=1e-4)
    assert torch.allclose(torch.sin(torch.deg2rad(yaw_m)), -torch.sin(torch.deg2rad(yaw)), atol=1e-5)
    # the mirrored label is the label of the camera at yaw -> -yaw (a proper rotation, same intrinsics)
    assert torch.allclose(mirrored, toy_labels([15.0, -20.0, 0.0], [-40.0, 120.0, -180.0]), atol=1e-5)
    c2w, _ = split_label(mirrored)
    assert torch.allclose(torch.linalg.det(c2w[:, :3, :3]), torch.ones(3), atol=1e-5)
    assert torch.allclose(mirror_labels(mirrored), labels, atol=1e-6)  # an involution


def test_flip_in_eg3d_convention_negates_eg3d_flip_yaw_entries():
    # EG3D's FFHQ frame: y up, a frontal camera on +z; its preprocessing's flip_yaw negates these entries
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    c2w = torch.eye(4)
    c2w[:3, :3] = q * torch.sign(torch.linalg.det(q))
    c2w[:3, 3] = torch.randn(3, generator=g)
    label = torch.cat([c2w.reshape(16), torch.tensor([1.0, 0, 0.5, 0, 1.0, 0.5, 0, 0, 1.0])])[None]
    expected = c2w.clone()
    for i, j in ((0, 1), (0, 2), (1, 0), (2, 0), (0, 3)):
        expected[i, j] *= -1
    mirrored = mirror_labels(label, up=(0.0, 1.0, 0.0), front=(0.0, 0.0, 1.0))
    assert torch.allclose(mirrored[0, :16].reshape(4, 4), expected, atol=1e-6)
