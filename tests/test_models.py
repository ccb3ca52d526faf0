"""The frozen-model layer (lift3d.models, issue #13): loading, sharing, and each model's noise prediction
against the raw diffusers modules, on tiny random models saved in the published folder layouts."""
from __future__ import annotations

import gc
import math

import pytest
import torch

from lift3d.errors import ConfigError
from lift3d.models.deepfloyd_if import DeepFloydIF
from lift3d.models.frozen import DiffusionModelNotFoundError
from lift3d.models.stable_diffusion import StableDiffusion
from lift3d.models.stable_diffusion_controlnet import StableDiffusionControlNet
from lift3d.models.stable_diffusion_depth import StableDiffusionDepth
from lift3d.models.zero123 import StableZero123, Zero123

from tests.helpers import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def tiny_depth_path(tmp_path_factory):
    from lift3d.models.tiny_factory import make_tiny_sd_depth

    return make_tiny_sd_depth(tmp_path_factory.mktemp("tiny-models") / "tiny-sd-depth", seed=3)


@pytest.fixture(scope="module")
def tiny_controlnet_path(tmp_path_factory, tiny_sd_path):
    from lift3d.models.tiny_factory import make_tiny_controlnet

    return make_tiny_controlnet(tmp_path_factory.mktemp("tiny-models") / "tiny-controlnet", tiny_sd_path, seed=4)


@pytest.fixture(scope="module")
def tiny_if_path(tmp_path_factory):
    from lift3d.models.tiny_factory import make_tiny_deepfloyd_if

    return make_tiny_deepfloyd_if(tmp_path_factory.mktemp("tiny-models") / "tiny-if", seed=5)


def raw_unet(path, subfolder="unet"):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(path), subfolder=subfolder).eval()


def test_a_model_is_loaded_once_and_shared(tiny_sd_path):
    a = StableDiffusion.load(str(tiny_sd_path))
    b = StableDiffusion.load(str(tiny_sd_path))
    assert a is b
    private = StableDiffusion.load(str(tiny_sd_path), shared=False)
    assert private is not a and private.unet is not a.unet
    other_precision = StableDiffusion.load(str(tiny_sd_path), half_precision_weights="true")
    assert other_precision is not a and other_precision.weights_dtype == torch.float16
    # weak cache: the process keeps no model nobody holds (view distillation frees them between steps)
    import weakref

    ref = weakref.ref(a)
    del a, b
    gc.collect()
    assert ref() is None


def test_two_guidances_naming_one_folder_share_its_model(tiny_sd_path):
    from lift3d.registry import find

    sds = find("stable-diffusion-guidance")({"pretrained_model_name_or_path": str(tiny_sd_path)})
    usd = find("usd-text-guidance")({"pretrained_model_name_or_path": str(tiny_sd_path)})
    assert sds.model is usd.model
    xd = find("xdreamer-guidance")({"pretrained_model_name_or_path": str(tiny_sd_path)})
    assert xd.model is not sds.model, "X-Dreamer installs processors into its UNet: it must hold a private copy"


def test_missing_model_is_a_clear_config_error(tmp_path):
    with pytest.raises(DiffusionModelNotFoundError) as err:
        StableDiffusion.load(str(tmp_path / "nowhere"), "Stable Diffusion for system.guidance.pretrained_model_name_or_path")
    assert isinstance(err.value, ConfigError)
    assert "system.guidance.pretrained_model_name_or_path" in str(err.value)


def test_stable_diffusion_sizes_schedule_and_prediction(tiny_sd_path):
    from diffusers import DDPMScheduler

    sd = StableDiffusion.load(str(tiny_sd_path))
    assert (sd.downsample, sd.native_resolution, sd.num_train_timesteps) == (8, 64, 1000)
    expected = DDPMScheduler.from_pretrained(str(tiny_sd_path), subfolder="scheduler").alphas_cumprod
    assert torch.equal(sd.alphas_cumprod, expected.float())
    gen = torch.Generator().manual_seed(0)
    z, text = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 77, 32, generator=gen)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.allclose(sd.predict_noise(z, t, text), raw_unet(tiny_sd_path)(z, t, encoder_hidden_states=text).sample,
                              atol=1e-6)
    images = torch.rand(2, 3, 64, 64, generator=gen)
    latents = sd.encode_images(images, sample=False)
    assert latents.shape == (2, 4, 8, 8)
    assert sd.decode_latents(latents).shape == (2, 64, 64, 3)


def test_depth_model_feeds_latents_and_normalised_depth(tiny_depth_path, tiny_sd_path):
    model = StableDiffusionDepth.load(str(tiny_depth_path))
    depth = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1)) * 3 + 2
    d = model.prepare_depth(depth, (8, 8))
    assert d.shape == (2, 1, 8, 8)
    assert torch.allclose(d.amin(dim=(1, 2, 3)), torch.tensor([-1.0, -1.0]), atol=1e-6)
    assert torch.allclose(d.amax(dim=(1, 2, 3)), torch.tensor([1.0, 1.0]), atol=1e-6)
    gen = torch.Generator().manual_seed(2)
    z, text, t = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 77, 32, generator=gen), torch.tensor([5, 500])
    with torch.no_grad():
        got = model.predict_noise(z, t, text, depth=d)
        want = raw_unet(tiny_depth_path)(torch.cat([z, d], 1), t, encoder_hidden_states=text).sample
        other = model.predict_noise(z, t, text, depth=-d)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, other), "the depth channel must reach the UNet"
    with pytest.raises(ConfigError, match="is not Stable Diffusion 2 depth: its UNet takes 4 input channels"):
        StableDiffusionDepth.load(str(tiny_sd_path))


def test_controlnet_residuals_reach_the_unet(tiny_sd_path, tiny_controlnet_path):
    from diffusers import ControlNetModel

    model = StableDiffusionControlNet.load(str(tiny_sd_path), controlnet_name_or_path=str(tiny_controlnet_path))
    plain = StableDiffusion.load(str(tiny_sd_path))
    gen = torch.Generator().manual_seed(3)
    z, text, t = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 77, 32, generator=gen), torch.tensor([50, 700])
    control = torch.rand(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        got = model.predict_noise(z, t, text, control_image=control, conditioning_scale=0.8)
        net = ControlNetModel.from_pretrained(str(tiny_controlnet_path)).eval()
        down, mid = net(z, t, encoder_hidden_states=text, controlnet_cond=control, conditioning_scale=0.8, return_dict=False)
        want = raw_unet(tiny_sd_path)(z, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                                      mid_block_additional_residual=mid).sample
        off = model.predict_noise(z, t, text, control_image=control, conditioning_scale=0.0)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(off, plain.predict_noise(z, t, text), atol=1e-5), "scale 0 is plain SD"
    assert not torch.allclose(got, off, atol=1e-4)
    with torch.no_grad():
        other_control = model.predict_noise(z, t, text, control_image=1.0 - control, conditioning_scale=0.8)
    assert not torch.allclose(got, other_control, atol=1e-4), "the control image must reach the UNet"
    with pytest.raises(DiffusionModelNotFoundError):
        StableDiffusionControlNet.load(str(tiny_sd_path), controlnet_name_or_path=str(tiny_sd_path / "nope"))


def test_a_model_folder_of_another_kind_is_refused_before_any_weight_is_read(tiny_sd_path, tiny_zero123_path, tmp_path):
    """A Zero-1-to-3 folder given as Stable Diffusion (and the reverse) is named from unet/config.json alone;
    a folder whose weights are truncated is a clear error too."""
    import shutil

    with pytest.raises(ConfigError, match="is not Stable Diffusion: its UNet takes 8 input channels .like Zero-1-to-3"):
        StableDiffusion.resolve(str(tiny_zero123_path), "Stable Diffusion for system.guidance.pretrained_model_name_or_path")
    with pytest.raises(ConfigError, match="lacks image_encoder/config.json"):
        Zero123.resolve(str(tiny_sd_path))  # an SD folder has no image encoder
    broken = tmp_path / "broken-sd"
    shutil.copytree(tiny_sd_path, broken)
    for weights in (broken / "unet").glob("diffusion_pytorch_model.*"):
        weights.write_bytes(weights.read_bytes()[:100])  # truncated download
    with pytest.raises(ConfigError, match="could not be loaded .* download it again"):
        StableDiffusion.load(str(broken), shared=False)


def test_zero123_reference_camera_and_predictions(tiny_zero123_path):
    from extern.zero123.pipeline import Zero123Pipeline
    from lift3d.guidance.zero123 import reference_image

    model = Zero123.load(str(tiny_zero123_path))
    image = reference_image(str(REPO / "load/images/blocks_rgba.png"), 64, None, "cond_image_path")
    ref = model.reference(image)
    assert ref.embedding.shape[:2] == (1, 1) and ref.latents.shape == (1, 4, 8, 8)
    camera = model.camera_embedding(torch.tensor([30.0]), torch.tensor([90.0]), torch.tensor([2.0]), 0.0, 0.0, 1.5)
    assert torch.allclose(camera, torch.tensor([[math.radians(-30.0), 1.0, 0.0, 0.5]]), atol=1e-6)
    stable = StableZero123.load(str(tiny_zero123_path))
    assert stable is not model  # another class: its own cache entry
    camera_s = stable.camera_embedding(torch.tensor([30.0]), torch.tensor([90.0]), torch.tensor([2.0]), 20.0, 0.0, 1.5)
    assert camera_s[0, 3].item() == pytest.approx(math.radians(70.0), abs=1e-5), "4th entry: the reference's polar"
    pipe = Zero123Pipeline.from_pretrained(str(tiny_zero123_path))
    gen = torch.Generator().manual_seed(4)
    z, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([100, 800])
    cams = camera.expand(2, -1)
    with torch.no_grad():
        eps_c, eps_u = model.noise_predictions(z, t, ref, cams)
        context = pipe.conditioning(ref.embedding, cams)
        want_c = pipe.predict_noise(z, t, ref.latents, context)
        want_u = pipe.predict_noise(z, t, torch.zeros_like(ref.latents), torch.zeros_like(context))
    assert torch.allclose(eps_c, want_c, atol=1e-5) and torch.allclose(eps_u, want_u, atol=1e-5)


def test_deepfloyd_if_is_pixel_space(tiny_if_path):
    model = DeepFloydIF.load(str(tiny_if_path))
    assert (model.downsample, model.native_resolution, model.latent_channels) == (1, 16, 3)
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(5))
    x = model.encode_images(images)
    assert x.shape == (2, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    gen = torch.Generator().manual_seed(6)
    text, t = torch.randn(2, 77, 16, generator=gen), torch.tensor([3, 600])
    with torch.no_grad():
        eps = model.predict_noise(x, t, text)
        full = raw_unet(tiny_if_path)(x, t, encoder_hidden_states=text).sample
    assert full.shape[1] == 6 and torch.allclose(eps, full[:, :3], atol=1e-6)
    assert model.decode_latents(x).shape == (2, 16, 16, 3)
