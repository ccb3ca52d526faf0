"""Target images from pose-labelled renders (#17 point 2, lift3d/gan/depth_generation.py) with tiny
random models of the real layouts: depth-conditioned generation follows the depth; SDEdit at
strength 1 forgets its source; seeds make samples batch-independent."""
import pytest
import torch

from lift3d.gan.depth_generation import depth_conditioning, generate_images, inverse_depth_image
from lift3d.models.stable_diffusion import StableDiffusion
from lift3d.models.stable_diffusion_depth import StableDiffusionDepth
from lift3d.models.tiny_factory import TINY_WIDTH, make_tiny_sd_depth

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tiny models: one thread

SIZE = 64  # the tiny models' native resolution (8² latents)


@pytest.fixture(scope="module")
def depth_model(tmp_path_factory):
    return StableDiffusionDepth.load(str(make_tiny_sd_depth(tmp_path_factory.mktemp("tiny") / "sd-depth")))


def _text(seed):
    return torch.randn(1, 77, TINY_WIDTH, generator=torch.Generator().manual_seed(seed))


def _depth(shift):  # a sphere-like bump at a position: [1,1,32,32] ray distances in [1.5, 2.9]
    y, x = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    return (2.9 - 1.4 * (1 - ((x - shift) ** 2 + y ** 2) / 0.25).clamp(min=0))[None, None]


def test_inverse_depth_is_near_one_far_zero():
    d = _depth(0.0)
    inv = inverse_depth_image(d)
    assert inv.max() == 1.0 and inv.min() == 0.0
    assert inv[0, 0, 16, 16] == 1.0 and inv[0, 0, 0, 0] == 0.0  # bump centre nearest, corner (empty) farthest


def test_depth_generation_follows_the_depth_and_is_seeded(depth_model):
    text, uncond = _text(1), _text(2)
    depth = torch.cat([_depth(-0.5), _depth(0.5)])
    out = generate_images(depth_model, text, uncond, depth=depth, strength=1.0, num_steps=4, seeds=[7, 7],
                          image_size=(SIZE, SIZE))
    assert out.shape == (2, 3, SIZE, SIZE) and out.min() >= 0 and out.max() <= 1
    assert (out[0] - out[1]).abs().mean() > 1e-3  # same seed, other depth: another image
    alone = generate_images(depth_model, text, uncond, depth=depth[1:], strength=1.0, num_steps=4, seeds=[7],
                            image_size=(SIZE, SIZE))
    assert torch.allclose(alone[0], out[1], atol=1e-4)  # a sample does not depend on its batch
    with pytest.raises(ValueError, match="is depth-conditioned: pass depth"):
        depth_conditioning(depth_model, None, (SIZE, SIZE))


def test_sdedit_at_strength_one_forgets_the_source_but_not_below(tiny_sd_path):
    """DATID-3D's baseline: from pure noise the source render is unused (no pose left); at 0.3 it shows."""
    model = StableDiffusion.load(str(tiny_sd_path))
    text, uncond = _text(1), _text(2)
    sources = torch.stack([torch.zeros(3, SIZE, SIZE), torch.ones(3, SIZE, SIZE)])
    full = generate_images(model, text, uncond, images=sources, strength=1.0, num_steps=4, seeds=[3, 3])
    assert torch.allclose(full[0], full[1])
    low = generate_images(model, text, uncond, images=sources, strength=0.3, num_steps=4, seeds=[3, 3])
    assert (low[0] - low[1]).abs().mean() > 1e-3  # (the tiny random VAE maps black and white close together)
    with pytest.raises(ValueError, match="strength 0.7 < 1 starts from the source images"):
        generate_images(model, text, uncond, depth=None, strength=0.7, seeds=[0])


def test_depth_controlnet_sees_the_inverse_depth_at_every_step(tiny_sd_path, tmp_path):
    """The ControlNet's control image is the renders' inverse depth (near = 1) at image size, for the
    conditional and the unconditional half of every DDIM step. (The tiny factory's ControlNet keeps
    diffusers' zero-initialised conditioning conv, so its outputs cannot show the depth: the plumbing
    is checked instead.)"""
    from lift3d.models.stable_diffusion_controlnet import StableDiffusionControlNet
    from lift3d.models.tiny_factory import make_tiny_controlnet

    model = StableDiffusionControlNet.load(str(tiny_sd_path),
                                           controlnet_name_or_path=str(make_tiny_controlnet(tmp_path / "cn", tiny_sd_path)))
    depth = torch.cat([_depth(-0.5), _depth(0.5)])
    expected = torch.nn.functional.interpolate(inverse_depth_image(depth), size=(SIZE, SIZE), mode="bilinear",
                                               align_corners=False).expand(-1, 3, -1, -1)
    seen = []
    predict = model.predict_noise

    def recording(z_t, t, text_embeddings=None, **conditioning):
        seen.append(conditioning["control_image"])
        return predict(z_t, t, text_embeddings, **conditioning)

    model.predict_noise = recording
    out = generate_images(model, _text(1), _text(2), depth=depth, strength=1.0, num_steps=3, seeds=[5, 5])
    assert out.shape == (2, 3, SIZE, SIZE) and len(seen) == 3
    for control in seen:
        assert torch.allclose(control, torch.cat([expected, expected]))
