"""SDI (#16, docs/methods/sdi.md): DDIM inversion round trip, the inverted noise reproducing the inverted
latent, the SDI gradient (z - x0_hat) / (B numel) against a hand computation with the raw UNet of a tiny
SD folder, t_anneal, sdi-system's convexity term, clear errors, and configs/sdi.yaml end to end (slow)."""
from __future__ import annotations

import pytest
import torch

from lift3d.errors import ConfigError
from lift3d.models.ddim import ddim_sample
from lift3d.models.ddim_inversion import ddim_invert, inversion_timesteps, noise_for
from lift3d.models.noise_schedule import add_noise

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

CAMERA = {"elevation": torch.tensor([15.0]), "azimuth": torch.tensor([30.0]), "camera_distances": torch.tensor([1.8])}


@pytest.fixture(scope="module")
def prompt_utils(tiny_sd_path, tmp_path_factory):
    from lift3d.prompt.stable_diffusion import StableDiffusionPromptProcessor

    return StableDiffusionPromptProcessor({
        "prompt": "a photo of a red car", "pretrained_model_name_or_path": str(tiny_sd_path),
        "cache_dir": str(tmp_path_factory.mktemp("cache")),
    })()


def make_sdi(path, **cfg):
    from lift3d.guidance.sdi import StableDiffusionSDIGuidance

    return StableDiffusionSDIGuidance({"pretrained_model_name_or_path": str(path), "t_anneal": False, **cfg})


@pytest.fixture(scope="module")
def raw_unet(tiny_sd_path):
    """The folder's own UNet and DDPM schedule, loaded independently of the guidance."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet").eval()
    return unet, DDPMScheduler.from_pretrained(tiny_sd_path, subfolder="scheduler").alphas_cumprod.float()


def threestudio_cfg(unet, z, t, text, scale):
    """eps_c + s (eps_c - eps_u) from two separate UNet calls (text: cond rows, then uncond rows)."""
    with torch.no_grad():
        eps_c = unet(z, t, encoder_hidden_states=text[:1]).sample
        eps_u = unet(z, t, encoder_hidden_states=text[1:]).sample
    return eps_c + scale * (eps_c - eps_u)


# ------------------------------------------------------------------ DDIM inversion
def test_inversion_path_follows_the_leading_grid_then_the_target():
    assert inversion_timesteps(450, 10) == [-1, 1, 101, 201, 301, 401, 450]
    assert inversion_timesteps(101, 10) == [-1, 1, 101]  # grid points strictly below the target
    assert inversion_timesteps(0, 10) == [-1, 0]


def test_inversion_with_a_constant_denoiser_is_forward_diffusion_and_ddim_undoes_it():
    """With eps_fn = a constant e, every DDIM step keeps x0 = z0, so DDIM inversion ends at
    add_noise(z0, e, t), its inverted noise is e itself, and DDIM sampling back returns z0 exactly."""
    alphas = torch.linspace(0.9991, 0.0047, 1000)
    gen = torch.Generator().manual_seed(0)
    e = torch.randn(2, 4, 8, 8, generator=gen)
    z0 = torch.randn(2, 4, 8, 8, generator=gen)
    path = inversion_timesteps(777, 10)
    z_inv = ddim_invert(z0, path, lambda z, t: e, alphas)
    t = torch.tensor([777, 777])
    assert torch.allclose(z_inv, add_noise(z0, e, t, alphas), atol=1e-5)
    assert torch.allclose(noise_for(z0, z_inv, t, alphas), e, atol=1e-4)
    assert torch.allclose(ddim_sample(z_inv, path[::-1], lambda z, t: e, alphas), z0, atol=1e-5)


def test_inverted_unet_latent_round_trips_through_ddim_better_with_more_steps(tiny_sd_path, prompt_utils):
    """The guidance's inversion (the tiny UNet, CFG -7.5): DDIM sampling back along the same path gives the
    render's latent back, up to the first-order error of DDIM inversion, which shrinks with the step count."""
    g = make_sdi(tiny_sd_path)
    text = prompt_utils.get_text_embeddings(**CAMERA)
    eps_fn = g.inversion_predictor(text)
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    errors = []
    for n in (5, 50):
        path = inversion_timesteps(300, n)
        z_inv = ddim_invert(z0, path, eps_fn, g.alphas_cumprod)
        back = ddim_sample(z_inv, path[::-1], lambda z, t: eps_fn(z, t.clamp(min=0)), g.alphas_cumprod)
        errors.append(((back - z0).norm() / z0.norm()).item())
    assert errors[1] < errors[0] / 2 and errors[1] < 0.2, errors


def test_inverted_noise_reproduces_the_inverted_latent(tiny_sd_path, prompt_utils, monkeypatch):
    g = make_sdi(tiny_sd_path, inversion_eta=0.3)
    monkeypatch.setattr("lift3d.guidance.sdi.random.random", lambda: 0.5)  # delta = 50
    text = prompt_utils.get_text_embeddings(**CAMERA)
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    t_inv, eps_inv, z_inv = g.inverted_noise(z0, torch.tensor([430]), text, torch.Generator().manual_seed(5))
    assert t_inv.tolist() == [480]
    assert torch.allclose(add_noise(z0, eps_inv, t_inv, g.alphas_cumprod), z_inv, atol=1e-5)
    assert torch.allclose(noise_for(z0, z_inv, t_inv, g.alphas_cumprod), eps_inv)


# ------------------------------------------------------------------ the SDI gradient
def test_sdi_gradient_is_the_x0_residual_of_the_inverted_latent(tiny_sd_path, prompt_utils, raw_unet, monkeypatch):
    """d loss_sdi / dz = (z - x0_hat) / (B numel z), x0_hat the one-step denoised inverted latent; the
    inversion checked by hand: two DDIM steps (clean -> 1 -> 40) with the raw UNet at CFG -7.5."""
    unet, alphas = raw_unet
    g = make_sdi(tiny_sd_path, guidance_scale=7.5, inversion_eta=0.0, inversion_n_steps=10)
    monkeypatch.setattr("lift3d.guidance.sdi.random.random", lambda: 0.4)  # delta = 40
    text = prompt_utils.get_text_embeddings(**CAMERA)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    image = z.permute(0, 2, 3, 1).clone().requires_grad_(True)  # rgb_as_latents: [B,h,w,4], no VAE

    out = g(image, CAMERA, prompt_utils=prompt_utils, rgb_as_latents=True, t=torch.tensor([0]))
    out["loss_sdi"].backward()

    a1, a40 = alphas[1], alphas[40]
    z1 = a1.sqrt() * z + (1 - a1).sqrt() * threestudio_cfg(unet, z, torch.tensor([0]), text, -7.5)
    eps1 = threestudio_cfg(unet, z1, torch.tensor([1]), text, -7.5)
    x0 = (z1 - (1 - a1).sqrt() * eps1) / a1.sqrt()
    z40 = a40.sqrt() * x0 + (1 - a40).sqrt() * eps1  # the inverted latent at t' = 0 + 40
    x0_hat = (z40 - (1 - a40).sqrt() * threestudio_cfg(unet, z40, torch.tensor([40]), text, 7.5)) / a40.sqrt()
    want = (z - x0_hat) / z.numel()
    assert torch.allclose(image.grad.permute(0, 3, 1, 2), want, atol=1e-6, rtol=1e-3)
    assert out["loss_sdi"].item() == pytest.approx(0.5 * (z - x0_hat).pow(2).mean().item(), rel=1e-3)
    assert out["timestep"].item() == 40


def test_without_inversion_the_given_noise_is_used(tiny_sd_path, prompt_utils, raw_unet):
    unet, alphas = raw_unet
    for enable_sdi, noise in ((False, None), (True, torch.randn(1, 4, 8, 8))):
        g = make_sdi(tiny_sd_path, guidance_scale=7.5, enable_sdi=enable_sdi)
        torch.manual_seed(7)
        z = torch.randn(1, 4, 8, 8).requires_grad_(True)
        if noise is None:  # enable_sdi: false draws N(0, I) like SDS: the same draw as torch.randn_like next
            state = torch.random.get_rng_state()
            want_noise = torch.randn_like(z)
            torch.random.set_rng_state(state)
        else:
            want_noise = noise
        out = g(z.permute(0, 2, 3, 1), CAMERA, prompt_utils=prompt_utils, rgb_as_latents=True, t=torch.tensor([300]),
                noise=noise)
        out["loss_sdi"].backward()
        a = alphas[300]
        z_t = a.sqrt() * z.detach() + (1 - a).sqrt() * want_noise
        x0_hat = (z_t - (1 - a).sqrt() * threestudio_cfg(unet, z_t, torch.tensor([300]), prompt_utils.get_text_embeddings(**CAMERA), 7.5)) / a.sqrt()
        assert torch.allclose(z.grad, (z.detach() - x0_hat) / z.numel(), atol=1e-6, rtol=1e-3)


def test_t_anneal_is_one_timestep_falling_linearly(tiny_sd_path):
    g = make_sdi(tiny_sd_path, t_anneal=True, trainer_max_steps=100, min_step_percent=0.2, max_step_percent=0.9)
    for step, want in ((0, 900), (50, 550), (100, 200), (150, 200)):  # held at the minimum after the end
        g.update_step(0, step)
        assert g.min_step == g.max_step and abs(g.min_step - want) <= 1, step  # int(T * percent), float rounding


@pytest.mark.parametrize("key, value, match", [
    ("inversion_n_steps", 0, "inversion_n_steps"),
    ("inversion_eta", -0.1, "inversion_eta"),
    ("sqrt_anneal", True, "t_anneal"),
    ("use_img_loss", True, "use_img_loss"),
    ("token_merging", True, "token_merging"),
])
def test_bad_sdi_keys_are_config_errors(tiny_sd_path, key, value, match):
    with pytest.raises(ConfigError, match=match):
        make_sdi(tiny_sd_path, **{key: value, "t_anneal": key == "sqrt_anneal"})


# ------------------------------------------------------------------ sdi-system
def test_convexity_loss_of_a_known_normal_map():
    from lift3d.systems.sdi import convexity_loss

    x, y = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    normals = torch.stack([torch.stack([x, y]), torch.stack([x, y])])[None]  # [1,2,2,3]: columns x | y
    # horizontal: x cross y = +z in both rows; vertical neighbours are equal: 0
    assert convexity_loss(normals, 2).item() == pytest.approx(-1.0)
    assert convexity_loss(normals.flip(2), 2).item() == pytest.approx(1.0)  # y | x: turning the other way


# ------------------------------------------------------------------ configs/sdi.yaml end to end
SMALL = [
    "trainer.max_steps=2", "checkpoint.every_n_train_steps=2", "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false", "system.renderer.num_samples_per_ray=16",
    "system.geometry.isosurface_resolution=16", "system.geometry.isosurface_threshold=auto",
    "system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=10",
    "system.geometry.pos_encoding_config.start_level=2", "system.geometry.pos_encoding_config.start_step=1",
    "system.geometry.pos_encoding_config.update_steps=1",
    "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16",
    "data.n_val_views=1", "data.n_test_views=2", "system.prompt_processor.prompt=a red cube",
    "system.guidance.inversion_n_steps=3", "system.guidance.guidance_eval_interval=1",
]


@pytest.mark.slow
def test_sdi_config_trains_tests_and_exports(tmp_path, tiny_sd_path):
    import launch
    from tests.helpers import only_trial

    root = tmp_path / "out"
    common = [f"exp_root_dir={root}", f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
              f"system.prompt_processor.cache_dir={tmp_path / 'cache'}"]
    assert launch.main(["--config", "configs/sdi.yaml", "--train", *common, *SMALL]) == 0
    trial = only_trial(root, "score-distillation-via-inversion")
    save = trial / "save"
    assert (trial / "ckpts/last.ckpt").is_file() and (save / "it2-test.mp4").is_file()
    assert len(list((save / "it2-test").glob("*.png"))) == 2
    assert (save / "it1-guidance.png").is_file()  # render | noisy (inverted) | x0 | denoised
    logged = (trial / "csv_logs/metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_sdi", "train/loss_convex", "train/loss_z_variance"} <= set(logged)
    parsed = (trial / "configs/parsed.yaml").read_text()
    assert "stable-diffusion-sdi-guidance" in parsed and "sdi-system" in parsed
    state = torch.load(trial / "ckpts/last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert not any("unet" in k for k in state)  # the frozen SD stays out of the checkpoint
    assert launch.main(["--config", str(trial / "configs/parsed.yaml"), "--export",
                        f"resume={trial / 'ckpts/last.ckpt'}"]) == 0
    assert (save / "it2-export/model.obj").stat().st_size > 0


def test_convexity_without_the_normal_map_is_a_config_error(tmp_path, tiny_sd_path):
    import launch

    code = launch.main(["--config", "configs/sdi.yaml", "--train", f"exp_root_dir={tmp_path}", *SMALL,
                        f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
                        "system.renderer.return_comp_normal=false"])
    assert code == 2
