"""The VSD pieces threestudio's ProlificDreamer variants add (docs/methods/prolificdreamer.md §5), on the
tiny Stable Diffusion:

- `stable-diffusion-unified-guidance` with `guidance_type: vsd` computes stable-diffusion-vsd-guidance's
  gradient and LoRA loss (same seed, same models, s_phi = 1), and with s_phi != 1 the unified form
  w(t) (eps_pre - eps_phi), eps_phi = CFG over (prompt, camera) vs (prompt, zero camera), by hand;
- HiFA's image-space VSD loss (`use_img_loss` -> loss_vsd_img): zero when the LoRA predicts what the
  pretrained model predicts; with a LoRA that predicts the sampled (true) noise its gradient is
  w(t) (decode(z) - decode(x0_pre)) alpha_t / sigma_t, by hand;
- HiFA's sqrt anneal reads a scheduled max_step_percent by its start value and replaces VSD's
  anneal_start_step switch; the patch renderer's base-renderer keys; single-image2-datamodule's
  second camera stream.
"""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from lift3d.errors import ConfigError
from lift3d.registry import find
from lift3d.models.noise_schedule import predict_x0

from tests.test_vsd import FixedPromptUtils, camera_batch, make_guidance, randomize_lora

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

B = 2


def make_unified(sd, **cfg):
    return find("stable-diffusion-unified-guidance")({
        "guidance_type": "vsd", "pretrained_model_name_or_path": str(sd), "vsd_phi_model_name_or_path": str(sd),
        "guidance_scale": 7.5, **cfg})


def latent_grad(guidance, latents, loss_name, t, noise, prompt, batch, seed=5):
    z = latents.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the LoRA loss draws its timesteps and noise
    out = guidance(z.permute(0, 2, 3, 1), batch, prompt, rgb_as_latents=True, t=t, noise=noise)
    (grad,) = torch.autograd.grad(out[loss_name], z)
    return grad * B, out


# ------------------------------------------------------------------ unified guidance, VSD mode
def test_unified_vsd_mode_equals_the_vsd_guidance_with_unit_phi_scale(tiny_sd_path):
    vsd = make_guidance(tiny_sd_path, guidance_scale=7.5, guidance_scale_lora=1.0, lora_cfg_training=False)
    unified = make_unified(tiny_sd_path)
    assert type(unified).__name__ == "UnifiedVSDMode" and unified.trainable_modules() is not None
    randomize_lora(vsd)
    unified.trainable_modules().load_state_dict(vsd.trainable_modules().state_dict())
    prompt, batch = FixedPromptUtils(), camera_batch()
    latents, noise, t = torch.randn(B, 4, 8, 8), torch.randn(B, 4, 8, 8), torch.tensor([420, 420])
    g_vsd, out_vsd = latent_grad(vsd, latents, "loss_vsd", t, noise, prompt, batch)
    g_uni, out_uni = latent_grad(unified, latents, "loss_sd", t, noise, prompt, batch)
    assert {"loss_sd", "loss_train_phi"} <= set(out_uni) and "loss_vsd" not in out_uni
    assert float(g_vsd.abs().max()) > 1e-3
    assert torch.allclose(g_uni, g_vsd, atol=1e-6)
    assert torch.allclose(out_uni["loss_train_phi"], out_vsd["loss_lora"], atol=1e-7)


def test_unified_vsd_phi_guidance_and_weighting_by_hand(tiny_sd_path):
    s_phi = 2.0
    g = make_unified(tiny_sd_path, vsd_guidance_scale_phi=s_phi, weighting_strategy="uniform")
    randomize_lora(g)
    prompt, batch = FixedPromptUtils(), camera_batch()
    latents, noise, t = torch.randn(B, 4, 8, 8), torch.randn(B, 4, 8, 8), torch.tensor([650, 650])
    grad, _ = latent_grad(g, latents, "loss_sd", t, noise, prompt, batch)
    with torch.no_grad():
        a = g.alphas_cumprod[t].reshape(B, 1, 1, 1)
        z_t = a.sqrt() * latents + (1 - a).sqrt() * noise
        eps_pre = g.guided_noise(z_t, t, prompt.get_text_embeddings(batch["elevation"], batch["azimuth"]))
        cond = prompt.get_text_embeddings(batch["elevation"], batch["azimuth"], None, False).chunk(2)[0]
        camera = batch["c2w"].reshape(B, 16)
        eps_cam = g.lora_model.predict_eps(z_t, t, cond, camera)
        eps_zero = g.lora_model.predict_eps(z_t, t, cond, torch.zeros_like(camera))
        expected = eps_pre - (eps_zero + s_phi * (eps_cam - eps_zero))  # uniform weighting: w = 1
    assert float(expected.abs().max()) > 1e-3
    assert torch.allclose(grad, expected, atol=1e-5)


def test_unified_vsd_keys_without_a_lift3d_counterpart_stop_before_work(tiny_sd_path):
    cls = find("stable-diffusion-unified-guidance")
    base = {"guidance_type": "vsd", "pretrained_model_name_or_path": str(tiny_sd_path)}
    for extra, match in (({"vsd_use_lora": False}, "vsd_use_lora=false"),
                         ({"vsd_camera_condition_type": "spherical"}, "spherical")):
        with pytest.raises(ConfigError, match=match):
            cls.validate_config(OmegaConf.structured(cls.Config(**{**base, **extra})), "system.guidance")
    with pytest.raises(ConfigError, match="guidance_type = 'vsd'"):
        find("zero123-unified-guidance").validate_config(
            OmegaConf.structured(find("zero123-unified-guidance").Config(guidance_type="vsd")), "system.guidance")


# ------------------------------------------------------------------ HiFA's image-space VSD loss
def image_grad(guidance, image, t, noise, prompt, batch):
    x = image.clone().requires_grad_(True)  # [B,64,64,3]: the tiny model's native size (no resize)
    out = guidance(x, batch, prompt, t=t, noise=noise)
    (grad,) = torch.autograd.grad(out["loss_vsd_img"], x)
    return grad * B, out


def test_vsd_image_loss_is_zero_when_the_lora_predicts_the_pretrained_noise(tiny_sd_path):
    g = make_guidance(tiny_sd_path, guidance_scale=7.5, guidance_scale_lora=7.5, view_dependent_prompting=False,
                      use_img_loss=True)
    with torch.no_grad():  # adapters at init (B = 0) and a camera embedding that outputs 0: eps_lora == eps_pre
        g.trainable_modules().camera_embedding.linear_2.weight.zero_()
        g.trainable_modules().camera_embedding.linear_2.bias.zero_()
    prompt = FixedPromptUtils()
    prompt.vi = prompt.vd
    image = torch.rand(B, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    grad, out = image_grad(g, image, torch.tensor([300, 700]), torch.randn(B, 4, 8, 8), prompt, camera_batch())
    assert float(out["loss_vsd_img"].detach()) == 0.0 and float(grad.abs().max()) == 0.0


def test_vsd_image_loss_with_a_lora_that_predicts_the_true_noise(tiny_sd_path, monkeypatch):
    g = make_guidance(tiny_sd_path, guidance_scale=7.5, use_img_loss=True)
    noise, t = torch.randn(B, 4, 8, 8), torch.tensor([250, 600])
    seen = {}

    def true_noise(z_t, tt, text, camera):  # the LoRA "knows" the sampled noise
        seen["z_t"] = z_t
        return noise

    monkeypatch.setattr(g, "lora_noise", true_noise)
    prompt, batch = FixedPromptUtils(), camera_batch()
    image = torch.rand(B, 64, 64, 3, generator=torch.Generator().manual_seed(4))
    grad, out = image_grad(g, image, t, noise, prompt, batch)
    with torch.no_grad():
        z_t = seen["z_t"]
        a = g.alphas_cumprod[t].reshape(B, 1, 1, 1)
        z = (z_t - (1 - a).sqrt() * noise) / a.sqrt()  # x0 of the true noise: the render's own latents
        eps_pre = g.guided_noise(z_t, t, prompt.get_text_embeddings(batch["elevation"], batch["azimuth"]))
        x_hat_lora = g.model.decode_latents(z)  # [B,64,64,3]
        x_hat_pre = g.model.decode_latents(predict_x0(z_t, eps_pre, t, g.alphas_cumprod))
        expected = (1 - a) * (x_hat_lora - x_hat_pre) * a.sqrt() / (1 - a).sqrt()  # w = 1 - alphabar (sds)
    assert float(expected.abs().max()) > 1e-3
    assert torch.allclose(grad, expected, atol=1e-5)


# ------------------------------------------------------------------ HiFA's anneal with VSD's keys
def test_sqrt_anneal_reads_a_scheduled_max_percent_by_its_start_and_replaces_the_vsd_switch(tiny_sd_path):
    g = make_guidance(tiny_sd_path, sqrt_anneal=True, trainer_max_steps=25000, min_step_percent=0.3,
                      max_step_percent=[5000, 0.98, 0.5, 5001])
    g.update_step(0, 6000)  # after both max_step_percent's switch (5000) and anneal_start_step (5000)
    percent = (0.98 - 0.3) * (1 - math.sqrt(6000 / 25000)) + 0.3
    assert g.min_step == g.max_step == int(1000 * percent)


# ------------------------------------------------------------------ patch renderer: base keys beside the patch keys
def test_patch_renderer_hands_its_base_keys_to_the_base_renderer():
    from lift3d.renderers.patch_renderer import base_renderer_section

    cls = find("patch-renderer")
    cfg = OmegaConf.structured(cls.Config(base_renderer_type="nerf-volume-renderer", radius=2.0, num_samples_per_ray=7,
                                          patch_size=16))
    assert base_renderer_section(cfg) == {"radius": 2.0, "num_samples_per_ray": 7}
    cls.validate_config(cfg, "system.renderer")
    cfg.base_renderer = {"num_samples_per_ray": 9}
    with pytest.raises(ConfigError, match="num_samples_per_ray = 7 and system.renderer.base_renderer"):
        cls.validate_config(cfg, "system.renderer")


# ------------------------------------------------------------------ single-image2-datamodule
def test_single_image2_datamodule_draws_a_second_camera_stream():
    common = {"image_path": "load/images/blocks_rgba.png", "height": 16, "width": 16, "seed": 0}
    cam = {"height": 8, "width": 8, "batch_size": 1}
    dm = find("single-image2-datamodule")({**common, "random_camera": cam,
                                           "random_camera2": {**cam, "height": 12, "width": 12, "batch_size": 2}})
    batch = dm.train_dataset.sample()
    assert batch["random_camera"]["rays_o"].shape == (1, 8, 8, 3)
    assert batch["random_camera2"]["rays_o"].shape == (2, 12, 12, 3)
    # an empty random_camera2 is a copy of random_camera (its own stream); the rest is single-image-datamodule's
    dm = find("single-image2-datamodule")({**common, "random_camera": cam})
    one = find("single-image-datamodule")({**common, "random_camera": cam}).train_dataset.sample()
    batch = dm.train_dataset.sample()
    assert batch["random_camera2"]["rays_o"].shape == batch["random_camera"]["rays_o"].shape
    assert not torch.equal(batch["random_camera2"]["c2w"], batch["random_camera"]["c2w"])
    assert torch.equal(batch["random_camera"]["c2w"], one["random_camera"]["c2w"]) and torch.equal(batch["rgb"], one["rgb"])
