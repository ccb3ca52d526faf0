"""ControlNet guidance and Control4D's static variant (issue #16 point 5; docs/methods/control4d.md):
the canny / normal conditions on known images, the ControlNet's residuals reaching the UNet, the edit mode's
DDIM identity, the GAN renderer's levels and modes, the hybrid material, and threestudio's control4d-static
config (a copy under tests/data/threestudio_style) run verbatim with tiny models: train, test, export."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lift3d.data.cameras import look_at_c2w
from lift3d.registry import find

CONFIGS = Path(__file__).resolve().parent / "data" / "threestudio_style"
pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def tiny_cn_path(tmp_path_factory, tiny_sd_path) -> Path:
    from lift3d.models.tiny_factory import make_tiny_controlnet

    return make_tiny_controlnet(tmp_path_factory.mktemp("tiny-cn") / "cn", tiny_sd_path, seed=3)


@pytest.fixture(scope="module")
def prompt_utils(tiny_sd_path):
    return find("stable-diffusion-prompt-processor")({"pretrained_model_name_or_path": str(tiny_sd_path),
                                                      "prompt": "a red cube"})()


def guidance(sd, cn, **cfg):
    return find("stable-diffusion-controlnet-guidance")({"pretrained_model_name_or_path": str(sd),
                                                         "controlnet_name_or_path": str(cn), **cfg})


def ascii_image(edges: torch.Tensor) -> list[str]:
    return ["".join("#" if v else "." for v in row) for row in edges.int().tolist()]


# ------------------------------------------------------------------ conditions
def test_canny_finds_a_squares_edges_exactly_where_expected():
    from lift3d.guidance.control_conditions import canny_control, canny_edges

    image = torch.zeros(1, 3, 24, 24)
    image[..., 8:16, 8:16] = 1.0  # a white square, rows / columns 8..15
    edges = canny_edges(image, blur=0)[0, 0].bool()
    expected = torch.zeros(24, 24, dtype=torch.bool)
    # non-maximum suppression keeps the first pixel of each 2-pixel gradient plateau: column 7 / row 7 before
    # the square's left / top side, column 15 / row 15 (its own last pixels) on the right / bottom side
    expected[9:15, 7] = True
    expected[8, 8] = True  # at the top-left corner the gradient is diagonal: the corner pixel itself
    expected[8:15, 15] = True
    expected[7, 9:15] = True
    expected[15, 8:16] = True
    assert ascii_image(edges) == ascii_image(expected)
    # the guidance's 5x5 box blur: a closed band of edges around the square, nothing far from its border
    large = torch.zeros(1, 3, 32, 32)
    large[..., 8:24, 8:24] = 1.0
    ys, xs = torch.nonzero(canny_edges(large, blur=5)[0, 0].bool(), as_tuple=True)
    distance = torch.maximum((ys.float() - 15.5).abs(), (xs.float() - 15.5).abs())  # the border is at 8
    assert len(ys) > 40 and bool(((distance >= 6) & (distance <= 10)).all())
    for side in (ys.float() - 15.5, xs.float() - 15.5):  # edges on all four sides
        assert bool((side < -6).any()) and bool((side > 6).any())
    # thresholds above every gradient: no edge; the control image is 3 equal channels in {0, 1}
    assert canny_edges(image, low=2000, high=3000, blur=0).sum() == 0
    control = canny_control(image.permute(0, 2, 3, 1), blur=0)
    assert control.shape == (1, 3, 24, 24) and torch.equal(control[:, 0], control[:, 2])


def test_canny_hysteresis_keeps_weak_edges_only_when_connected_to_strong_ones():
    from lift3d.guidance.control_conditions import canny_edges

    image = torch.zeros(1, 1, 16, 32)
    image[..., 4:12, 4:12] = 40 / 255  # faint square: gradients 4·40 = 160 (between low=100 and high=300)
    image[..., 4:12, 20:28] = 40 / 255
    image[..., 4:12, 24:28] = 1.0  # ... its right half bright: strong edges that reach the faint part
    edges = canny_edges(image, low=100, high=300, blur=0)[0, 0]
    assert edges[:, :16].sum() == 0  # the faint square alone: weak edges, none kept
    assert edges[3, 20:24].sum() > 0 and edges[:, 24:].sum() > 0  # faint edges joined to strong ones stay


def test_normal_control_colours_the_camera_frame_left_up_front():
    from lift3d.guidance.control_conditions import normal_control

    c2w = look_at_c2w(torch.tensor([[3.0, 0.0, 0.0]]))  # at +x looking at the origin, +z up: right = +y
    world = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])  # front, up, right, left
    opacity = torch.ones(1, 1, 4, 1)
    comp_normal = ((world + 1) / 2).reshape(1, 1, 4, 3) * opacity  # as nerf-volume-renderer writes it
    colour = normal_control(comp_normal, opacity, c2w)[0, :, 0].T  # [4,3]
    expected = torch.tensor([[0.5, 0.5, 1.0], [0.5, 1.0, 0.5], [0.0, 0.5, 0.5], [1.0, 0.5, 0.5]])
    assert torch.allclose(colour, expected, atol=1e-5)
    empty = normal_control(torch.zeros(1, 1, 1, 3), torch.zeros(1, 1, 1, 1), c2w)[0, :, 0, 0]
    assert torch.allclose(empty, torch.tensor([0.5, 0.5, 1.0]))  # empty pixels: flat, facing the viewer


# ------------------------------------------------------------------ the guidance
def test_controlnet_residuals_reach_the_unet_and_scale_zero_is_plain_sd(tiny_sd_path, tiny_cn_path, prompt_utils):
    from lift3d.models.stable_diffusion import StableDiffusion

    g = guidance(tiny_sd_path, tiny_cn_path, control_type="canny")
    sd = StableDiffusion.load(str(tiny_sd_path))
    torch.manual_seed(0)
    z, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    text = g.text_embeddings(prompt_utils, 1)  # [2,77,D]: cond, uncond
    control = torch.zeros(1, 3, 64, 64)
    control[..., 16:48, 16:48] = 1.0
    eps_u, eps_c = sd.predict_noise(torch.cat([z, z]), torch.cat([t, t]), text.flip(0)).chunk(2)
    plain = eps_u + 7.5 * (eps_c - eps_u)  # threestudio's ControlNet guidance: standard CFG, scale 7.5
    assert torch.equal(g.guided_noise(z, t, text, control, condition_scale=0.0), plain)
    controlled = g.guided_noise(z, t, text, control, condition_scale=1.0)
    other = g.guided_noise(z, t, text, torch.ones_like(control), condition_scale=1.0)
    assert (controlled - plain).abs().max() > 1e-3 and (controlled - other).abs().max() > 1e-3


def test_edit_mode_one_ddim_step_is_the_guided_x0_estimate(tiny_sd_path, tiny_cn_path, prompt_utils):
    from lift3d.models.noise_schedule import add_noise, predict_x0

    g = guidance(tiny_sd_path, tiny_cn_path, control_type="normal", diffusion_steps=1)
    torch.manual_seed(1)
    latents, noise, t = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), 600
    text, control = g.text_embeddings(prompt_utils, 1), torch.rand(1, 3, 64, 64)
    edited = g.edit_latents(latents, text, control, t, noise)
    z_t = add_noise(latents, noise, torch.tensor([t]), g.alphas_cumprod)
    expected = predict_x0(z_t, g.guided_noise(z_t, torch.tensor([t]), text, control), torch.tensor([t]), g.alphas_cumprod)
    assert torch.allclose(edited, expected, atol=1e-5)
    # the whole call: normals from the render, an edited image of the render's size, no loss
    render = {"comp_normal": torch.rand(1, 16, 16, 3), "opacity": torch.ones(1, 16, 16, 1)}
    out = g(torch.rand(1, 16, 16, 3), {"c2w": torch.eye(4)[None]}, prompt_utils, render_out=render, t=torch.tensor([t]))
    assert out["edit_images"].shape == (1, 16, 16, 3) and "loss_sds" not in out
    with pytest.raises(ValueError, match="comp_normal"):
        g(torch.rand(1, 16, 16, 3), {"c2w": torch.eye(4)[None]}, prompt_utils)


def test_sds_mode_gives_loss_sds_with_the_sds_gradient(tiny_sd_path, tiny_cn_path, prompt_utils):
    g = guidance(tiny_sd_path, tiny_cn_path, control_type="canny", use_sds=True)
    torch.manual_seed(2)
    image = torch.rand(1, 64, 64, 3)
    latents = g.encode(image).detach().requires_grad_(True)
    g.encode = lambda _: latents  # the step's latents, to read their gradient
    t, noise = torch.tensor([300]), torch.randn(1, 4, 8, 8)
    out = g(image, {}, prompt_utils, t=t, noise=noise)
    out["loss_sds"].backward()
    control = g.control_image(image, None, None, None)
    z_t = g.model.add_noise(latents.detach(), noise, t)
    expected = (1 - g.alphas_cumprod[300]) * (g.guided_noise(z_t, t, g.text_embeddings(prompt_utils, 1), control) - noise)
    assert torch.allclose(latents.grad, expected, atol=1e-5)


def test_debugging_snippets_guidance_keys_are_understood(tiny_sd_path, tiny_cn_path, prompt_utils, tmp_path):
    from tools.config_compat_table import TinyModels, check_config

    for name, control in (("debugging-controlnet-canny", "canny"), ("debugging-controlnet-normal", "normal")):
        snippet = OmegaConf.load(CONFIGS / f"{name}.yaml").system
        cls = find(snippet.guidance_type)
        section = OmegaConf.merge(snippet.guidance, {"pretrained_model_name_or_path": str(tiny_sd_path),
                                                     "controlnet_name_or_path": str(tiny_cn_path), "diffusion_steps": 2})
        g = cls(section)
        assert g.cfg.control_type == control and (g.min_step, g.max_step) == (
            int(1000 * snippet.guidance.min_step_percent), int(1000 * snippet.guidance.max_step_percent))
        photo = torch.rand(1, 32, 32, 3)  # threestudio's snippet test: the photo is also the condition's source
        render = {"comp_normal": torch.rand(1, 32, 32, 3), "opacity": torch.ones(1, 32, 32, 1)}
        out = g(photo, {"c2w": torch.eye(4)[None]}, prompt_utils, render_out=render, cond_rgb=photo)
        assert out["edit_images"].shape == (1, 32, 32, 3)
        models = TinyModels(sd=str(tiny_sd_path), zero123="unused", deepfloyd_if="unused")
        assert check_config(CONFIGS / f"{name}.yaml", models).outcome == "not an experiment"


# ------------------------------------------------------------------ material and GAN renderer
def test_hybrid_material_activates_the_colour_only():
    material = find("hybrid-rgb-latent-material")({"n_output_dims": 11})
    features = torch.randn(5, 11)
    out = material(features)
    assert torch.equal(out[:, :3], torch.sigmoid(features[:, :3])) and torch.equal(out[:, 3:], features[:, 3:])
    with pytest.raises(ValueError, match="n_feature_dims"):
        material(torch.randn(5, 7))


def make_renderer():
    geometry = find("implicit-volume")({"radius": 2.0, "n_feature_dims": 11, "normal_type": "analytic",
                                        "density_bias": "blob_magic3d", "density_activation": "softplus",
                                        "pos_encoding_config": {"otype": "HashGrid", "n_levels": 2, "log2_hashmap_size": 10}})
    material = find("hybrid-rgb-latent-material")({"n_output_dims": 11})
    background = find("solid-color-background")({"n_output_dims": 11, "color": [0.0] * 11})
    return find("gan-volume-renderer")({"base_renderer": {"radius": 2.0, "num_samples_per_ray": 16}, "global_encoder_size": 64},
                                       geometry=geometry, material=material, background=background)


def rays(size: int = 16):
    c2w = look_at_c2w(torch.tensor([[3.0, 0.0, 0.5]]))
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    local = torch.stack([(xs - size / 2) / size, -(ys - size / 2) / size, -torch.ones_like(xs)], -1)
    d = torch.nn.functional.normalize(local @ c2w[0, :3, :3].T, dim=-1)[None]
    return c2w[0, :3, 3].expand_as(d), d


def test_gan_renderer_levels_shapes_and_evaluation_mode():
    torch.manual_seed(0)
    renderer = make_renderer()
    rays_o, rays_d = rays(16)
    gt = torch.rand(1, 16, 16, 3)
    levels = set()
    for _ in range(12):
        out = renderer(rays_o, rays_d, torch.zeros(1, 3), gt_rgb=gt, multi_level_guidance=True)
        levels.add(out["generator_level"])
        assert out["comp_gan_rgb"].shape == (1, 16, 16, 3) and out["opacity"].shape == (1, 4, 4, 1)
        assert out["comp_int_rgb"].shape == out["comp_gt_rgb"].shape == (1, 2, 2, 3)
        if out["generator_level"] == 2:  # the latent code comes from the local encoder's posterior of the target
            mean = renderer.local_encoder(gt.permute(0, 3, 1, 2)).chunk(2, dim=1)[0]
            assert torch.allclose(out["posterior"].mean, mean, atol=1e-5)
    assert levels == {0, 1, 2}
    renderer.eval()  # evaluation: level 0, the posterior mean (deterministic); the GAN networks stay in train mode
    assert not renderer.base_renderer.training and renderer.generator.training and renderer.discriminator.training
    with torch.no_grad():
        a, b = (renderer(rays_o, rays_d, torch.zeros(1, 3), gt_rgb=gt) for _ in range(2))
    assert a["generator_level"] == 0 and "comp_int_rgb" not in a
    assert torch.allclose(a["comp_gan_rgb"], b["comp_gan_rgb"], atol=1e-6)


# ------------------------------------------------------------------ threestudio's config, end to end
@pytest.mark.slow
def test_control4d_static_config_verbatim_train_test_export(tiny_sd_path, tmp_path):
    """The config unchanged plus the table's overrides (tools/config_compat_table.py): tiny SD / ControlNet /
    LPIPS, the synthetic posed-photo scene, its prompt, 2 steps (one view: a generator and a discriminator
    step) with an edit at step 0, then --test and --export of the checkpoint."""
    from tools.config_compat_table import TinyModels, run_config

    models = TinyModels(sd=str(tiny_sd_path), zero123="unused", deepfloyd_if="unused")
    row = run_config(CONFIGS / "control4d-static.yaml", models, tmp_path / "runs")
    assert row.outcome == "runs", row.detail
    ckpt = torch.load(row.trial / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    edits = ckpt["control4d_edit_frames"]  # the trained view was edited (start_editing_step=-1)
    assert len(edits) == 1 and next(iter(edits.values())).shape == (1, 32, 32, 3)
    assert any(k.startswith("renderer.discriminator.") for k in ckpt["state_dict"])
    assert not any(k.startswith("perceptual.") for k in ckpt["state_dict"])  # LPIPS stays out of checkpoints
    logged = (row.trial / "csv_logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {f"train/loss_{n}" for n in ("l1", "p", "kl", "G", "D", "orient", "sparsity", "opaque")} <= set(logged)
    frames = sorted((row.trial / "save" / "it2-test").glob("*.png"))
    assert len(frames) == 6 and (row.trial / "save" / "it2-test.mp4").is_file()  # the scene's 6 views
    assert any((row.trial / "save" / "it2-export").rglob("*.obj"))


def test_lift3d_config_validates_with_the_users_inputs(tiny_sd_path, tiny_cn_path, tmp_path):
    from lift3d.config import load_config, validate_experiment
    from lift3d.errors import ConfigError
    from lift3d.models.tiny_factory import make_tiny_lpips
    from tools.multiview_synthetic import write_multiview_scene

    scene = write_multiview_scene(tmp_path / "scene", n_views=2, size=32)
    inputs = [f"data.dataroot={scene}", f"system.guidance.pretrained_model_name_or_path={tiny_sd_path}",
              f"system.guidance.controlnet_name_or_path={tiny_cn_path}",
              f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
              "system.prompt_processor.prompt=a red shirt"]
    config = str(Path(__file__).resolve().parents[1] / "configs" / "control4d-static.yaml")
    validate_experiment(load_config(config, cli_args=inputs + [f"system.perceptual_model_path={make_tiny_lpips(tmp_path / 'lp')}"]))
    with pytest.raises(ConfigError, match=r"perceptual_model_path"):  # loss_p without LPIPS weights
        validate_experiment(load_config(config, cli_args=inputs + ["system.perceptual_model_path=null"]))
    system = OmegaConf.to_container(load_config(config, cli_args=inputs + ["system.perceptual_model_path=null"]).system,
                                    resolve=True)
    del system["optimizer"]["optimizer_dis"]
    with pytest.raises(ConfigError, match=r"optimizer_dis is missing"):
        find("control4d-multiview-system").validate_config(system, fitting=False)


def test_control4d_views_must_fit_the_discriminator_and_come_one_per_step():
    import types

    from lift3d.errors import ConfigError

    check = find("control4d-multiview-system").check_views
    fake = types.SimpleNamespace(renderer=types.SimpleNamespace(cfg=types.SimpleNamespace(discriminator_layers=3)))
    check(fake, 1, (24, 32))  # 24 px: the PatchGAN's last batch norm still sees 2x2 values
    with pytest.raises(ConfigError, match="too small for the discriminator.*train_downsample_resolution"):
        check(fake, 1, (16, 16))
    with pytest.raises(ConfigError, match="data.batch_size=1"):
        check(fake, 2, (64, 64))
