"""The toy world (issue #7): procedural dataset, scoring against the true shape, and the shipped
toy priors (load/priors/) loading through the real models' from_pretrained paths."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tools.toyworld import dataset as toy_dataset
from tools.toyworld.render import render_shape_rgba
from tools.toyworld.scoring import score_views
from tools.toyworld.shapes import COLOURS, SHAPES, parse_caption, shape_mesh

REPO = Path(__file__).resolve().parents[1]


def test_catalogue_meshes_are_closed_and_fit_the_frame():
    assert set(SHAPES) == {"cube", "sphere", "cone", "cylinder", "torus"} and len(COLOURS) >= 4
    for shape in SHAPES:
        v, f, n = shape_mesh(shape)
        assert f.shape[1] == 3 and n.shape == v.shape
        assert torch.allclose(n.norm(dim=-1), torch.ones(len(n)), atol=1e-4)
        extent = v.norm(dim=-1).max()
        assert 0.3 < extent < 0.6, (shape, extent)  # fits the cameras' frame at distance ~2


def test_dataset_captions_cameras_and_masks():
    data = toy_dataset.generate(views_per_object=6, size=32, seed=1, objects=[("cube", "red"), ("torus", "blue")])
    assert data.images.shape == (12, 32, 32, 3) and data.masks.shape == (12, 32, 32, 1)
    assert data.elevation.min() >= -10 and data.elevation.max() <= 45
    assert data.distance.min() >= 1.8 and data.distance.max() <= 2.2
    caps = data.view_captions()
    assert caps[0].startswith("a red cube, ") and caps[-1].startswith("a blue torus, ")
    assert all(c.split(", ")[1] in {"front view", "side view", "back view", "overhead view"} for c in caps)
    # the object covers a sensible part of every frame; background pixels are white
    cover = data.masks.mean((1, 2, 3))
    assert (cover > 0.05).all() and (cover < 0.6).all()
    bg = data.masks[..., 0] == 0
    assert torch.allclose(data.images[bg], torch.ones(3))
    # a red object is red where covered
    fg = data.masks[:6, ..., 0] > 0.99
    mean = data.images[:6][fg].mean(0)
    assert mean[0] > 2 * mean[1] and mean[0] > 2 * mean[2]


def test_dataset_save_load_round_trip(tmp_path):
    data = toy_dataset.generate(views_per_object=2, size=16, seed=0, objects=[("cone", "green")])
    data.save(tmp_path / "d.npz")
    back = toy_dataset.ToyDataset.load(tmp_path / "d.npz")
    assert back.objects == [("cone", "green")] and back.view_captions() == data.view_captions()
    assert (back.images - data.images).abs().max() <= 0.5 / 255 + 1e-6


def _views(shape: str, colour: str, n: int = 8, size: int = 48):
    ele = torch.full((n,), 20.0)
    azi = torch.linspace(-180, 180, n + 1)[:-1]
    dist, fovy = torch.full((n,), 2.0), torch.full((n,), 40.0)
    cams = {"elevation": ele, "azimuth": azi, "distance": dist, "fovy_deg": fovy}
    return render_shape_rgba(shape, colour, ele, azi, dist, fovy, size), cams


def test_scoring_against_the_true_shape():
    images, cams = _views("cube", "red")
    right = score_views(images, cams, "cube", "red")
    assert right.iou > 0.97 and right.right_colour and right.colour_error < 0.05 and right.passed()
    # another shape of the same colour: lower IoU; same shape, other colour: wrong colour
    sphere = score_views(*_views("torus", "red"), "cube", "red")
    assert sphere.iou < 0.6 and not sphere.passed()
    blue = score_views(*_views("cube", "blue"), "cube", "red")
    assert blue.iou > 0.97 and not blue.right_colour and blue.predicted_colour == "blue"
    empty = score_views(torch.zeros_like(images), cams, "cube", "red")
    assert empty.iou == 0.0 and not empty.passed()


def test_parse_caption():
    assert parse_caption("a purple torus, side view") == ("torus", "purple")
    with pytest.raises(ValueError, match="names no toy-world object"):
        parse_caption("a hamburger")


# ---------------------------------------------------------------- the shipped priors (load/priors/)
TOY_SD = REPO / "load/priors/toy-sd"
TOY_ZERO123 = REPO / "load/priors/toy-zero123"
CAMERAS = {"elevation": torch.tensor([20.0, 5.0]), "azimuth": torch.tensor([10.0, 100.0]),
           "camera_distances": torch.tensor([2.0, 2.0])}


def test_shipped_priors_fit_the_size_budget():
    from lift3d.models.tiny_factory import folder_size_bytes

    total = folder_size_bytes(TOY_SD) + folder_size_bytes(TOY_ZERO123)
    assert 1e6 < total <= 30e6, total


def test_toy_sd_prior_loads_with_from_pretrained_and_gives_an_sds_gradient(tmp_path, one_torch_thread):
    from diffusers import StableDiffusionPipeline

    from lift3d.guidance.stable_diffusion import StableDiffusionGuidance
    from lift3d.prompt.stable_diffusion import StableDiffusionPromptProcessor

    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD)  # the real model's loader, whole pipeline
    assert pipe.unet.config.sample_size == 16 and pipe.vae.config.latent_channels == 4
    prompt_utils = StableDiffusionPromptProcessor({
        "prompt": "a red cube", "pretrained_model_name_or_path": str(TOY_SD), "cache_dir": str(tmp_path),
    })()
    guidance = StableDiffusionGuidance({"pretrained_model_name_or_path": str(TOY_SD), "guidance_scale": 7.5})
    assert guidance.resolution == 32 and guidance.latent_resolution == 16
    torch.manual_seed(0)
    image = torch.rand(2, 32, 32, 3, requires_grad=True)
    out = guidance(image, CAMERAS, prompt_utils)
    out["loss_sds"].backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


@pytest.mark.parametrize("prompt,shape,colour", [("a red cube", "cube", "red"), ("a blue sphere", "sphere", "blue")])
def test_toy_sd_prior_draws_the_prompted_object(prompt, shape, colour, one_torch_thread):
    """The prior is trained, not random: DDIM samples of a prompt, seen from the training camera
    distribution, have the prompt's colour and a silhouette close to the shape's."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from lift3d.prompt.stable_diffusion import encode_prompts
    from lift3d.models.ddim import ddim_sample, ddim_timesteps
    from tools.toyworld.shapes import COLOURS

    unet = UNet2DConditionModel.from_pretrained(TOY_SD, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(TOY_SD, subfolder="vae").eval()
    alphas = DDPMScheduler.from_pretrained(TOY_SD, subfolder="scheduler").alphas_cumprod.float()
    n = 4
    cond, uncond = encode_prompts(str(TOY_SD), [f"{prompt}, side view", ""]).chunk(2)
    text = torch.cat([cond.expand(n, -1, -1), uncond.expand(n, -1, -1)])

    def eps_fn(z, t):
        with torch.no_grad():
            ec, eu = unet(torch.cat([z, z]), torch.cat([t, t]), encoder_hidden_states=text).sample.chunk(2)
        return eu + 5.0 * (ec - eu)

    z = ddim_sample(torch.randn((n, 4, 16, 16), generator=torch.Generator().manual_seed(0)), ddim_timesteps(999, 25),
                    eps_fn, alphas)
    with torch.no_grad():
        img = (vae.decode(z / vae.config.scaling_factor).sample * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    fg = (img - 1.0).abs().amax(-1) > 0.15  # not white background
    cover = fg.float().mean((1, 2))
    assert ((cover > 0.08) & (cover < 0.6)).all(), cover
    mean = img[fg].mean(0)
    nearest = min(COLOURS, key=lambda c: float((torch.tensor(COLOURS[c]) * 0.85 - mean).norm()))
    assert nearest == colour, (mean, nearest)


def test_toy_zero123_prior_loads_and_gives_a_usd_gradient(one_torch_thread, tmp_path):
    from custom.usd.image_guidance import USDImageGuidance
    from extern.zero123.pipeline import Zero123Pipeline

    pipe = Zero123Pipeline.from_pretrained(TOY_ZERO123)
    assert pipe.unet.config.in_channels == 8 and pipe.unet.config.sample_size == 16
    guidance = USDImageGuidance({
        "pretrained_model_name_or_path": str(TOY_ZERO123), "sd_model_name_or_path": str(TOY_SD),
        "cond_image_path": str(REPO / "load/images/toy_yellow_cone_rgba.png"), "cond_elevation_deg": 15.0,
        "cond_azimuth_deg": 0.0, "cond_camera_distance": 2.0, "cache_dir": str(tmp_path),
    })
    torch.manual_seed(0)
    image = torch.rand(2, 32, 32, 3, requires_grad=True)
    out = guidance(image, CAMERAS)
    out["loss_usd"].backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


# ---------------------------------------------------------------- benchmarks/toyworld.py's VSD method (issue 15)
def test_toyworld_vsd_method_is_the_sds_demo_with_a_lora_that_learns(tmp_path, one_torch_thread):
    """The VSD run of benchmarks/toyworld.py (configs/demo/text-to-3d-vsd.yaml, the benchmark's own overrides)
    validates, differs from the SDS/USD demo only in guidance, losses and the LoRA's optimizer group, and
    its LoRA (rank 2 on the toy UNet, group guidance_params) learns from its own loss at the config's lr."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from benchmarks import toyworld as bench
    from lift3d.config import load_config
    from lift3d.registry import find
    from lift3d.systems.optim import make_optimizer

    args = SimpleNamespace(config="configs/demo/text-to-3d.yaml", steps=2)

    def loaded(method):
        m = bench.METHODS[method]
        overrides = ["system.prompt_processor.prompt=a red cube", f"system.prompt_processor.cache_dir={tmp_path}",
                     *m.run_overrides(args)]
        return load_config(str(REPO / m.config_for(args)), cli_args=overrides, validate=True)

    vsd, sds = loaded("VSD"), loaded("SDS")
    hifa = loaded("HiFA").system.guidance  # SDS with HiFA's annealed timestep
    assert hifa.usd_lambda == 1.0 and hifa.sqrt_anneal and hifa.trainer_max_steps == 2
    assert vsd.system_type == "prolificdreamer-system" and vsd.trainer.max_steps == 2
    assert vsd.system.guidance_type == "stable-diffusion-vsd-guidance"
    assert vsd.system.guidance.pretrained_model_name_or_path_lora == str(TOY_SD.relative_to(REPO))
    # equal terms: every section but the guidance and its loss / optimizer group is the demo's
    for key in ("data", "trainer"):
        assert vsd[key] == sds[key], key
    for key in ("geometry", "renderer", "background", "prompt_processor", "save_rgba_dataset"):
        assert vsd.system[key] == sds.system[key], key
    for key in ("guidance_scale", "min_step_percent", "max_step_percent", "weighting_strategy"):
        assert vsd.system.guidance[key] == sds.system.guidance[key], key
    assert {k: v for k, v in vsd.system.loss.items() if k not in ("lambda_vsd", "lambda_lora")} == \
        {k: v for k, v in sds.system.loss.items() if k != "lambda_usd"}
    assert vsd.system.loss.lambda_vsd == sds.system.loss.lambda_usd and vsd.system.loss.lambda_lora > 0
    params = OmegaConf.to_container(vsd.system.optimizer.params)
    lora_lr = params.pop("guidance_params")["lr"]
    assert params == OmegaConf.to_container(sds.system.optimizer.params)

    torch.manual_seed(0)  # the LoRA's A and the camera MLP's initial weights
    system = find(vsd.system_type)(vsd.system)
    system.setup("fit")
    guidance, lora = system.guidance, system.guidance_params
    groups = {g["name"]: g for g in make_optimizer(system, vsd.system.optimizer).param_groups}
    assert {id(p) for p in groups["guidance_params"]["params"]} == {id(p) for p in lora.parameters()}
    ranks = {min(p.shape) for name, p in lora.named_parameters() if name.endswith((".A.weight", ".B.weight"))}
    assert ranks == {2}
    # a few of the LoRA's own steps at the config's lr lower its loss on fixed renders, noise and timesteps
    latents = guidance.get_latents(torch.rand(2, 32, 32, 3) * 0.2 + 0.4, False)  # [2,4,16,16] grey blobs
    text = system.prompt_utils.get_text_embeddings(CAMERAS["elevation"], CAMERAS["azimuth"],
                                                    CAMERAS["camera_distances"], False).chunk(2)[0]
    camera, t, noise = torch.randn(2, 16), torch.tensor([300, 600]), torch.randn_like(latents)

    def lora_loss():
        return guidance.lora_loss(latents, text, camera, t=t, noise=noise, drop_camera=False)

    optimizer = torch.optim.AdamW(lora.parameters(), lr=lora_lr)
    before = float(lora_loss().detach())
    for _ in range(5):
        optimizer.zero_grad()
        lora_loss().backward()
        optimizer.step()
    after = float(lora_loss().detach())
    assert after < 0.9 * before, (before, after)


# ---------------------------------------------------------------- benchmarks/toyworld.py --image's Magic123 method (issue 15)
def test_toyworld_magic123_method_is_the_usd_image_demo_with_magic123s_method_keys(tmp_path):
    """The Magic123 run of benchmarks/toyworld.py --image (configs/demo/image-to-3d-magic123.yaml with the
    benchmark's own overrides) validates and differs from the USD image demo's run only in the method: the
    system type, the guidances / prompt, the loss weights and the renderer's comp_normal switch."""
    from types import SimpleNamespace

    import numpy as np
    from omegaconf import OmegaConf
    from PIL import Image

    from benchmarks import toyworld as bench
    from lift3d.config import load_config

    args = SimpleNamespace(config="configs/demo/text-to-3d.yaml", steps=2, out=str(tmp_path))
    assert set(bench.IMAGE_METHODS) == {"Magic123", "USD-image"}

    def loaded(method):
        m = bench.METHODS[method]
        overrides = [*bench.prompt_overrides("a red cube", method, args), *m.run_overrides(args)]
        if m.prompt_key:
            overrides.append(f"system.prompt_processor.cache_dir={tmp_path}")
        return OmegaConf.to_container(load_config(str(REPO / m.config_for(args)), cli_args=overrides, validate=True),
                                      resolve=True)

    magic, usd = loaded("Magic123"), loaded("USD-image")
    reference = tmp_path / "references/a_red_cube_rgba.png"  # the caption's object, rendered for both
    assert magic["data"]["image_path"] == usd["data"]["image_path"] == str(reference.resolve())
    rgba = torch.from_numpy(np.array(Image.open(reference)))[None].float() / 255  # [1,128,128,4]
    camera = {"elevation": torch.tensor([15.0]), "azimuth": torch.tensor([0.0]), "distance": torch.tensor([2.0]),
              "fovy_deg": torch.tensor([40.0])}  # the demo's data.default_* camera
    assert score_views(rgba, camera, "cube", "red").iou > 0.97
    assert magic["system_type"] == "magic123-system" and usd["system_type"] == "usd-system"
    assert magic["trainer"]["max_steps"] == 2
    for key in ("data", "trainer", "checkpoint", "seed"):
        assert magic[key] == usd[key], key
    method_keys = {"guidance_type", "guidance", "guidance_3d_type", "guidance_3d", "prompt_processor_type",
                   "prompt_processor", "loss", "renderer"}
    ms, us = magic["system"], usd["system"]
    assert {k: v for k, v in ms.items() if k not in method_keys} == {k: v for k, v in us.items() if k not in method_keys}
    assert {k: v for k, v in ms["renderer"].items() if k != "return_comp_normal"} == us["renderer"]
    assert ms["renderer"]["return_comp_normal"]  # Magic123's 2D normal smoothness
    # Magic123's priors are the toy ones the USD demo uses; its weights are magic123-coarse-sd.yaml's
    assert ms["guidance_3d_type"] == "zero123-guidance" and ms["guidance_type"] == "stable-diffusion-guidance"
    assert ms["guidance_3d"]["pretrained_model_name_or_path"] == us["guidance"]["pretrained_model_name_or_path"]
    assert ms["guidance"]["pretrained_model_name_or_path"] == us["guidance"]["sd_model_name_or_path"]
    assert ms["prompt_processor"]["prompt"] == "a red cube"
    coarse = OmegaConf.load(REPO / "configs/magic123-coarse-sd.yaml").system
    assert ms["loss"] == {k: v for k, v in OmegaConf.to_container(coarse.loss).items() if k != "lambda_sds_img"}
    for section in ("guidance", "guidance_3d"):
        for key in ("guidance_scale", "min_step_percent", "max_step_percent"):
            assert ms[section][key] == coarse[section][key], (section, key)
