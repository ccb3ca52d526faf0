"""USD and X-Dreamer on a VSD base (docs/methods/prolificdreamer.md §5) with the tiny Stable Diffusion:

- USD text-to-3D, `usd-text-guidance` with `baseline: vsd_lora` (custom/usd/vsd_baseline.py):
  at usd_lambda = 0 it is plain USD bit for bit (whatever the LoRA); with a LoRA that predicts exactly
  SD's unconditional noise the baseline term vanishes and the gradient is plain USD's at lambda = 0 for
  any lambda; in general it is w(t) [w_cfg (eps_c - eps_u) + lambda (eps_u - eps_phi)] by hand;
  config errors (unknown baseline, LoRA keys without the switch, a LoRA that would not train);
- X-Dreamer's appearance stage, `xdreamer-vsd-guidance` (custom/xdreamer/vsd_base.py): with CG-LoRA at its
  init its VSD gradient and LoRA loss equal stable-diffusion-vsd-guidance's for the same models and seed;
  the AMA loss equals xdreamer-guidance's for the same CG-LoRA weights;
- both configs end to end (train 2 steps, test, export) through launch.py: both adapters trained and saved.
"""
from __future__ import annotations

import csv

import pytest
import torch
from omegaconf import OmegaConf

from lift3d.config import load_config, validate_experiment
from lift3d.errors import ConfigError
from lift3d.plugins import load_plugins
from lift3d.registry import find

from tests.helpers import REPO, only_trial, run_launch

load_plugins()

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

B = 2
USD_VSD = REPO / "custom/usd/configs/usd-text-to-3D-patch-vsd.yaml"
XDREAMER_VSD = REPO / "custom/xdreamer/configs/xdreamer-texture-vsd.yaml"


class FixedPromptUtils:
    """Text embeddings [2B,77,32] (cond, then uncond); view-dependent and view-independent rows differ."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.vd = torch.randn(2, 77, 32, generator=g)
        self.vi = torch.randn(2, 77, 32, generator=g)

    def get_text_embeddings(self, elevation, azimuth, camera_distances=None, view_dependent_prompting=True):
        n = torch.as_tensor(elevation).reshape(-1).shape[0]
        e = self.vd if view_dependent_prompting else self.vi
        return torch.cat([e[:1].expand(n, -1, -1), e[1:].expand(n, -1, -1)])


def camera_batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"elevation": torch.tensor([10.0, 30.0]), "azimuth": torch.tensor([5.0, 170.0]),
            "camera_distances": torch.tensor([3.0, 3.0]), "c2w": torch.randn(B, 4, 4, generator=g),
            "camera_positions": torch.tensor([[2.9, 0.2, 0.5], [-2.5, 0.4, 1.5]]),
            "fovy": torch.deg2rad(torch.tensor([30.0, 40.0]))}


def randomize(module, seed: int = 3, scale: float = 0.05, only=None) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if only is None or name.endswith(only):
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def usd(sd, **cfg):
    return find("usd-text-guidance")({"pretrained_model_name_or_path": str(sd), **cfg})


def usd_vsd(sd, **cfg):
    return usd(sd, baseline="vsd_lora", pretrained_model_name_or_path_lora=str(sd), **cfg)


def grad_of(guidance, latents, batch, prompt_utils, t, noise, loss="loss_usd"):
    """d loss / d latents * B (the per-sample gradient) and the guidance's outputs."""
    z = latents.clone().requires_grad_(True)
    out = guidance(z.permute(0, 2, 3, 1), batch, prompt_utils, rgb_as_latents=True, t=t, noise=noise)
    (grad,) = torch.autograd.grad(out[loss], z)
    return grad * B, out


def step_inputs(seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 4, 8, 8, generator=g), torch.randn(B, 4, 8, 8, generator=g), torch.tensor([250, 800])


# ------------------------------------------------------------------ USD on a VSD base
def test_usd_vsd_base_at_lambda_zero_is_plain_usd_bit_for_bit(tiny_sd_path):
    plain, based = usd(tiny_sd_path), usd_vsd(tiny_sd_path)
    assert type(based).__name__ == "USDTextGuidanceVSDBase" and based.registered_name() == "usd-text-guidance"
    randomize(based.trainable_modules())  # whatever the LoRA predicts
    latents, noise, t = step_inputs()
    prompt, batch = FixedPromptUtils(), camera_batch()
    g_plain, out_plain = grad_of(plain, latents, batch, prompt, t, noise)
    g_based, out_based = grad_of(based, latents, batch, prompt, t, noise)
    assert torch.equal(g_based, g_plain) and torch.equal(out_based["loss_usd"], out_plain["loss_usd"])
    assert float(out_based["loss_lora"].detach()) > 0 and "loss_lora" not in out_plain  # the LoRA still trains


def test_usd_vsd_base_gradient_identities(tiny_sd_path):
    lam, s = 0.7, 7.5
    # a LoRA that predicts exactly SD's unconditional noise: adapters at init (B = 0), camera embedding
    # outputting 0, its CFG scale 0 (its negative-prompt branch only) and the same negative prompt rows
    based = usd_vsd(tiny_sd_path, usd_lambda=lam, guidance_scale_lora=0.0)
    with torch.no_grad():
        based.trainable_modules().camera_embedding.linear_2.weight.zero_()
        based.trainable_modules().camera_embedding.linear_2.bias.zero_()
    prompt, batch = FixedPromptUtils(), camera_batch()
    prompt.vi = prompt.vd
    latents, noise, t = step_inputs()
    g_based, _ = grad_of(based, latents, batch, prompt, t, noise)
    g_usd0, _ = grad_of(usd(tiny_sd_path), latents, batch, prompt, t, noise)  # plain USD, lambda 0
    g_usd_lam, _ = grad_of(usd(tiny_sd_path, usd_lambda=lam), latents, batch, prompt, t, noise)
    torch.testing.assert_close(g_based, g_usd0, atol=1e-5, rtol=1e-5)
    assert float((g_usd_lam - g_usd0).abs().max()) > 1e-2  # with the noise as baseline, lambda matters

    # in general (a trained-looking LoRA): w(t) [s (eps_c - eps_u) + lambda (eps_u - eps_phi)] by hand, with the
    # view-independent rows (the LoRA's) apart from the view-dependent ones again
    randomize(based.trainable_modules())
    prompt = FixedPromptUtils()
    g_based, out = grad_of(based, latents, batch, prompt, t, noise)
    a = based.alphas_cumprod[t].reshape(B, 1, 1, 1)
    z_t = a.sqrt() * latents + (1 - a).sqrt() * noise
    text = prompt.get_text_embeddings(batch["elevation"], None)
    with torch.no_grad():
        e = based.model.unet(torch.cat([z_t, z_t]), torch.cat([t, t]), encoder_hidden_states=text).sample
        eps_c, eps_u = e[:B], e[B:]
        eps_phi = based.lora_noise(z_t, t, prompt.get_text_embeddings(batch["elevation"], None, None, False),
                                   batch["c2w"].reshape(B, 16))
    expected = (1 - a) * (s * (eps_c - eps_u) + lam * (eps_u - eps_phi))
    assert float((expected - g_usd0).abs().max()) > 1e-3  # the LoRA's term is there
    torch.testing.assert_close(g_based, expected, atol=2e-5, rtol=1e-4)
    assert float(out["usd_lambda"]) == pytest.approx(lam)


def test_usd_vsd_base_config_errors(tiny_sd_path):
    from lift3d.config import parse_structured

    cls = find("usd-text-guidance")

    def check(**kw):
        cls.validate_config(parse_structured(cls.Config, {"pretrained_model_name_or_path": str(tiny_sd_path), **kw}))

    with pytest.raises(ConfigError, match="baseline 'lora' is unknown"):
        check(baseline="lora")
    with pytest.raises(ConfigError, match="pretrained_model_name_or_path_lora is set but .*baseline is noise"):
        check(pretrained_model_name_or_path_lora=str(tiny_sd_path))
    with pytest.raises(ConfigError, match="pretrained_model_name_or_path_lora"):  # the LoRA model is looked up
        check(baseline="vsd_lora", pretrained_model_name_or_path_lora="/nonexistent/sd")
    with pytest.raises(ConfigError, match="use_img_loss"):
        check(baseline="vsd_lora", pretrained_model_name_or_path_lora=str(tiny_sd_path), use_img_loss=True)
    check(baseline="vsd_lora", pretrained_model_name_or_path_lora=str(tiny_sd_path))

    # the shipped config validates; the system refuses a LoRA that would not train, or a lambda_lora without it
    base = ["system.prompt_processor.prompt=a cat"]
    validate_experiment(load_config(str(USD_VSD), cli_args=base), fitting=False)
    for override, message in [("system.loss.lambda_lora=0", "lambda_lora is not > 0"),
                              ("system.guidance.baseline=noise", "lambda_lora weighs no loss")]:
        with pytest.raises(ConfigError, match=message):
            validate_experiment(load_config(str(USD_VSD), cli_args=[*base, override]), fitting=False)
    cfg = load_config(str(USD_VSD), cli_args=base)
    del cfg.system.optimizer.params["guidance_params"]
    with pytest.raises(ConfigError, match="no group for the LoRA"):
        validate_experiment(cfg, fitting=False)


# ------------------------------------------------------------------ X-Dreamer on a VSD base
@pytest.fixture(scope="module")
def sd_prompt_utils(tiny_sd_path, tmp_path_factory):
    processor = find("stable-diffusion-prompt-processor")({
        "prompt": "a photo of a red car", "pretrained_model_name_or_path": str(tiny_sd_path),
        "cache_dir": str(tmp_path_factory.mktemp("cache")), "overhead_threshold": 90.0})
    return processor()


def render_out(size=32):
    mask = torch.zeros(B, size, size, 1)
    mask[:, size // 4: 3 * size // 4, size // 3: 2 * size // 3] = 1.0
    return {"opacity": mask}


def test_xdreamer_vsd_equals_lift3d_vsd_and_keeps_the_ama_loss(tiny_sd_path, sd_prompt_utils):
    sd = str(tiny_sd_path)
    common = {"pretrained_model_name_or_path": sd, "guidance_scale": 7.5}
    xvsd = find("xdreamer-vsd-guidance")({**common, "pretrained_model_name_or_path_lora": sd, "ama_start_step": 0})
    vsd = find("stable-diffusion-vsd-guidance")({**common, "pretrained_model_name_or_path_lora": sd})
    weights = xvsd.trainable_modules()
    assert set(dict(weights.named_children())) == {"cg_lora", "vsd_lora"} and weights.vsd_lora is xvsd.lora
    randomize(vsd.trainable_modules())
    xvsd.lora.load_state_dict(vsd.trainable_modules().state_dict())  # the same VSD LoRA in both
    latents, noise, t = step_inputs()
    batch = camera_batch()

    # CG-LoRA at its init (B = 0): X-Dreamer's pretrained prediction is SD's, so VSD's gradient and LoRA loss
    torch.manual_seed(7)
    g_x, out_x = grad_of(xvsd, latents, batch, sd_prompt_utils, t, noise, loss="loss_vsd")
    torch.manual_seed(7)
    g_v, out_v = grad_of(vsd, latents, batch, sd_prompt_utils, t, noise, loss="loss_vsd")
    assert float(g_v.abs().max()) > 1e-3
    torch.testing.assert_close(g_x, g_v, atol=1e-6, rtol=1e-5)
    assert float(out_x["loss_lora"].detach()) == pytest.approx(float(out_v["loss_lora"].detach()), rel=1e-6)
    assert {"loss_vsd", "loss_lora", "loss_ama"} <= set(out_x) and "loss_sds" not in out_x

    # the AMA loss is X-Dreamer's: the same CG-LoRA weights give the same maps and loss as xdreamer-guidance
    xd = find("xdreamer-guidance")({**common, "ama_start_step": 0, "weighting_strategy": "sds"})
    randomize(xvsd.cg_lora, seed=5, scale=0.2, only=".B")
    xd.cg_lora.load_state_dict(xvsd.cg_lora.state_dict())
    image = torch.rand(B, 32, 32, 3)
    torch.manual_seed(11)  # the VAE samples its posterior
    ama_x = xvsd(image, batch, sd_prompt_utils, render_out=render_out(), t=t, noise=noise)["loss_ama"]
    torch.manual_seed(11)
    ama_d = xd(image, batch, sd_prompt_utils, render_out=render_out(), t=t, noise=noise)["loss_ama"]
    assert float(ama_d.detach()) > 0 and torch.equal(ama_x, ama_d)
    # AMA trains CG-LoRA, VSD's term trains neither adapter (its score is detached in distill), and the LoRA's
    # prediction for the VSD score builds no graph (no_grad around lora_noise: no second UNet's activations held)
    plain_lora_noise, graphs = xvsd.lora_noise, []
    xvsd.lora_noise = lambda *a, **k: graphs.append(torch.is_grad_enabled()) or plain_lora_noise(*a, **k)
    out = xvsd(image.requires_grad_(True), batch, sd_prompt_utils, render_out=render_out(), t=t, noise=noise)
    del xvsd.lora_noise
    assert graphs and not any(graphs), graphs
    cg = [p for n, p in xvsd.cg_lora.named_parameters() if n.endswith(".B")]
    assert all(gr is None for gr in torch.autograd.grad(out["loss_vsd"], [*cg, *xvsd.lora.parameters()],
                                                          allow_unused=True, retain_graph=True))
    assert any(gr is not None and float(gr.abs().sum()) > 0
               for gr in torch.autograd.grad(out["loss_ama"], cg, allow_unused=True))


def test_xdreamer_vsd_config_errors(tiny_sd_path):
    from lift3d.config import parse_structured

    cls = find("xdreamer-vsd-guidance")
    section = parse_structured(cls.Config, {"pretrained_model_name_or_path": str(tiny_sd_path),
                                            "pretrained_model_name_or_path_lora": str(tiny_sd_path), "coarse_steps": 100})
    with pytest.raises(ConfigError, match="coarse_steps = 100: xdreamer-vsd-guidance is for the appearance stage"):
        cls.validate_config(section)
    validate_experiment(load_config(str(XDREAMER_VSD), cli_args=["system.prompt_processor.prompt=a cat",
                                                                  "system.geometry_convert_from=null"]), fitting=False)


# ------------------------------------------------------------------ both configs end to end
def rows(trial):
    with open(trial / "csv_logs/metrics.csv") as fp:
        return [r for r in csv.DictReader(fp) if r.get("train/loss")]


def lora_b(ckpt, prefix):
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    keys = [k for k in state if k.startswith(prefix) and (k.endswith(".B.weight") or k.endswith(".B"))]
    assert keys, prefix
    return max(float(state[k].abs().max()) for k in keys), state


def tiny_models(sd, tmp_path):
    return [f"exp_root_dir={tmp_path / 'out'}", "trainer.max_steps=2", "checkpoint.every_n_train_steps=2",
            "trainer.val_check_interval=100", "trainer.enable_progress_bar=false", "data.width=32", "data.height=32",
            "data.eval_width=32", "data.eval_height=32", "data.n_val_views=1", "data.n_test_views=1",
            "system.prompt_processor.prompt=a red car", f"system.prompt_processor.pretrained_model_name_or_path={sd}",
            f"system.prompt_processor.cache_dir={tmp_path / 'cache'}", f"system.guidance.pretrained_model_name_or_path={sd}",
            f"system.guidance.pretrained_model_name_or_path_lora={sd}",
            "system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=12"]


@pytest.mark.slow
def test_usd_vsd_config_end_to_end(tmp_path, tiny_sd_path):
    run_launch(["--config", str(USD_VSD), "--train", *tiny_models(tiny_sd_path, tmp_path),
                "system.renderer.base_renderer.num_samples_per_ray=24", "system.renderer.patch_size=16",
                "system.renderer.global_downsample=2", "system.geometry.isosurface_resolution=16",
                "system.geometry.isosurface_threshold=5.0"])
    trial = only_trial(tmp_path / "out", "usd-text-to-3D-patch-vsd")
    logged = rows(trial)
    assert [int(r["step"]) for r in logged] == [0, 1]
    assert all(float(r["train/loss_usd"]) > 0 and float(r["train/loss_lora"]) > 0
               and float(r["train/usd_lambda"]) == 0.5 for r in logged)
    moved, _ = lora_b(trial / "ckpts/last.ckpt", "guidance_params.")
    assert moved > 0  # the LoRA trained (its B starts at 0) and is in the checkpoint
    assert (trial / "save/it2-test.mp4").is_file()
    run_launch(["--config", str(trial / "configs/parsed.yaml"), "--export", f"resume={trial / 'ckpts/last.ckpt'}"])
    assert (trial / "save/it2-export/model.obj").read_text().count("\nf ") > 10


@pytest.mark.slow
def test_xdreamer_vsd_config_end_to_end(tmp_path, tiny_sd_path):
    run_launch(["--config", str(XDREAMER_VSD), "--train", *tiny_models(tiny_sd_path, tmp_path), "data.batch_size=1",
                "system.geometry_convert_from=null", "system.geometry.shape_init=sphere",
                "system.geometry.shape_init_params=0.5", "system.geometry.isosurface_resolution=16",
                "system.guidance.ama_start_step=0", "system.exporter.texture_size=64"])
    trial = only_trial(tmp_path / "out", "xdreamer-texture-vsd")
    logged = rows(trial)
    assert [int(r["step"]) for r in logged] == [0, 1]
    assert all(float(r["train/loss_vsd"]) > 0 and float(r["train/loss_lora"]) > 0 and float(r["train/loss_ama"]) > 0
               for r in logged)
    ckpt = trial / "ckpts/last.ckpt"
    cg_moved, state = lora_b(ckpt, "guidance_params.cg_lora.")
    vsd_moved, _ = lora_b(ckpt, "guidance_params.vsd_lora.")
    assert cg_moved > 0 and vsd_moved > 0  # both adapters trained (their own groups) and saved
    assert not any(w in k for k in state for w in ("unet", "vae", "text_encoder"))
    assert (trial / "save/it2-test.mp4").is_file()
    run_launch(["--config", str(trial / "configs/parsed.yaml"), "--export", f"resume={ckpt}"])
    for name in ("model.obj", "model.mtl", "texture_kd.png", "texture_ks.png", "texture_nrm.png"):
        assert (trial / "save/it2-export" / name).is_file(), name
