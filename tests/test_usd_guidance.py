"""USD guidances (custom/usd, docs/methods/usd.md §1-2) on tiny random Zero-1-to-3 / SD models.

What is checked, against predictions computed directly with the models' raw modules (UNets,
CLIP text encoder, camera projection) and the DDPM schedule, for fixed t and noise:
- image-to-3D, `unconditional: sd`, lambda in {0, 0.5, 1}:
      d loss_usd / d z = w(t) [w_cfg (eps_zero123(z_t, ref, T) - eps_sd(z_t, "")) + lambda (eps_sd(z_t, "") - eps)] / B,
  w(t) = 1 - alphabar_t; at lambda = 0 that is w(t) w_cfg (eps_zero123_cond - eps_sd_uncond) / B;
- image-to-3D, `unconditional: zero123`, lambda = 1: exactly (torch.equal) the gradient of
  `zero123-guidance` with the same seed (same render, same VAE sample, t and noise) — plain SDS;
- the reference-view delta term: d loss_usd_ref / d z_r = w(t_r) (eps_sd(z_r,t, "") - eps_sd(z_in,t, "")) / B_r;
- text-to-3D: w(t) [w_cfg (eps_sd(text) - eps_sd("")) + lambda (eps_sd("") - eps)], and lambda = 1
  equals `stable-diffusion-guidance` exactly;
- UNet calls per USD step (forward hooks): Zero-1-to-3 once (batch B), SD once (batch B + 2 B_r).
"""
from __future__ import annotations

import math

import pytest
import torch

from lift3d.errors import ConfigError
from lift3d.registry import find

from tests.helpers import REPO

IMAGE = str(REPO / "load/images/blocks_rgba.png")
REF = {"cond_elevation_deg": 15.0, "cond_azimuth_deg": 45.0, "cond_camera_distance": 1.5}
BATCH = {"elevation": torch.tensor([15.0, 40.0]), "azimuth": torch.tensor([45.0, -120.0]),
         "camera_distances": torch.tensor([1.5, 1.5])}


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tiny models: one thread


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("usd-text-cache"))


def make_image_guidance(z123, sd, cache_dir, **cfg):
    return find("usd-image-guidance")({
        "pretrained_model_name_or_path": str(z123), "sd_model_name_or_path": str(sd), "cond_image_path": IMAGE,
        "cache_dir": cache_dir, **REF, **cfg})


@pytest.fixture(scope="module")
def usd(tiny_zero123_path, tiny_sd_path, cache_dir):
    return make_image_guidance(tiny_zero123_path, tiny_sd_path, cache_dir, guidance_scale=7.5)


@pytest.fixture(scope="module")
def raw(tiny_sd_path):
    """SD's UNet, DDPM schedule and empty-prompt embedding, loaded independently of the guidance."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet").eval()
    alphas = DDPMScheduler.from_pretrained(tiny_sd_path, subfolder="scheduler").alphas_cumprod.float()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd_path, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(tiny_sd_path, subfolder="text_encoder").eval()
    with torch.no_grad():
        ids = tokenizer([""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        empty = encoder(ids)[0]  # [1,77,D]
    return unet, alphas, empty


def relative_cameras():
    """T = [Δpolar, sin Δaz, cos Δaz, Δradius] per sample (usd.md §2; polar = 90° - elevation)."""
    rows = []
    for ele, azi, dist in zip(*(BATCH[k].tolist() for k in ("elevation", "azimuth", "camera_distances"))):
        d_az = math.radians(azi - REF["cond_azimuth_deg"])
        rows.append([math.radians(REF["cond_elevation_deg"] - ele), math.sin(d_az), math.cos(d_az),
                     dist - REF["cond_camera_distance"]])
    return torch.tensor(rows)


def eps_zero123_cond(usd, z_t, t):
    pipe = usd.zero123.pipe
    B = z_t.shape[0]
    with torch.no_grad():
        context = pipe.clip_camera_projection(torch.cat([usd.reference.embedding.expand(B, -1, -1),
                                                         relative_cameras()[:, None, :]], dim=-1))
        ref = usd.reference.latents.expand(B, -1, -1, -1)
        return pipe.unet(torch.cat([z_t, ref], 1), t, encoder_hidden_states=context).sample


def eps_sd_uncond(raw, z_t, t):
    unet, _, empty = raw
    with torch.no_grad():
        return unet(z_t, t, encoder_hidden_states=empty.expand(z_t.shape[0], -1, -1)).sample


# ------------------------------------------------------------------ image-to-3D
@pytest.fixture
def usd_at(usd):
    """The module's guidance with cfg.usd_lambda set (as a config value, through update_step); reset after."""
    def set_lambda(lam):
        usd.cfg.usd_lambda = lam
        usd.update_step(0, 0)
        return usd

    yield set_lambda
    set_lambda(0.0)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_image_usd_gradient_is_the_unbiased_score(usd_at, raw, lam):
    _, alphas, _ = raw
    usd = usd_at(lam)
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 8, 8, generator=gen).requires_grad_(True)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([150, 700])
    out = usd.usd_from_latents(latents, usd.camera_embedding(BATCH), t=t, noise=noise)
    out["loss_usd"].backward()

    assert torch.allclose(usd.alphas_cumprod, alphas)  # Zero-1-to-3's schedule is SD's
    a = alphas[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * latents.detach() + (1 - a).sqrt() * noise
    eps_c, eps_u = eps_zero123_cond(usd, z_t, t), eps_sd_uncond(raw, z_t, t)
    grad = (1 - a) * (7.5 * (eps_c - eps_u) + lam * (eps_u - noise))
    if lam == 0.0:
        grad_usd = (1 - a) * 7.5 * (eps_c - eps_u)  # w(t) w_cfg (eps_zero123_cond - eps_sd_uncond)
        assert torch.allclose(grad, grad_usd)
    assert torch.allclose(latents.grad, grad / 2, atol=1e-5, rtol=1e-4)  # batch mean of the per-sample gradients
    assert out["loss_usd"].item() == pytest.approx(0.5 * grad.pow(2).sum().item() / 2, rel=1e-4)
    assert out["usd_lambda"].item() == lam
    # the SD unconditional differs from Zero-1-to-3's: the test can tell them apart
    assert not torch.allclose(eps_u, usd.zero123.noise_predictions(z_t, t, usd.reference, usd.camera_embedding(BATCH))[1], atol=1e-3)


def test_lambda_one_with_zero123_unconditional_is_zero123_sds_exactly(tiny_zero123_path, tiny_sd_path, cache_dir):
    cfg = {"guidance_scale": 3.0, "min_step_percent": 0.02, "max_step_percent": 0.98}
    usd = make_image_guidance(tiny_zero123_path, tiny_sd_path, cache_dir, usd_lambda=1.0, unconditional="zero123", **cfg)
    z123 = find("zero123-guidance")({"pretrained_model_name_or_path": str(tiny_zero123_path), "cond_image_path": IMAGE,
                                     **REF, **cfg})
    grads, losses = [], []
    for guidance in (z123, usd):
        render = torch.rand(2, 40, 40, 3, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
        torch.manual_seed(123)  # the same VAE posterior sample, t and noise
        out = guidance(render, BATCH)
        loss = out["loss_sds" if guidance is z123 else "loss_usd"]
        loss.backward()
        grads.append(render.grad)
        losses.append(loss.detach())
    assert torch.equal(grads[0], grads[1]) and torch.equal(losses[0], losses[1])
    assert grads[0].abs().sum() > 0
    # and on given latents, t and noise
    gen = torch.Generator().manual_seed(2)
    lat = [torch.randn(2, 4, 8, 8, generator=gen)] * 2
    noise, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([90, 910])
    lat = [x.clone().requires_grad_(True) for x in lat]
    z123.sds_from_latents(lat[0], z123.camera_embedding(BATCH), t=t, noise=noise)["loss_sds"].backward()
    usd.usd_from_latents(lat[1], usd.camera_embedding(BATCH), t=t, noise=noise)["loss_usd"].backward()
    assert torch.equal(lat[0].grad, lat[1].grad)


def test_reference_view_delta_term(usd, raw):
    _, alphas, _ = raw
    gen = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 4, 8, 8, generator=gen).requires_grad_(True)
    render = torch.randn(3, 4, 8, 8, generator=gen).requires_grad_(True)  # SD latents of the reference render
    target = torch.randn(3, 4, 8, 8, generator=gen)  # SD latents of the input image
    noise_r, t_r = torch.randn(3, 4, 8, 8, generator=gen), torch.tensor([40, 500, 960])
    from custom.usd.image_guidance import ReferenceLatents

    out = usd.usd_from_latents(latents, usd.camera_embedding(BATCH), t=torch.tensor([300, 600]),
                               noise=torch.randn(2, 4, 8, 8, generator=gen),
                               reference=ReferenceLatents(render, target, noise_r, t_r))
    out["loss_usd_ref"].backward()
    a = alphas[t_r].view(-1, 1, 1, 1)
    z_r = a.sqrt() * render.detach() + (1 - a).sqrt() * noise_r
    z_in = a.sqrt() * target + (1 - a).sqrt() * noise_r
    grad = (1 - a) * (eps_sd_uncond(raw, z_r, t_r) - eps_sd_uncond(raw, z_in, t_r))
    assert torch.allclose(render.grad, grad / 3, atol=1e-5, rtol=1e-4)
    assert latents.grad is None  # the two terms are separate losses
    # a render equal to the input image gets no gradient: the delta term vanishes at the reference
    same = target.clone().requires_grad_(True)
    usd.usd_from_latents(latents.detach(), usd.camera_embedding(BATCH),
                         reference=ReferenceLatents(same, target, noise_r, t_r))["loss_usd_ref"].backward()
    assert same.grad.abs().max() < 1e-5


class UNetCalls:
    """Counts forward calls of a UNet and records their batch sizes."""

    def __init__(self, unet):
        self.batches = []
        self.handle = unet.register_forward_pre_hook(lambda m, args, kwargs: self.batches.append(args[0].shape[0]),
                                                     with_kwargs=True)

    def close(self):
        self.handle.remove()


def count_step(guidance, B=2, Br=2):
    z_calls, sd_calls = UNetCalls(guidance.zero123.pipe.unet), UNetCalls(guidance.sd.unet)
    try:
        render = torch.rand(B, 32, 32, 3, requires_grad=True)
        ref_render = torch.rand(Br, 32, 32, 3, requires_grad=True)
        out = guidance(render, BATCH, reference_out={"comp_rgb": ref_render}, reference_image=torch.rand(Br, 32, 32, 3))
        (out["loss_usd"] + out["loss_usd_ref"]).backward()
        assert render.grad.abs().sum() > 0 and ref_render.grad.abs().sum() > 0
    finally:
        z_calls.close()
        sd_calls.close()
    return z_calls.batches, sd_calls.batches


def test_one_usd_step_calls_each_unet_once(usd, tiny_zero123_path, tiny_sd_path, cache_dir):
    # batch 2 random views + 2 reference views: Zero-1-to-3 conditional only (2), SD unconditional for
    # the novel views (2) and the reference render + input image (2 + 2) in one call
    assert count_step(usd) == ([2], [6])
    # Zero-1-to-3's own unconditional: its CFG batch (4); SD only for the reference term (4)
    z_unc = make_image_guidance(tiny_zero123_path, tiny_sd_path, cache_dir, unconditional="zero123")
    assert count_step(z_unc) == ([4], [4])
    # latents of different sizes (reference at 128² -> 16² latents, novel view 8²) cannot share a batch
    other = make_image_guidance(tiny_zero123_path, tiny_sd_path, cache_dir, reference_resolution=128)
    assert count_step(other) == ([2], [2, 4])


def test_empty_prompt_embedding_is_cached(usd, raw, cache_dir):
    _, _, empty = raw
    assert torch.allclose(usd.uncond_embedding, empty, atol=1e-6)
    from custom.usd.unconditional_text import prompt_embedding
    from lift3d.prompt.cache import TextEmbeddingCache, model_fingerprint

    cache = TextEmbeddingCache(cache_dir, model_fingerprint(usd.sd.path))
    assert cache.path("").is_file()  # the prompt processor's key: text-to-3D runs share it
    cache.save("", torch.full_like(empty[0], 7.0))
    assert prompt_embedding(usd.sd.path, cache_dir).eq(7.0).all()  # read from the cache, not re-encoded
    cache.save("", empty[0])


def test_scheduled_lambda_and_reference_timesteps(tiny_zero123_path, tiny_sd_path, cache_dir):
    g = make_image_guidance(tiny_zero123_path, tiny_sd_path, cache_dir, usd_lambda=[0, 0.0, 1.0, 100],
                            max_step_percent=[5000, 0.98, 0.5, 5001], reference_min_step_percent=0.1,
                            reference_max_step_percent=0.2)
    assert g.usd_lambda == 0.0 and (g.min_step, g.max_step) == (20, 980)
    assert (g.reference_min_step, g.reference_max_step) == (100, 200)
    g.do_update_step(0, 50)  # as the system propagates the step
    assert g.usd_lambda == pytest.approx(0.5)
    g.do_update_step(0, 6000)
    assert g.usd_lambda == 1.0 and g.max_step == 500
    ref = g.encode_reference(torch.rand(64, 16, 16, 3), torch.rand(64, 16, 16, 3))
    assert ref.t.min() >= 100 and ref.t.max() <= 200 and ref.render.shape == (64, 4, 8, 8)


def test_frozen_models_are_not_modules(usd):
    assert not isinstance(usd, torch.nn.Module)
    assert not any(isinstance(v, torch.nn.Module) for v in vars(usd).values())
    assert all(not p.requires_grad for p in usd.sd.unet.parameters())
    assert all(not p.requires_grad for p in usd.zero123.pipe.unet.parameters())


def test_config_errors(tiny_zero123_path, tiny_sd_path):
    from lift3d.config import parse_structured
    from lift3d.models.loading import ModelNotFoundError

    cls = find("usd-image-guidance")

    def check(**cfg):
        cls.validate_config(parse_structured(cls.Config, {
            "pretrained_model_name_or_path": str(tiny_zero123_path), "sd_model_name_or_path": str(tiny_sd_path),
            "cond_image_path": IMAGE, **cfg}))

    check()
    with pytest.raises(ConfigError, match="usd_lambda"):
        check(usd_lambda=1.5)
    with pytest.raises(ConfigError, match="unconditional 'clip'"):
        check(unconditional="clip")
    with pytest.raises(ConfigError, match="zero123_guidance_type"):
        check(zero123_guidance_type="stable-diffusion-guidance")
    with pytest.raises(ConfigError, match="reference_max_step_percent"):
        check(reference_max_step_percent=1.2)
    with pytest.raises(ModelNotFoundError, match="Stable Diffusion for system.guidance.sd_model_name_or_path"):
        check(sd_model_name_or_path="nonexistent-org/no-sd")
    with pytest.raises(ModelNotFoundError, match="Zero-1-to-3 for system.guidance.pretrained_model_name_or_path"):
        check(pretrained_model_name_or_path="nonexistent-org/no-zero123")
    with pytest.raises(ConfigError, match="system.guidance.cond_image_path"):
        check(cond_image_path="load/images/missing_rgba.png")
    check(zero123_guidance_type="stable-zero123-guidance")


# ------------------------------------------------------------------ text-to-3D
@pytest.fixture(scope="module")
def prompt_utils(tiny_sd_path, cache_dir):
    processor = find("stable-diffusion-prompt-processor")({
        "prompt": "a photo of a red car", "pretrained_model_name_or_path": str(tiny_sd_path), "cache_dir": cache_dir})
    return processor()


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_text_usd_gradient(tiny_sd_path, prompt_utils, raw, lam):
    unet, alphas, _ = raw
    g = find("usd-text-guidance")({"pretrained_model_name_or_path": str(tiny_sd_path), "usd_lambda": lam})
    sds = find("stable-diffusion-guidance")({"pretrained_model_name_or_path": str(tiny_sd_path), "guidance_scale": 7.5,
                                          "cfg_form": "standard"})  # usd-text-guidance's form (the original USD)
    gen = torch.Generator().manual_seed(4)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    noise, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([250, 800])
    text = prompt_utils.get_text_embeddings(BATCH["elevation"], BATCH["azimuth"], BATCH["camera_distances"])
    z = latents.clone().requires_grad_(True)
    out = g.sds_from_latents(z, text, t=t, noise=noise)
    out["loss_usd"].backward()
    a = alphas[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * latents + (1 - a).sqrt() * noise
    with torch.no_grad():
        eps_c = unet(z_t, t, encoder_hidden_states=text[:2]).sample
        eps_u = unet(z_t, t, encoder_hidden_states=text[2:]).sample
    grad = (1 - a) * (7.5 * (eps_c - eps_u) + lam * (eps_u - noise))
    assert torch.allclose(z.grad, grad / 2, atol=1e-5, rtol=1e-4)
    if lam == 1.0:  # plain SDS of stable-diffusion-guidance, bit for bit
        z_sds = latents.clone().requires_grad_(True)
        sds.sds_from_latents(z_sds, text, t=t, noise=noise)["loss_sds"].backward()
        assert torch.equal(z.grad, z_sds.grad)


def test_text_guidance_renders_and_loss_name(tiny_sd_path, prompt_utils):
    g = find("usd-text-guidance")({"pretrained_model_name_or_path": str(tiny_sd_path), "guidance_eval_interval": 1})
    image = torch.rand(2, 32, 32, 3, requires_grad=True)
    out = g(image, BATCH, prompt_utils=prompt_utils)
    out["loss_usd"].backward()
    assert "loss_sds" not in out and image.grad.abs().sum() > 0
    assert out["guidance_eval"].shape == (2 * 64, 4 * 64, 3)
    assert find("usd-text-guidance").produces == ("loss_usd", "loss_lora")  # loss_lora with baseline: vsd_lora
