"""Magic123 (magic123-system) and HiFA (stable-diffusion-guidance's sqrt_anneal / use_img_loss) on tiny models.

- The two priors' weighting: the gradient of a step with (lambda_sds, lambda_3d_sds) = (a, b) is
  a·(gradient with the SD prior alone at weight 1) + b·(gradient with Zero-1-to-3 alone at weight 1).
- HiFA's annealed timestep at known steps, and its image-space loss (value and gradient) against the
  formula of docs/methods/hifa.md computed here from the model's own pieces.
- The configs end to end (slow): coarse NeRF -> refine DMTet -> export, and hifa.yaml.
"""
import math

import pytest
import torch
from omegaconf import OmegaConf

from lift3d.errors import ConfigError
from lift3d.models import noise_schedule
from tests.helpers import only_trial, run_launch

pytestmark = [pytest.mark.usefixtures("one_torch_thread_per_module"),  # tiny models: one thread
              pytest.mark.filterwarnings("ignore:You are trying to")]  # steps called without a Trainer

IMAGE = "load/images/capsule_rgba.png"
TINY_FIELD = {"radius": 1.0, "normal_type": "finite_difference",
              "pos_encoding_config": {"otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2,
                                      "log2_hashmap_size": 10, "base_resolution": 4, "per_level_scale": 2.0},
              "mlp_network_config": {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none",
                                     "n_neurons": 16, "n_hidden_layers": 1}}


def system_cfg(tiny_sd, tiny_zero123, cache, **loss):
    data = {"default_camera_distance": 2.5, "default_fovy_deg": 40.0}
    return OmegaConf.create({
        "geometry": TINY_FIELD,
        "renderer": {"radius": 1.0, "num_samples_per_ray": 16, "grid_prune": False},
        "prompt_processor": {"pretrained_model_name_or_path": str(tiny_sd), "prompt": "a capsule",
                             "cache_dir": str(cache)},
        "guidance": {"pretrained_model_name_or_path": str(tiny_sd), "guidance_scale": 7.5, "cfg_form": "standard"},
        "guidance_3d": {"pretrained_model_name_or_path": str(tiny_zero123), "cond_image_path": IMAGE,
                        "cond_camera_distance": data["default_camera_distance"], "guidance_scale": 3.0},
        "loss": {"lambda_rgb": 0.0, "lambda_mask": 0.0, **loss},
    })


def data_batch(size=16):
    from lift3d.data.single_image import SingleImageIterableDataset

    stream = SingleImageIterableDataset({
        "image_path": IMAGE, "height": size, "width": size, "default_camera_distance": 2.5, "default_fovy_deg": 40.0,
        "seed": 0, "random_camera": {"height": size, "width": size, "batch_size": 1, "seed": 1,
                                     "camera_distance_range": [2.5, 2.5], "fovy_range": [40.0, 40.0]}})
    return stream.sample()


@pytest.fixture(scope="module")
def magic123(tiny_sd_path, tiny_zero123_path, tmp_path_factory):
    from lift3d.systems.magic123 import Magic123System

    torch.manual_seed(0)
    system = Magic123System(system_cfg(tiny_sd_path, tiny_zero123_path, tmp_path_factory.mktemp("cache"),
                                       lambda_sds=1.0, lambda_3d_sds=1.0))
    system.build_guidance()
    return system


def step_gradient(system, batch, lambda_sds, lambda_3d_sds):
    """d(training loss)/d(geometry parameters), flattened, for one step with these two weights (same draws)."""
    system.cfg.loss.lambda_sds = lambda_sds
    system.cfg.loss.lambda_3d_sds = lambda_3d_sds
    system.zero_grad()
    torch.manual_seed(123)  # the same timesteps, noise and ray samples in every call
    loss = system.training_step(batch, 0)
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in system.geometry.parameters() if p.grad is not None])


def test_total_gradient_is_the_weighted_sum_of_the_two_priors(magic123):
    batch = data_batch()
    g_sd = step_gradient(magic123, batch, 1.0, 0.0)
    g_3d = step_gradient(magic123, batch, 0.0, 1.0)
    a, b = 0.3, 2.0
    g = step_gradient(magic123, batch, a, b)
    assert g_sd.norm() > 0 and g_3d.norm() > 0
    assert not torch.allclose(g_sd / g_sd.norm(), g_3d / g_3d.norm(), atol=1e-2)  # two different priors
    torch.testing.assert_close(g, a * g_sd + b * g_3d, rtol=1e-4, atol=1e-7 * float(g.abs().max()))


def test_each_prior_alone_is_its_own_guidance(magic123):
    """With lambda_sds = 0 the step's gradient on the random view's render is exactly what
    zero123-guidance alone gives for that render (same draws), scaled by lambda_3d_sds."""
    batch = data_batch()
    view = batch["random_camera"]
    magic123.cfg.loss.lambda_sds, magic123.cfg.loss.lambda_3d_sds = 0.0, 2.5
    torch.manual_seed(7)
    out = magic123(view)
    image = out["comp_rgb"].detach().requires_grad_(True)
    # the system calls the SD prior first: replay its draws, then the 3D prior's
    magic123.guidance(image, batch=view, prompt_utils=magic123.prompt_utils)
    terms = magic123.guidance_3d(image, batch=view)
    (2.5 * terms["loss_sds"]).backward()
    expected = image.grad.clone()

    captured = {}
    render = magic123.renderer.forward

    def spy(**kw):  # the step's only render: the random view (no reference losses are weighed)
        result = render(**kw)
        assert "rgb" not in kw and "rgb" not in captured
        result["comp_rgb"].retain_grad()
        captured["rgb"] = result["comp_rgb"]
        return result

    magic123.renderer.forward = spy
    try:
        torch.manual_seed(7)
        magic123.training_step(batch, 0).backward()
    finally:
        magic123.renderer.forward = render
    torch.testing.assert_close(captured["rgb"].grad, expected, rtol=1e-4, atol=1e-8)


def test_lambda_3d_keys_are_checked_against_the_3d_guidance(tiny_sd_path, tiny_zero123_path, tmp_path):
    from lift3d.systems.magic123 import Magic123System

    cfg = system_cfg(tiny_sd_path, tiny_zero123_path, tmp_path, lambda_sds=1.0, lambda_3d_sds=1.0)
    Magic123System.validate_config(cfg)
    bad = system_cfg(tiny_sd_path, tiny_zero123_path, tmp_path, lambda_sds=1.0, lambda_3d_usd=1.0)
    with pytest.raises(ConfigError, match=r"lambda_3d_usd weighs no loss .*lambda_3d_sds"):
        Magic123System.validate_config(bad)
    wrong = system_cfg(tiny_sd_path, tiny_zero123_path, tmp_path, lambda_sds=1.0)
    wrong.guidance_3d_type = "no-material"
    with pytest.raises(ConfigError, match="guidance_3d_type"):
        Magic123System.validate_config(wrong)


# ------------------------------------------------------------------ HiFA
def sd_guidance(path, **cfg):
    from lift3d.guidance.stable_diffusion import StableDiffusionGuidance

    return StableDiffusionGuidance({"pretrained_model_name_or_path": str(path), **cfg})


def test_hifa_sqrt_anneal_timesteps(tiny_sd_path):
    from lift3d.guidance.hifa import sqrt_anneal_percent

    g = sd_guidance(tiny_sd_path, sqrt_anneal=True, trainer_max_steps=100, min_step_percent=0.02,
                    max_step_percent=0.98)
    expected = {0: 980, 25: 500, 100: 20, 400: 20}  # (0.98-0.02)(1-sqrt(s/100))+0.02; held at the end
    for step, t in expected.items():
        g.update_step(0, step)
        assert (g.min_step, g.max_step) == (t, t), step
    assert math.isclose(sqrt_anneal_percent(64, 100, 0.02, 0.98), 0.96 * 0.2 + 0.02)
    t = g.sample_timesteps(3, "cpu")
    assert t.tolist() == [20, 20, 20]  # one deterministic timestep per step
    plain = sd_guidance(tiny_sd_path, min_step_percent=0.02, max_step_percent=0.98)
    plain.update_step(0, 25)
    assert (plain.min_step, plain.max_step) == (20, 980)  # off by default
    with pytest.raises(ConfigError, match="trainer_max_steps"):
        sd_guidance(tiny_sd_path, sqrt_anneal=True, trainer_max_steps=0)
    with pytest.raises(ConfigError, match="use_img_loss"):
        sd_guidance(tiny_sd_path, use_img_loss=True, rgb_as_latents=True)


def test_hifa_image_space_loss_is_its_formula(tiny_sd_path, tmp_path):
    from lift3d.prompt.stable_diffusion import StableDiffusionPromptProcessor

    prompt_utils = StableDiffusionPromptProcessor({"prompt": "a red car", "cache_dir": str(tmp_path),
                                                   "pretrained_model_name_or_path": str(tiny_sd_path)})()
    g = sd_guidance(tiny_sd_path, use_img_loss=True, guidance_scale=7.5)
    torch.manual_seed(0)
    render = torch.rand(2, 32, 32, 3, requires_grad=True)
    image = torch.nn.functional.interpolate(render.permute(0, 3, 1, 2), size=(64, 64), mode="bilinear",
                                            align_corners=False)  # what the guidance sees [B,3,64,64]
    image.retain_grad()
    latents = g.model.encode_images(image.detach(), sample=False)
    batch = {"elevation": torch.tensor([10.0, 20.0]), "azimuth": torch.tensor([0.0, 90.0]),
             "camera_distances": torch.tensor([2.0, 2.0])}
    text = g.text_embeddings(prompt_utils, batch)
    t, noise = torch.tensor([300, 700]), torch.randn_like(latents)
    out = g.sds_from_latents(latents, text, t=t, noise=noise, render=image.permute(0, 2, 3, 1))
    # the formula, from the model's own pieces
    z_t = noise_schedule.add_noise(latents, noise, t, g.alphas_cumprod)
    eps = g.guided_noise(z_t, t, text)
    a = g.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x0 = (z_t - (1 - a).sqrt() * eps) / a.sqrt()
    denoised = g.model.decode_latents(x0).permute(0, 3, 1, 2)
    grad_img = (1 - a) * (image.detach() - denoised) * a.sqrt() / (1 - a).sqrt()
    torch.testing.assert_close(out["loss_sds_img"], 0.5 * grad_img.square().sum() / 2, rtol=1e-4, atol=1e-7)
    out["loss_sds_img"].backward()
    torch.testing.assert_close(image.grad, grad_img / 2, rtol=1e-4, atol=1e-5 * float(grad_img.abs().max()))
    assert "loss_sds_img" not in sd_guidance(tiny_sd_path).sds_from_latents(latents, text, t=t, noise=noise,
                                                                           render=image.permute(0, 2, 3, 1))


# ------------------------------------------------------------------ threestudio's unified guidances (SDS mode)
def test_unified_guidances_are_the_lift3d_guidances_under_threestudio_names(tiny_sd_path, tiny_zero123_path, tmp_path):
    from lift3d.guidance.unified import StableDiffusionUnifiedGuidance, Zero123UnifiedGuidance
    from lift3d.guidance.zero123 import Zero123Guidance
    from lift3d.prompt.stable_diffusion import StableDiffusionPromptProcessor

    prompt_utils = StableDiffusionPromptProcessor({"prompt": "a red car", "cache_dir": str(tmp_path),
                                                   "pretrained_model_name_or_path": str(tiny_sd_path)})()
    batch = {"elevation": torch.tensor([10.0, 20.0]), "azimuth": torch.tensor([0.0, 90.0]),
             "camera_distances": torch.tensor([2.5, 2.5])}
    torch.manual_seed(0)
    render = torch.rand(2, 32, 32, 3)
    common = {"pretrained_model_name_or_path": str(tiny_sd_path), "guidance_scale": 7.5}
    unified = StableDiffusionUnifiedGuidance({**common, "guidance_type": "sds", "weighting_strategy": "dreamfusion"})
    plain = sd_guidance(tiny_sd_path, **common, cfg_form="standard", weighting_strategy="sds")
    t, noise = torch.tensor([400, 400]), torch.randn(2, 4, 8, 8)
    torch.manual_seed(1)
    u = unified(render, batch, prompt_utils, t=t, noise=noise)
    torch.manual_seed(1)  # the same VAE posterior sample
    v = plain(render, batch, prompt_utils, t=t, noise=noise)
    assert "loss_sd" in u and "loss_sds" not in u
    torch.testing.assert_close(u["loss_sd"], v["loss_sds"])
    assert unified.sample_timesteps(4, "cpu").unique().numel() == 1  # one t for the batch
    z_common = {"pretrained_model_name_or_path": str(tiny_zero123_path), "cond_image_path": IMAGE,
                "cond_camera_distance": 2.5}
    z_unified = Zero123UnifiedGuidance({**z_common, "guidance_type": "sds"})
    z_plain = Zero123Guidance({**z_common, "guidance_scale": 5.0})
    torch.manual_seed(2)
    zu = z_unified(render, batch, t=t, noise=noise)
    torch.manual_seed(2)
    zp = z_plain(render, batch, t=t, noise=noise)
    torch.testing.assert_close(zu["loss_sd"], zp["loss_sds"], rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="stable-diffusion-vsd-guidance"):  # VSD mode: the SD guidance's only
        Zero123UnifiedGuidance({**z_common, "guidance_type": "vsd"})
    with pytest.raises(ConfigError, match="controlnet_model_name_or_path"):
        StableDiffusionUnifiedGuidance({**common, "controlnet_model_name_or_path": "x"})


# ------------------------------------------------------------------ configs end to end
def tiny_overrides(root, tiny_sd, tiny_zero123, size=32):
    return [
        f"data.image_path={IMAGE}", "system.prompt_processor.prompt=a_capsule",
        f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd}",
        f"system.guidance.pretrained_model_name_or_path={tiny_sd}",
        f"system.guidance_3d.pretrained_model_name_or_path={tiny_zero123}",
        f"system.prompt_processor.cache_dir={root}/cache", f"exp_root_dir={root}", "use_timestamp=false",
        "trainer.enable_progress_bar=false", f"data.height={size}", f"data.width={size}",
        f"data.random_camera.height={size}", f"data.random_camera.width={size}",
        f"data.random_camera.eval_height={size}", f"data.random_camera.eval_width={size}",
        "data.random_camera.n_val_views=1", "data.random_camera.n_test_views=2", "trainer.max_steps=2",
        "trainer.val_check_interval=2", "system.geometry.pos_encoding_config.n_levels=4",
        "system.geometry.pos_encoding_config.log2_hashmap_size=12",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["", "hifa-"])
def test_magic123_coarse_refine_export(tmp_path, tiny_sd_path, tiny_zero123_path, variant):
    common = tiny_overrides(tmp_path, tiny_sd_path, tiny_zero123_path)
    run_launch(["--config", f"configs/magic123-{variant}coarse-sd.yaml", "--train", *common,
                "system.renderer.num_samples_per_ray=24", "system.geometry.pos_encoding_config.start_level=2"])
    coarse = only_trial(tmp_path, f"magic123-{variant}coarse-sd")
    metrics = (coarse / "csv_logs/metrics.csv").read_text().splitlines()[0]
    assert all(k in metrics for k in ("train/loss_sds", "train/loss_3d_sds", "train/loss_rgb", "train/loss_mask"))
    assert ("train/loss_sds_img" in metrics) == (variant == "hifa-")
    # 2 coarse steps leave the initial density blob: convert at 5 instead of 25 (as tests/test_mesh_stages.py)
    run_launch(["--config", f"configs/magic123-{variant}refine-sd.yaml", "--train", *common,
                "system.geometry.isosurface_resolution=16", "system.geometry.convert_threshold=5",
                f"system.geometry_convert_from={coarse}", "trainer.num_sanity_val_steps=0"])
    refine = only_trial(tmp_path, f"magic123-{variant}refine-sd")
    assert (refine / "save/it2-test.mp4").is_file()
    metrics = (refine / "csv_logs/metrics.csv").read_text().splitlines()[0]
    assert "train/loss_normal_consistency" in metrics and "train/loss_z_variance" not in metrics
    if variant:  # the export path is the same for both variants
        return
    run_launch(["--config", str(refine / "configs/parsed.yaml"), "--export", f"resume={refine}/ckpts/last.ckpt",
                "system.exporter.texture_size=32"])
    assert (refine / "save/it2-export/model.obj").is_file()


@pytest.mark.slow
def test_hifa_config_trains(tmp_path, tiny_sd_path):
    run_launch(["--config", "configs/hifa.yaml", "--train", "system.prompt_processor.prompt=a_cat",
                f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
                f"system.prompt_processor.cache_dir={tmp_path}/cache", f"exp_root_dir={tmp_path}",
                "use_timestamp=false", "trainer.enable_progress_bar=false", "data.width=32", "data.height=32",
                "data.eval_width=32", "data.eval_height=32", "data.n_val_views=1", "data.n_test_views=2",
                "trainer.max_steps=2", "trainer.val_check_interval=2", "system.guidance.trainer_max_steps=4",
                "system.loss.lambda_sds_img=0.01", "system.renderer.num_samples_per_ray=24",
                "system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.start_level=2",
                "system.geometry.pos_encoding_config.log2_hashmap_size=12"])
    trial = only_trial(tmp_path, "hifa")
    rows = (trial / "csv_logs/metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [dict(zip(header, r.split(","))) for r in rows[1:]]
    timesteps = [float(r["train/timestep"]) for r in steps if r.get("train/timestep")]
    # sqrt anneal over 4 steps: t = int(1000 (0.96 (1 - sqrt(s/4)) + 0.02)) at s = 0, 1
    assert timesteps == [980.0, 500.0]
    assert any(r.get("train/loss_sds_img") for r in steps)
