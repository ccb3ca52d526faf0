"""SJC (#16, docs/methods/sjc.md): stable-diffusion-guidance's use_sjc gradient against threestudio's
variance-exploding PAAS formula computed by hand with the raw UNet (var_red on and off), volume-grid's
trilinear field, textured-background's direction mapping, the emptiness and depth terms, clear errors,
and configs/sjc.yaml end to end (slow)."""
from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

CAMERA = {"elevation": torch.tensor([20.0]), "azimuth": torch.tensor([-40.0]), "camera_distances": torch.tensor([1.5])}


@pytest.fixture(scope="module")
def prompt_utils(tiny_sd_path, tmp_path_factory):
    from lift3d.prompt.stable_diffusion import StableDiffusionPromptProcessor

    return StableDiffusionPromptProcessor({
        "prompt": "a hamburger", "pretrained_model_name_or_path": str(tiny_sd_path),
        "cache_dir": str(tmp_path_factory.mktemp("cache")),
    })()


@pytest.mark.parametrize("var_red", [True, False])
def test_sjc_gradient_is_threestudios_paas_score(tiny_sd_path, prompt_utils, var_red):
    """sigma = sqrt((1-a)/a), z = y + sigma n, the UNet on z / sqrt(1 + sigma^2), D = z - sigma eps;
    grad = -(D - y)/sigma (var_red) or -(D - z)/sigma: the latents' gradient of loss_sds (B = 1)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from lift3d.guidance.stable_diffusion import StableDiffusionGuidance

    g = StableDiffusionGuidance({"pretrained_model_name_or_path": str(tiny_sd_path), "guidance_scale": 100.0,
                                 "use_sjc": True, "var_red": var_red, "weighting_strategy": "sds"})
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet").eval()
    alphas = DDPMScheduler.from_pretrained(tiny_sd_path, subfolder="scheduler").alphas_cumprod.float()
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(1, 4, 8, 8, generator=gen)
    n = torch.randn(1, 4, 8, 8, generator=gen)
    t = torch.tensor([350])
    latents = y.clone().requires_grad_(True)
    text = prompt_utils.get_text_embeddings(**CAMERA)
    g.sds_from_latents(latents, text, t=t, noise=n)["loss_sds"].backward()

    sigma = ((1 - alphas[t]) / alphas[t]).sqrt()
    z = y + sigma * n
    scaled = z / (1 + sigma**2).sqrt()
    with torch.no_grad():
        eps_c = unet(scaled, t, encoder_hidden_states=text[:1]).sample
        eps_u = unet(scaled, t, encoder_hidden_states=text[1:]).sample
    eps = eps_c + 100.0 * (eps_c - eps_u)
    D = z - sigma * eps
    want = -(D - y) / sigma if var_red else -(D - z) / sigma
    assert torch.allclose(latents.grad, want, atol=1e-4, rtol=1e-3)


def test_volume_grid_is_trilinear_in_the_cube():
    from lift3d.geometry.volume_grid import VolumeGrid

    grid = VolumeGrid({"radius": 2.0, "grid_size": [5, 6, 7], "n_feature_dims": 2, "density_bias": -1.0,
                       "normal_type": None})
    G = grid.grid.shape[2:]  # (D, H, W) = (5, 6, 7): grid_sample's x runs along W
    axes = [torch.linspace(-2, 2, s) for s in G]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    with torch.no_grad():  # channels: density logit = x + 2y, features = (z, x - y)
        grid.grid.copy_(torch.stack([xx + 2 * yy, zz, xx - yy])[None])
    p = torch.rand(50, 3, generator=torch.Generator().manual_seed(1)) * 4 - 2
    out = grid(p)
    raw = p[:, 0] + 2 * p[:, 1] - 1.0  # a linear field is reproduced exactly; bias -1, exp(density_scale) = 1
    assert torch.allclose(out["density"].reshape(-1), torch.nn.functional.softplus(raw), atol=1e-5)
    assert torch.allclose(out["features"], torch.stack([p[:, 2], p[:, 0] - p[:, 1]], -1), atol=1e-5)
    names = dict(grid.named_parameters())
    assert set(names) == {"grid", "density_scale"}  # a number bias: a learned log-scale, as threestudio's


def test_textured_background_reads_the_texture_by_direction():
    from lift3d.background.textured_background import TexturedBackground, direction_to_uv

    uv = direction_to_uv(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]]))
    assert torch.allclose(uv, torch.tensor([[0.0, 0.5], [0.5, 0.5], [0.5, 0.75], [1.0, 0.5]]), atol=1e-6)
    bg = TexturedBackground({"n_output_dims": 4, "height": 4, "width": 4, "color_activation": "none"})
    with torch.no_grad():
        bg.texture.fill_(0.25)
        bg.texture[0, 1] = torch.arange(4.0)[None, :]  # channel 1 varies with u (along the texture's width)
    c = bg(torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]]))  # [1,2,4]
    assert c.shape == (1, 2, 4) and torch.allclose(c[..., 0], torch.full((1, 2), 0.25))
    assert c[0, 0, 1] < c[0, 1, 1]  # looking up (+z, u=0) reads the first columns, down (u=1) the last ones


def test_emptiness_and_center_depth_terms():
    from lift3d.systems.sjc import center_depth_loss, emptiness_loss

    w = torch.tensor([[0.0], [0.1], [1.0]])
    assert emptiness_loss(w, 10.0).item() == pytest.approx((math.log(1) + math.log(2) + math.log(11)) / 3)
    depth = torch.full((1, 8, 8, 1), 3.0)
    opacity = torch.ones(1, 8, 8, 1)
    depth[:, 2:6, 2:6] = 1.0  # the central 4x4 (center_ratio 0.5) is nearer by 2
    assert center_depth_loss(depth, opacity, 0.5).item() == pytest.approx(-math.log(2.0), rel=1e-5)
    assert center_depth_loss(4.0 - depth, opacity, 0.5).item() == pytest.approx(math.log(2.0), rel=1e-5)


# ------------------------------------------------------------------ configs/sjc.yaml
SMALL = [
    "trainer.max_steps=2", "checkpoint.every_n_train_steps=2", "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false", "system.renderer.num_samples_per_ray=16", "system.geometry.grid_size=[16,16,16]",
    "system.geometry.isosurface_resolution=16",  # isosurface_threshold: volume-grid default auto
    "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16",
    "data.n_val_views=1", "data.n_test_views=2", "system.prompt_processor.prompt=a red cube",
    "system.loss.lambda_emptiness=1.0", "system.loss.lambda_depth=1.0",
]


@pytest.mark.slow
def test_sjc_config_trains_tests_and_exports(tmp_path, tiny_sd_path):
    import numpy as np
    from PIL import Image

    import launch
    from tests.helpers import only_trial

    root = tmp_path / "out"
    common = [f"exp_root_dir={root}", f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
              f"system.prompt_processor.cache_dir={tmp_path / 'cache'}"]
    assert launch.main(["--config", "configs/sjc.yaml", "--train", *common, *SMALL]) == 0
    trial = only_trial(root, "sjc")
    save = trial / "save"
    header = (trial / "csv_logs/metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_sds", "train/loss_emptiness", "train/loss_depth"} <= set(header)
    frame = np.asarray(Image.open(save / "it2-test/0.png"))
    assert frame.shape[0] == 128  # subpixel_rendering: the tiny SD's 8² latents decoded at 2x -> 128²
    state = torch.load(trial / "ckpts/last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert state["geometry.grid"].shape == (1, 5, 16, 16, 16) and "background.texture" in state
    assert launch.main(["--config", str(trial / "configs/parsed.yaml"), "--export",
                        f"resume={trial / 'ckpts/last.ckpt'}"]) == 0
    assert (save / "it2-export/model.obj").stat().st_size > 0


def test_sjc_config_errors(tmp_path, tiny_sd_path, capfd):
    import launch

    base = ["--config", "configs/sjc.yaml", "--train", f"exp_root_dir={tmp_path}", *SMALL,
            f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}"]
    for extra, message in (("system.loss.center_ratio=2.0", "center_ratio"),
                           ("system.refinement=true", "no RGB refinement"),
                           ("system.geometry.normal_type=pred", "normal_type"),
                           ("system.guidance.use_img_loss=true", "use_sjc and use_img_loss")):
        assert launch.main([*base, extra]) == 2, extra
        assert message in capfd.readouterr().err, extra
