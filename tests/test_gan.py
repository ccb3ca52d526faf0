"""3D-GAN core (#17 point 1): module shapes and the math each module implements (lift3d/gan/)."""
import math

import pytest
import torch

from lift3d.gan.augment import DifferentiableAugment
from lift3d.gan.camera_label import make_label, normalized_intrinsics, opengl_to_opencv_c2w, orbit_labels, rays_from_label, scene_up
from lift3d.gan.ema import ema_beta, update_ema
from lift3d.gan.layers import modulated_conv2d
from lift3d.gan.losses import density_regularization, discriminator_loss, generator_loss, r1_penalty
from lift3d.gan.triplane_decoder import sample_triplane
from lift3d.gan.discriminator import CameraConditionedDiscriminator
from lift3d.gan.triplane_generator import TriPlaneGenerator

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tiny tensors: one thread

TINY_G = dict(z_dim=16, w_dim=16, mapping_layers=2, plane_resolution=16, plane_channels=8, channel_base=256,
              channel_max=16, decoder_hidden=16, decoder_features=8, neural_rendering_resolution=8,
              image_resolution=16, superresolution_channels=8, samples_per_ray=12, ray_start=1.1, ray_end=2.9)
TINY_D = dict(image_resolution=16, channel_base=256, channel_max=16, cmap_dim=8)


def toy_labels(n: int, elevation: float = 20.0, distance: float = 2.0, fovy: float = 40.0) -> torch.Tensor:
    from lift3d.data.cameras import look_at_c2w, spherical_to_cartesian

    azimuth = torch.linspace(-180, 180, n + 1)[:n]
    c2w = look_at_c2w(spherical_to_cartesian(torch.full((n,), elevation), azimuth, torch.full((n,), distance)))
    return make_label(opengl_to_opencv_c2w(c2w), normalized_intrinsics(fovy, n))


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return TriPlaneGenerator(TINY_G)


# ------------------------------------------------------------------ shapes
def test_generator_shapes_with_and_without_superresolution(generator):
    z, c = torch.randn(3, 16), toy_labels(3)
    out = generator(z, c)
    assert out["ws"].shape == (3, generator.backbone.mapping.num_ws, 16)
    assert out["planes"].shape == (3, 3, 8, 16, 16)
    assert out["image_raw"].shape == (3, 3, 8, 8) and out["image"].shape == (3, 3, 16, 16)
    assert out["image_mask"].shape == (3, 1, 8, 8) and out["image_depth"].shape == (3, 1, 8, 8)
    assert out["image_raw"].min() >= -1.0 - 1e-3 and out["image_raw"].max() <= 1.0 + 1e-3
    assert generator.superresolution is not None
    plain = TriPlaneGenerator({**TINY_G, "image_resolution": 8})
    assert plain.superresolution is None and plain(z, c)["image"].shape == (3, 3, 8, 8)
    sigma, colour = generator.query(out["planes"], torch.zeros(3, 5, 3))
    assert sigma.shape == (3, 5, 1) and colour.shape == (3, 5, 8) and (sigma >= 0).all()


def test_eg3d_parameter_names(generator):
    names = set(dict(generator.named_parameters())) | set(dict(generator.named_buffers()))
    for key in ("backbone.mapping.embed.weight", "backbone.mapping.fc0.weight", "backbone.mapping.w_avg",
                "backbone.synthesis.b4.const", "backbone.synthesis.b8.conv0.affine.weight",
                "backbone.synthesis.b16.torgb.weight", "decoder.net.0.weight", "decoder.net.2.bias",
                "superresolution.block0.conv1.weight"):
        assert key in names, key


def test_discriminator_shapes_and_camera_conditioning():
    torch.manual_seed(0)
    d = CameraConditionedDiscriminator(TINY_D)
    image, raw, c = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 8, 8), toy_labels(4)
    logits = d(image, c, raw)
    assert logits.shape == (4, 1)
    other = d(image, toy_labels(4, elevation=-30.0), raw)
    assert not torch.allclose(logits, other)  # the label changes the verdict (projection)
    with pytest.raises(ValueError, match="16x16"):
        d(torch.randn(4, 3, 32, 32), c)


# ------------------------------------------------------------------ StyleGAN2 modulated conv
def test_demodulation_gives_unit_variance_outputs():
    torch.manual_seed(0)
    x = torch.randn(4, 64, 48, 48)  # unit-variance i.i.d. inputs
    weight = torch.randn(32, 64, 3, 3) * 5.0
    styles = torch.exp(torch.randn(4, 64))  # arbitrary positive styles
    y = modulated_conv2d(x, weight, styles, demodulate=True)[:, :, 1:-1, 1:-1]  # interior (no zero padding)
    per_map_std = y.std(dim=(2, 3))  # [4, 32]
    assert y.shape == (4, 32, 46, 46)
    assert (per_map_std - 1.0).abs().max() < 0.1
    raw = modulated_conv2d(x, weight, styles, demodulate=False)[:, :, 1:-1, 1:-1]
    assert raw.std() > 5.0  # without demodulation the scale of w and s comes through


def test_modulated_conv_equals_per_sample_convolution():
    torch.manual_seed(1)
    x, weight, styles = torch.randn(2, 4, 6, 6), torch.randn(3, 4, 3, 3), torch.rand(2, 4) + 0.5
    y = modulated_conv2d(x, weight, styles, demodulate=True)
    for b in range(2):
        w = weight * styles[b][None, :, None, None]
        w = w / w.square().sum(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt()
        ref = torch.nn.functional.conv2d(x[b:b + 1], w, padding=1)
        assert torch.allclose(y[b:b + 1], ref, atol=1e-5)


# ------------------------------------------------------------------ losses
def test_r1_equals_hand_computed_gradient_penalty():
    a = torch.randn(2, 3, 4, 4)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    logits = (torch.tanh(x) * a).flatten(1).sum(1, keepdim=True)  # a tiny D: [B,1]
    hand = ((a * (1 - torch.tanh(x.detach()) ** 2)) ** 2).flatten(1).sum(1).mean()  # ∂D/∂x = a (1 - tanh² x)
    penalty = r1_penalty(logits, [x])
    assert torch.allclose(penalty, hand, rtol=1e-5)
    assert penalty.requires_grad  # create_graph: the penalty can be minimised


def test_nonsaturating_losses():
    real, fake = torch.tensor([[2.0], [0.0]]), torch.tensor([[-1.0], [3.0]])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    assert generator_loss(fake).item() == pytest.approx((sp(1.0) + sp(-3.0)) / 2, rel=1e-6)
    assert discriminator_loss(real, fake).item() == pytest.approx((sp(-1) + sp(3)) / 2 + (sp(-2) + sp(0)) / 2, rel=1e-6)


def test_density_regularisation_penalises_only_non_smooth_density():
    flat = density_regularization(lambda p: torch.ones_like(p[..., :1]), 2, 64, 1.0, 0.01, torch.device("cpu"))
    assert flat.item() == 0.0
    rough = density_regularization(lambda p: torch.sin(200 * p[..., :1]), 2, 256, 1.0, 0.01, torch.device("cpu"))
    assert rough.item() > 0.5


# ------------------------------------------------------------------ geometry of labels and planes
def test_labels_follow_eg3d_opencv_convention():
    """The centre of a toy camera's image looks at the origin; rows go down the world's up axis (z)."""
    label = toy_labels(1)
    origins, dirs = rays_from_label(label, 16)  # [1,256,3]
    to_origin = -origins[0, 0] / origins[0, 0].norm()
    centre = dirs[0].reshape(16, 16, 3)[7:9, 7:9].mean((0, 1))
    assert torch.dot(centre / centre.norm(), to_origin) > 0.999
    rows = dirs[0].reshape(16, 16, 3)[:, 8, 2]  # world z of the direction, top row first
    assert (rows[1:] < rows[:-1]).all()


def test_orbit_keeps_radius_and_height():
    frames = orbit_labels(toy_labels(1)[0], 8, up=scene_up(toy_labels(12)))
    pos = frames[:, [3, 7, 11]]
    assert torch.allclose(pos.norm(dim=1), torch.full((8,), 2.0), atol=1e-5)
    assert torch.allclose(pos[:, 2], pos[0, 2].expand(8), atol=1e-5)
    assert (pos[1] - pos[0]).norm() > 0.5


def test_triplane_sampling_averages_the_three_planes():
    planes = torch.stack([torch.full((2, 4, 4), float(k)) for k in (1, 2, 6)])[None]  # [1,3,2,4,4]
    inside = sample_triplane(planes, torch.tensor([[[0.1, -0.2, 0.3]]]), box_warp=1.0)
    outside = sample_triplane(planes, torch.tensor([[[2.0, 2.0, 2.0]]]), box_warp=1.0)
    assert torch.allclose(inside, torch.full((1, 1, 2), 3.0)) and torch.allclose(outside, torch.zeros(1, 1, 2))


def test_generator_is_view_consistent_by_construction(generator):
    """One latent, two cameras whose pixel-0 rays meet at a 3D point p at the same sample index: the
    density both renders compute at p is the same (one set of planes, camera-independent decoding)."""
    r, n = 8, TINY_G["samples_per_ray"]
    k_sample = 5
    t = TINY_G["ray_start"] + (k_sample + 0.5) * (TINY_G["ray_end"] - TINY_G["ray_start"]) / n
    intr = normalized_intrinsics(40.0, 1)
    intr[:, 0, 2] = intr[:, 1, 2] = 0.5 / r  # pixel (0, 0)'s centre on the optical axis
    from lift3d.data.cameras import look_at_c2w

    p = torch.tensor([[0.1, -0.15, 0.05]])
    cams = []
    for direction in (torch.tensor([[1.0, 0.3, 0.4]]), torch.tensor([[-0.5, 1.0, -0.2]])):
        position = p + direction / direction.norm() * t
        cams.append(make_label(opengl_to_opencv_c2w(look_at_c2w(position, center=p)), intr))
    recorded = []
    query = generator.query

    def recording_query(planes, points):
        sigma, colour = query(planes, points)
        recorded.append((points.detach(), sigma.detach()))
        return sigma, colour

    z = torch.randn(1, 16)
    ws = generator.mapping(z, cams[0])  # fixed conditioning
    generator.query = recording_query
    try:
        with torch.no_grad():
            planes = generator.planes(ws)
            for c in cams:
                generator.render_planes(planes, c)
    finally:
        del generator.query
    (pts_a, sig_a), (pts_b, sig_b) = recorded
    assert torch.allclose(pts_a[0, k_sample], p[0], atol=1e-5) and torch.allclose(pts_b[0, k_sample], p[0], atol=1e-5)
    assert torch.allclose(sig_a[0, k_sample], sig_b[0, k_sample], atol=1e-6)
    assert not torch.allclose(sig_a[0, :n], sig_b[0, :n])  # the rest of the two rays differ


# ------------------------------------------------------------------ EMA and augmentation
def test_ema_update():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    update_ema(a, b, 0.75)
    assert torch.allclose(a.weight, 0.75 * before + 0.25 * b.weight)
    assert ema_beta(32, 10_000, 1e9) == pytest.approx(0.5 ** (32 / 10_000))
    assert ema_beta(32, 10_000, 320, rampup=0.05) == pytest.approx(0.5 ** (32 / 16))


def test_augmentation_is_identity_at_p0_and_differentiable_at_p1():
    torch.manual_seed(0)
    x = (torch.rand(4, 6, 16, 16) * 2 - 1).requires_grad_()
    assert torch.equal(DifferentiableAugment(0.0)(x), x)
    aug = DifferentiableAugment(1.0)
    y = aug(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    aug.adjust(torch.ones(8, 1))  # D too sure of reals: p goes up (already 1: stays clamped)
    assert aug.p.item() == 1.0
    aug.adjust(-torch.ones(100_000, 1))
    assert aug.p.item() == 0.0


def test_system_config_errors_name_the_key():
    from lift3d.errors import ConfigError
    from lift3d.gan.gan_system import GANSystem

    with pytest.raises(ConfigError, match=r"system.discriminator.image_resolution = 32 differs from system.generator.image_resolution = 16"):
        GANSystem.validate_config({"generator": {**TINY_G}, "discriminator": {**TINY_D, "image_resolution": 32}})
    with pytest.raises(ConfigError, match=r"system.generator.plane_resolution = 24 must be a power of two"):
        GANSystem.validate_config({"generator": {**TINY_G, "plane_resolution": 24}, "discriminator": TINY_D})
    with pytest.raises(ConfigError, match=r"system.export_latent = 4: pick a fixed latent in 0..3"):
        GANSystem.validate_config({"generator": TINY_G, "discriminator": TINY_D, "export_latent": 4})


# ------------------------------------------------------------------ the shipped toy GAN (400 steps on red-cube renders)
SHIPPED = "load/gan/toy-red-cube-triplane.pt"


def test_shipped_toy_gan_mesh_matches_its_renders_and_the_data(repo_root):
    """A fixed z's mesh (marching cubes of its density) re-rendered matches its volume renders from
    cameras all around it; the generated silhouettes cover as much of the frame as the true cube's."""
    from lift3d.gan.consistency import mesh_render_iou
    from lift3d.gan.pretrained import load_generator
    from tools.toyworld.eg3d_dataset import TOY_DISTANCE, TOY_FOVY_DEG
    from tools.toyworld.render import render_shape

    g = load_generator(repo_root / SHIPPED)
    labels = toy_labels(8, elevation=15.0, distance=TOY_DISTANCE, fovy=TOY_FOVY_DEG)  # all around the object
    z = torch.randn(4, g.z_dim, generator=torch.Generator().manual_seed(0))
    ious = torch.stack([mesh_render_iou(g, g.mapping(z[k:k + 1], labels[:1]), labels, level=2.0) for k in range(4)])
    print("mesh-vs-render IoU", ious.tolist())
    assert ious.min() > 0.8, ious

    n = 8
    with torch.no_grad():
        masks = g(z.repeat(2, 1), labels)["image_mask"]  # [8,1,32,32]
    _, true_masks = render_shape("cube", "red", torch.full((n,), 15.0), torch.linspace(-180, 180, n + 1)[:n],
                                 torch.full((n,), TOY_DISTANCE), torch.full((n,), TOY_FOVY_DEG), 32)
    generated, true = (masks > 0.5).float().mean().item(), (true_masks > 0.5).float().mean().item()
    print(f"silhouette coverage: generated {generated:.3f}, true cube {true:.3f}")
    assert abs(generated - true) < 0.1 * true, (generated, true)  # within 10 %


def test_source_renders_keep_their_labels_and_depth(repo_root, tmp_path):
    """PODIA-3D step 1: renders of the source GAN with depth, written in EG3D's format and read back."""
    import numpy as np

    from lift3d.gan.eg3d_datamodule import read_eg3d_labels
    from lift3d.gan.pretrained import load_generator
    from lift3d.gan.source_renders import render_source_set, write_eg3d_dataset

    g = load_generator(repo_root / SHIPPED)
    labels = toy_labels(6, elevation=15.0)
    renders = render_source_set(g, labels, seed=3, batch_size=4)
    assert renders["images"].shape == (6, 3, 32, 32) and renders["depth"].shape == (6, 1, 32, 32)
    inside = renders["mask"][:, 0] > 0.9
    assert inside.float().mean() > 0.1
    # the object lies within the unit cube at distance 2: depth within 2 ± 0.87; the centre ray meets the
    # cube's near side (the true cube's at 1.43-1.67; the rendered depth is the weight-averaged distance,
    # a little behind the first surface for a soft density: 1.71-1.81 measured), not its far side (> 2.2)
    depth_inside = renders["depth"][:, 0][inside]
    assert depth_inside.min() > 2 - 0.87 and depth_inside.max() < 2 + 0.87
    # (where the centre is opaque: the 400-step toy GAN leaves see-through spots on some cubes)
    opaque_centre = renders["mask"][:, 0, 15:17, 15:17] > 0.9
    assert opaque_centre.float().mean() >= 0.5
    centre = renders["depth"][:, 0, 15:17, 15:17][opaque_centre]
    assert centre.min() > 1.4 and centre.max() < 1.95, centre
    assert torch.allclose(renders["depth"][:, 0][renders["mask"][:, 0] < 0.01], torch.tensor(g.cfg.ray_end), atol=0.05)
    folder = write_eg3d_dataset(tmp_path / "src", renders["images"], renders["labels"], depth=renders["depth"])
    files, read_labels, resolution = read_eg3d_labels(str(folder))
    assert len(files) == 6 and resolution == 32 and torch.allclose(read_labels, labels)
    assert np.allclose(np.load(folder / "depth" / "img00000002.npy"), renders["depth"][2, 0].numpy())
