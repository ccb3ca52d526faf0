"""zero123-guidance / stable-zero123-guidance on a tiny zero123-xl-shaped model: camera conditioning
relative to the reference view (per sample), CFG against the zero image / zero pose, the SDS gradient."""
import math

import pytest
import torch

from lift3d.errors import ConfigError
from lift3d.guidance.zero123 import reference_image

from tests.helpers import REPO

IMAGE = str(REPO / "load/images/capsule_rgba.png")
REF = {"cond_elevation_deg": 15.0, "cond_azimuth_deg": 30.0, "cond_camera_distance": 3.8}
BATCH = {"elevation": torch.tensor([15.0, 40.0, -5.0]), "azimuth": torch.tensor([30.0, 120.0, -90.0]),
         "camera_distances": torch.tensor([3.8, 3.0, 4.5])}


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tiny models: one thread


def make(path, name="zero123-guidance", **cfg):
    from lift3d.registry import find

    return find(name)({"pretrained_model_name_or_path": str(path), "cond_image_path": IMAGE, **REF, **cfg})


@pytest.fixture(scope="module")
def guidance(tiny_zero123_path):
    return make(tiny_zero123_path, guidance_scale=3.0)


def expected_camera(variant="zero123"):
    """T per sample written out from usd.md §2 (polar = 90° - elevation)."""
    rows = []
    for ele, azi, dist in zip(*(BATCH[k].tolist() for k in ("elevation", "azimuth", "camera_distances"))):
        d_polar = math.radians((90 - ele) - (90 - REF["cond_elevation_deg"]))
        d_az = math.radians(azi - REF["cond_azimuth_deg"])
        last = dist - REF["cond_camera_distance"] if variant == "zero123" else math.radians(90 - REF["cond_elevation_deg"])
        rows.append([d_polar, math.sin(d_az), math.cos(d_az), last])
    return torch.tensor(rows)


def test_camera_embedding_is_relative_to_the_reference_per_sample(guidance, tiny_zero123_path):
    cam = guidance.camera_embedding(BATCH)
    assert torch.allclose(cam, expected_camera("zero123"), atol=1e-6)
    assert cam[0].tolist() == pytest.approx([0.0, 0.0, 1.0, 0.0], abs=1e-6)  # the reference view itself
    stable = make(tiny_zero123_path, name="stable-zero123-guidance")
    assert torch.allclose(stable.camera_embedding(BATCH), expected_camera("stable-zero123"), atol=1e-6)


def test_reference_image_is_composited_on_white_and_encoded(guidance):
    image = reference_image(guidance.cfg.cond_image_path, guidance.resolution, guidance.cfg.cond_background, "k")  # [1,3,64,64]
    assert image.shape == (1, 3, 64, 64)
    assert torch.allclose(image[0, :, 0, 0], torch.ones(3))  # transparent corner -> white
    assert image[0, :, 32, 32].max() < 0.95  # the capsule is coloured
    with torch.no_grad():
        assert torch.allclose(guidance.reference.latents, guidance.model.pipe.encode_image_latents(image), atol=1e-5)
        assert torch.allclose(guidance.reference.embedding, guidance.model.pipe.encode_image_embedding(image), atol=1e-5)
    assert guidance.reference.latents.shape == (1, 4, 8, 8)


def direct_eps(guidance, z_t, t, scale):
    """CFG written out with the pipeline's raw modules: conditional (reference latent, projected
    [CLIP embedding, T]) vs unconditional (zero latent, zero context), one UNet call each."""
    pipe = guidance.model.pipe
    B = z_t.shape[0]
    with torch.no_grad():
        emb = guidance.reference.embedding.expand(B, -1, -1)  # [B,1,D]
        context = pipe.clip_camera_projection(torch.cat([emb, expected_camera()[:, None, :]], dim=-1))
        ref = guidance.reference.latents.expand(B, -1, -1, -1)
        eps_c = pipe.unet(torch.cat([z_t, ref], 1), t, encoder_hidden_states=context).sample
        eps_u = pipe.unet(torch.cat([z_t, torch.zeros_like(ref)], 1), t, encoder_hidden_states=torch.zeros_like(context)).sample
    return eps_u + scale * (eps_c - eps_u), eps_c, eps_u


def test_cfg_against_zero_image_and_zero_pose(guidance):
    gen = torch.Generator().manual_seed(0)
    z_t = torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([100, 500, 900])
    cam = guidance.camera_embedding(BATCH)
    with torch.no_grad():
        got = guidance.guided_noise(z_t, t, cam)
    eps_cfg, eps_c, eps_u = direct_eps(guidance, z_t, t, 3.0)
    assert torch.allclose(got, eps_cfg, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(eps_c, eps_u, atol=1e-4)
    # the pose matters per sample: a batch of identical latents gives different conditional predictions
    same = z_t[:1].expand(3, -1, -1, -1)
    with torch.no_grad():
        eps = guidance.guided_noise(same, torch.full((3,), 500), cam)
    assert not torch.allclose(eps[0], eps[1], atol=1e-5) and not torch.allclose(eps[1], eps[2], atol=1e-5)


def test_sds_gradient_matches_direct_computation(guidance):
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(3, 4, 8, 8, generator=gen).requires_grad_(True)
    noise = torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([200, 450, 800])
    out = guidance.sds_from_latents(latents, guidance.camera_embedding(BATCH), t=t, noise=noise)
    out["loss_sds"].backward()
    a = guidance.model.pipe.scheduler.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    z_t = a.sqrt() * latents.detach() + (1 - a).sqrt() * noise
    eps_cfg, _, _ = direct_eps(guidance, z_t, t, 3.0)
    assert torch.allclose(latents.grad, (1 - a) * (eps_cfg - noise) / 3, atol=1e-5, rtol=1e-4)


def test_call_on_renders_of_any_size(guidance):
    image = torch.rand(3, 40, 40, 3, requires_grad=True)
    out = guidance(image, BATCH, t=torch.tensor([300, 300, 300]))
    out["loss_sds"].backward()
    assert set(out) >= {"loss_sds", "grad_norm", "min_step", "max_step"}
    assert torch.isfinite(out["loss_sds"]) and image.grad.abs().sum() > 0
    # a single reference-view camera broadcast over the batch
    cam = guidance.camera_embedding({k: v[:1] for k, v in BATCH.items()})
    assert cam.shape == (1, 4)


def test_errors_name_the_key(tiny_zero123_path):
    from lift3d.config import parse_structured
    from lift3d.guidance.zero123 import Zero123Guidance

    def check(**cfg):
        merged = {"pretrained_model_name_or_path": str(tiny_zero123_path), "cond_image_path": IMAGE, **cfg}
        Zero123Guidance.validate_config(parse_structured(Zero123Guidance.Config, merged))

    check()
    with pytest.raises(ConfigError, match="system.guidance.cond_image_path"):
        check(cond_image_path="load/images/missing_rgba.png")
    with pytest.raises(ConfigError, match="Zero-1-to-3 for system.guidance.pretrained_model_name_or_path"):
        check(pretrained_model_name_or_path="nonexistent-org/zero123-nothing")


def test_conditioning_image_is_composited_with_its_continuous_alpha(tmp_path):
    """Half-transparent red over white is pink (as threestudio), not red or white (a hard mask)."""
    import numpy as np
    from PIL import Image

    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128
    rgba[4:, :, 3] = 0  # a transparent background (a fully opaque image is refused)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "half.png")
    image = reference_image(str(tmp_path / "half.png"), 8, None, "cond_image_path")  # [1,3,8,8]
    a = 128 / 255
    assert torch.allclose(image[0, :, 0, 0], torch.tensor([1.0, 1 - a, 1 - a]), atol=1e-5)
