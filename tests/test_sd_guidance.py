"""stable-diffusion-guidance and the shared SDS math (lift3d.guidance.sds) on a tiny SD 2.1-base-shaped model.

The SDS gradient and the CFG arithmetic are checked against a direct computation with the model's
own UNet and DDPM schedule (fixed t and noise), for every weighting strategy.
"""
import pytest
import torch

from lift3d.errors import ConfigError, Lift3DError
from lift3d.guidance import sds
from lift3d.models import noise_schedule
from lift3d.models.loading import ModelNotFoundError


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tiny models: one thread


@pytest.fixture(scope="module")
def prompt_utils(tiny_sd_path, tmp_path_factory):
    from lift3d.prompt.stable_diffusion import StableDiffusionPromptProcessor

    processor = StableDiffusionPromptProcessor({
        "prompt": "a photo of a red car", "negative_prompt": "blurry",
        "pretrained_model_name_or_path": str(tiny_sd_path), "cache_dir": str(tmp_path_factory.mktemp("cache")),
    })
    return processor()


def make_guidance(path, **cfg):
    from lift3d.guidance.stable_diffusion import StableDiffusionGuidance

    return StableDiffusionGuidance({"pretrained_model_name_or_path": str(path), **cfg})


@pytest.fixture(scope="module")
def guidance(tiny_sd_path):
    return make_guidance(tiny_sd_path, guidance_scale=7.5)


@pytest.fixture(scope="module")
def reference(tiny_sd_path):
    """The model's own UNet and schedule, loaded independently of the guidance."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet").eval()
    scheduler = DDPMScheduler.from_pretrained(tiny_sd_path, subfolder="scheduler")
    return unet, scheduler.alphas_cumprod.double()


CAMERAS = {"elevation": torch.tensor([10.0, 70.0]), "azimuth": torch.tensor([5.0, 170.0]),
           "camera_distances": torch.tensor([1.5, 2.0])}


def direct_eps_cfg(unet, z_t, t, text, scale, form="threestudio"):
    """Guided eps from two separate UNet calls (cond rows first in `text`): threestudio's
    eps_c + s (eps_c - eps_u) (stable-diffusion-guidance's default cfg_form) or eps_u + s (eps_c - eps_u)."""
    B = z_t.shape[0]
    with torch.no_grad():
        eps_c = unet(z_t, t, encoder_hidden_states=text[:B]).sample
        eps_u = unet(z_t, t, encoder_hidden_states=text[B:]).sample
    if form == "threestudio":
        return eps_c + scale * (eps_c - eps_u), eps_c, eps_u
    return eps_u + scale * (eps_c - eps_u), eps_c, eps_u


@pytest.mark.parametrize("strategy", ["sds", "uniform", "fantasia3d"])
def test_sds_gradient_is_weighted_cfg_residual(tiny_sd_path, prompt_utils, reference, strategy):
    unet, alphas = reference
    g = make_guidance(tiny_sd_path, guidance_scale=7.5, weighting_strategy=strategy)
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 8, 8, generator=gen).requires_grad_(True)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([120, 730])
    text = prompt_utils.get_text_embeddings(CAMERAS["elevation"], CAMERAS["azimuth"], CAMERAS["camera_distances"])

    out = g.sds_from_latents(latents, text, t=t, noise=noise)
    out["loss_sds"].backward()

    a = alphas[t].float().view(-1, 1, 1, 1)
    z_t = a.sqrt() * latents.detach() + (1 - a).sqrt() * noise
    eps_cfg, _, _ = direct_eps_cfg(unet, z_t, t, text, 7.5)
    w = {"sds": 1 - a, "uniform": torch.ones_like(a), "fantasia3d": a.sqrt() * (1 - a)}[strategy]
    grad = w * (eps_cfg - noise)
    # d loss / d z_b = grad_b / B (batch mean), and the loss is 0.5 ||grad||^2 / B
    assert torch.allclose(latents.grad, grad / 2, atol=1e-5, rtol=1e-4)
    assert out["loss_sds"].item() == pytest.approx(0.5 * grad.pow(2).sum().item() / 2, rel=1e-4)
    assert out["grad_norm"].item() == pytest.approx(grad.norm().item(), rel=1e-4)
    # the strategies weigh these timesteps differently, so this can only pass with the right one
    weights = [1 - a, torch.ones_like(a), a.sqrt() * (1 - a)]
    assert all(not torch.allclose(x, y, rtol=0.05) for i, x in enumerate(weights) for y in weights[i + 1:])


def test_single_sample_gradient_is_exactly_the_sds_gradient(guidance, prompt_utils, reference):
    unet, alphas = reference
    gen = torch.Generator().manual_seed(2)
    latents = torch.randn(1, 4, 8, 8, generator=gen).requires_grad_(True)
    noise = torch.randn(1, 4, 8, 8, generator=gen)
    t = torch.tensor([500])
    text = prompt_utils.get_text_embeddings(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([1.5]))
    guidance.sds_from_latents(latents, text, t=t, noise=noise)["loss_sds"].backward()
    a = alphas[t].float().view(-1, 1, 1, 1)
    eps_cfg, _, _ = direct_eps_cfg(unet, a.sqrt() * latents.detach() + (1 - a).sqrt() * noise, t, text, 7.5)
    assert torch.allclose(latents.grad, (1 - a) * (eps_cfg - noise), atol=1e-5, rtol=1e-4)


def test_cfg_order_and_scale(guidance, prompt_utils, reference, tiny_sd_path):
    """guided_noise is threestudio's eps_c + s (eps_c - eps_u) by default, eps_u + s (eps_c - eps_u) with
    cfg_form: standard, with the conditional text first: s = 1 (standard) gives eps_c."""
    unet, _ = reference
    gen = torch.Generator().manual_seed(3)
    z_t = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([300, 800])
    text = prompt_utils.get_text_embeddings(CAMERAS["elevation"], CAMERAS["azimuth"], CAMERAS["camera_distances"])
    eps_cfg, eps_c, eps_u = direct_eps_cfg(unet, z_t, t, text, 7.5)
    with torch.no_grad():
        got = guidance.guided_noise(z_t, t, text)
    assert torch.allclose(got, eps_cfg, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(eps_c, eps_u, atol=1e-4)  # the negative prompt changes the prediction
    assert torch.allclose(sds.classifier_free_guidance(eps_u, eps_c, 1.0), eps_c)
    assert torch.allclose(sds.classifier_free_guidance(eps_u, eps_c, 0.0), eps_u)
    standard = make_guidance(tiny_sd_path, guidance_scale=7.5, cfg_form="standard")
    with torch.no_grad():
        got_standard = standard.guided_noise(z_t, t, text)
    assert torch.allclose(got_standard, direct_eps_cfg(unet, z_t, t, text, 7.5, "standard")[0], atol=1e-5, rtol=1e-4)
    # the two forms differ by one unit of guidance: threestudio's s is the standard form's s + 1
    assert not torch.allclose(got_standard, got, atol=1e-4)
    assert torch.allclose(got, direct_eps_cfg(unet, z_t, t, text, 8.5, "standard")[0], atol=1e-5, rtol=1e-4)


def test_scheduled_step_range_and_grad_clip(tiny_sd_path, prompt_utils):
    g = make_guidance(tiny_sd_path, min_step_percent=[0, 0.5, 0.1, 100], max_step_percent=[0, 0.9, 0.3, 100],
                      grad_clip=[0, 0.01, 1.0, 100])
    assert (g.min_step, g.max_step, g.grad_clip_val) == (500, 900, 0.01)
    t = torch.cat([g.sample_timesteps(64, "cpu") for _ in range(8)])
    assert t.min() >= 500 and t.max() <= 900 and t.unique().numel() > 50
    g.do_update_step(0, 50)  # the way the system propagates the step
    assert (g.min_step, g.max_step) == (300, 600) and g.grad_clip_val == pytest.approx(0.505)
    g.do_update_step(0, 100)
    assert (g.min_step, g.max_step, g.grad_clip_val) == (100, 300, 1.0)

    g.update_step(0, 0)  # clip 0.01: every gradient entry is clamped
    latents = torch.randn(1, 4, 8, 8).requires_grad_(True)
    text = prompt_utils.get_text_embeddings(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([1.5]))
    g.sds_from_latents(latents, text, t=torch.tensor([900]))["loss_sds"].backward()
    # z - (z - grad) in float32: rounding of |z| ~ 3 limits the match to ~1e-5 relative
    assert latents.grad.abs().max().item() == pytest.approx(0.01, rel=1e-4)


def test_renders_are_resized_and_encoded_with_gradient(guidance, prompt_utils):
    image = torch.rand(2, 32, 48, 3, requires_grad=True)  # not square, not the VAE's 64²
    assert guidance.resolution == 64 and guidance.latent_resolution == 8  # tiny model's native size
    out = guidance(image, CAMERAS, prompt_utils=prompt_utils)
    out["loss_sds"].backward()
    assert out["loss_sds"].ndim == 0 and torch.isfinite(out["loss_sds"])
    assert image.grad is not None and image.grad.abs().sum() > 0  # SDS flows through the VAE encoder
    assert guidance.get_latents(image.detach(), False).shape == (2, 4, 8, 8)


def test_rgb_as_latents_skips_the_vae(tiny_sd_path, prompt_utils, reference):
    unet, alphas = reference
    g = make_guidance(tiny_sd_path, rgb_as_latents=True, guidance_scale=7.5)
    gen = torch.Generator().manual_seed(4)
    latents_hw = torch.randn(2, 8, 8, 4, generator=gen).requires_grad_(True)  # [B,H,W,4]: already latents
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([250, 600])
    g(latents_hw, CAMERAS, prompt_utils=prompt_utils, t=t, noise=noise)["loss_sds"].backward()
    z = latents_hw.detach().permute(0, 3, 1, 2)
    a = alphas[t].float().view(-1, 1, 1, 1)
    text = prompt_utils.get_text_embeddings(CAMERAS["elevation"], CAMERAS["azimuth"], CAMERAS["camera_distances"])
    eps_cfg, _, _ = direct_eps_cfg(unet, a.sqrt() * z + (1 - a).sqrt() * noise, t, text, 7.5)
    expected = ((1 - a) * (eps_cfg - noise) / 2).permute(0, 2, 3, 1)
    assert torch.allclose(latents_hw.grad, expected, atol=1e-5, rtol=1e-4)
    # larger latent images are resized to the UNet's latent size
    assert g.get_latents(torch.rand(1, 16, 16, 4), True).shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="4-channel"):
        g.get_latents(torch.rand(1, 16, 16, 3), True)


def test_x0_and_ddim_recover_the_clean_latent():
    alphas = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, 0)
    z = torch.randn(3, 4, 8, 8)
    noise = torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 990])
    z_t = noise_schedule.add_noise(z, noise, t, alphas)
    assert torch.allclose(noise_schedule.predict_x0(z_t, noise, t, alphas), z, atol=1e-4)
    assert torch.allclose(noise_schedule.ddim_step(z_t, noise, t, torch.full_like(t, -1), alphas), z, atol=1e-4)
    # a DDIM step with the true noise lands on the forward-diffused latent at t_prev
    t_prev = torch.tensor([5, 200, 400])
    assert torch.allclose(noise_schedule.ddim_step(z_t, noise, t, t_prev, alphas), noise_schedule.add_noise(z, noise, t_prev, alphas), atol=1e-4)


def test_guidance_eval_images(tiny_sd_path, prompt_utils):
    g = make_guidance(tiny_sd_path, guidance_eval_interval=5, guidance_eval_steps=3)
    image = torch.rand(3, 32, 32, 3)
    g.do_update_step(0, 5)
    out = g(image, {k: torch.cat([v, v[:1]]) for k, v in CAMERAS.items()}, prompt_utils=prompt_utils)
    grid = out["guidance_eval"]  # 3 rows (samples) of render | noisy | x0 | denoised at 64²
    assert grid.shape == (3 * 64, 4 * 64, 3) and grid.min() >= 0 and grid.max() <= 1
    # the render column is the input, resized
    render = torch.nn.functional.interpolate(image[:1].permute(0, 3, 1, 2), size=(64, 64), mode="bilinear")
    assert torch.allclose(grid[:64, :64], render[0].permute(1, 2, 0), atol=1e-5)
    g.do_update_step(0, 6)
    assert "guidance_eval" not in g(image, {k: torch.cat([v, v[:1]]) for k, v in CAMERAS.items()}, prompt_utils=prompt_utils)

    z_t = torch.randn(2, 4, 8, 8)
    t = torch.tensor([400, 900])
    text = prompt_utils.get_text_embeddings(CAMERAS["elevation"], CAMERAS["azimuth"])
    eps_fn = lambda z, tt, n: g.guided_noise(z, tt, text)  # noqa: E731
    images = g.guidance_eval(z_t, t, eps_fn(z_t, t, None), torch.randn_like(z_t), eps_fn, g.model.decode_latents, image[:2])
    for key in ("render", "noisy", "x0", "denoised"):
        assert images[key].shape == (2, 64, 64, 3), key
    assert images["t"].tolist() == [400, 900]


def test_frozen_models_are_plain_attributes(guidance):
    assert not isinstance(guidance, torch.nn.Module)
    assert not any(isinstance(v, torch.nn.Module) for v in vars(guidance).values())
    assert all(not p.requires_grad for p in guidance.model.unet.parameters())
    assert all(not p.requires_grad for p in guidance.model.vae.parameters())
    assert guidance.model.unet.dtype == torch.float32  # CPU: full precision (half_precision_weights: auto)


def test_half_precision_modes():
    from lift3d.models.frozen import weights_dtype

    assert weights_dtype(sds.half_precision_mode("auto"), "cpu") == torch.float32
    assert weights_dtype(sds.half_precision_mode("auto"), "cuda") == torch.float16
    assert weights_dtype(sds.half_precision_mode(True), "cpu") == torch.float16
    assert weights_dtype(sds.half_precision_mode(False), "cuda") == torch.float32
    with pytest.raises(ConfigError, match="half_precision_weights"):
        sds.half_precision_mode("sometimes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_half_precision_on_gpu(tiny_sd_path, prompt_utils):
    g = make_guidance(tiny_sd_path).to("cuda")
    assert g.unet.dtype == torch.float16
    image = torch.rand(1, 32, 32, 3, device="cuda", requires_grad=True)
    cams = {k: v[:1].cuda() for k, v in CAMERAS.items()}
    out = g(image, cams, prompt_utils=prompt_utils)
    out["loss_sds"].backward()
    assert out["loss_sds"].dtype == torch.float32 and torch.isfinite(image.grad).all()


def test_config_errors_before_loading(tiny_sd_path):
    from lift3d.config import parse_structured
    from lift3d.guidance.stable_diffusion import StableDiffusionGuidance

    def check(**cfg):
        StableDiffusionGuidance.validate_config(parse_structured(StableDiffusionGuidance.Config, {
            "pretrained_model_name_or_path": str(tiny_sd_path), **cfg}))

    check()
    with pytest.raises(ConfigError, match="weighting_strategy 'sjc'"):
        check(weighting_strategy="sjc")
    with pytest.raises(ConfigError, match="max_step_percent"):
        check(max_step_percent=[0, 0.5, 1.5, 100])
    with pytest.raises(ConfigError, match="resolution"):
        check(resolution=100)
    with pytest.raises(ModelNotFoundError) as info:
        check(pretrained_model_name_or_path="nonexistent-org/nonexistent-sd")
    # one message that launch.py prints cleanly (a Lift3DError), naming the key and the fix
    assert isinstance(info.value, Lift3DError)
    message = str(info.value)
    assert "system.guidance.pretrained_model_name_or_path" in message and "Looked in" in message
    assert "tiny_factory" in message


def test_benchmark_full_size_configs_match_the_released_models():
    """benchmarks/bench_guidance.py --full-size builds SD 2.1-base / zero123-XL from config values:
    on the meta device (no memory), their parameter counts match the released models."""
    from benchmarks.bench_guidance import EXPECTED_PARAMS_M, parameter_counts

    counts = parameter_counts(meta=True)
    assert set(counts) == set(EXPECTED_PARAMS_M)
    for name, n in counts.items():
        assert n / 1e6 == pytest.approx(EXPECTED_PARAMS_M[name], rel=0.002), name


def test_guidance_eval_with_more_samples_than_shown(tiny_sd_path, prompt_utils):
    """A batch larger than guidance_eval_max_samples: the DDIM steps keep the batch's conditioning."""
    g = make_guidance(tiny_sd_path, guidance_eval_interval=1, guidance_eval_steps=3, guidance_eval_max_samples=1)
    g.do_update_step(0, 1)
    out = g(torch.rand(2, 32, 32, 3), CAMERAS, prompt_utils=prompt_utils)
    assert out["guidance_eval"].shape == (64, 4 * 64, 3)
