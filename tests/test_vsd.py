"""Variational score distillation (stable-diffusion-vsd-guidance, prolificdreamer-system;
docs/methods/prolificdreamer.md) on the tiny Stable Diffusion:

- the VSD gradient: zero when the LoRA branch predicts exactly the pretrained model's guided noise, and
  in general w(t) (eps_cfg - eps_lora) computed by hand from the raw diffusers UNets (eps and v LoRA models);
- the LoRA loss by hand; the LoRA gets gradients from its own loss only, never from the VSD term, and is
  the system's optimizer group `guidance_params`;
- checkpoints round-trip the LoRA (adapters + camera embedding);
- the three configs chained through launch.py (NeRF patch -> DMTet geometry -> VSD texture -> export).
"""
from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from lift3d.config import load_config, validate_experiment
from lift3d.errors import ConfigError
from lift3d.registry import find

from tests.helpers import REPO, only_trial, run_launch

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

B = 2


class FixedPromptUtils:
    """Text embeddings [2B,77,32] (cond, then uncond) that differ between view-dependent and not."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.vd = torch.randn(2, 77, 32, generator=g)  # one row per cond/uncond, repeated over the batch
        self.vi = torch.randn(2, 77, 32, generator=g)

    def get_text_embeddings(self, elevation, azimuth, camera_distances=None, view_dependent_prompting=True):
        n = torch.as_tensor(elevation).reshape(-1).shape[0]
        e = self.vd if view_dependent_prompting else self.vi
        return torch.cat([e[:1].expand(n, -1, -1), e[1:].expand(n, -1, -1)])


def make_guidance(sd, lora=None, **cfg):
    return find("stable-diffusion-vsd-guidance")({
        "pretrained_model_name_or_path": str(sd), "pretrained_model_name_or_path_lora": str(lora or sd), **cfg})


def camera_batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"elevation": torch.tensor([10.0, 30.0]), "azimuth": torch.tensor([0.0, 90.0]),
            "camera_distances": torch.tensor([1.2, 1.4]), "c2w": torch.randn(B, 4, 4, generator=g),
            "mvp_mtx": torch.randn(B, 4, 4, generator=g)}


def randomize_lora(guidance, seed: int = 3, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in guidance.trainable_modules().parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def vsd_grad(guidance, latents, batch, prompt_utils, t, noise):
    """d loss_vsd / d latents * B (the per-sample VSD gradient) and the guidance's outputs."""
    z = latents.clone().requires_grad_(True)  # [B,4,8,8], handed over as 'rgb_as_latents' [B,8,8,4]
    out = guidance(z.permute(0, 2, 3, 1), batch, prompt_utils, rgb_as_latents=True, t=t, noise=noise)
    (grad,) = torch.autograd.grad(out["loss_vsd"], z)
    return grad * B, out


@pytest.fixture(scope="module")
def tiny_sd_v(tiny_sd_path, tmp_path_factory):
    """The tiny SD folder with a v-prediction scheduler (SD 2.1's kind): a LoRA model to convert."""
    folder = tmp_path_factory.mktemp("tiny-models") / "tiny-sd-v"
    shutil.copytree(tiny_sd_path, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    return folder


# ------------------------------------------------------------------ (a) the VSD gradient
def test_vsd_gradient_is_zero_when_the_lora_predicts_the_pretrained_guided_noise(tiny_sd_path):
    # the same model for both; adapters at their init (B = 0), a camera embedding that outputs 0, the LoRA's
    # text = the pretrained's (no view-dependent prompts) and the same CFG scale: eps_lora == eps_cfg exactly
    g = make_guidance(tiny_sd_path, guidance_scale=7.5, guidance_scale_lora=7.5, view_dependent_prompting=False)
    with torch.no_grad():
        g.trainable_modules().camera_embedding.linear_2.weight.zero_()
        g.trainable_modules().camera_embedding.linear_2.bias.zero_()
    prompt = FixedPromptUtils()
    prompt.vi = prompt.vd
    latents, noise = torch.randn(B, 4, 8, 8), torch.randn(B, 4, 8, 8)
    grad, out = vsd_grad(g, latents, camera_batch(), prompt, torch.tensor([300, 700]), noise)
    assert float(grad.abs().max()) == 0.0 and float(out["loss_vsd"].detach()) == 0.0
    # ... while SDS of the same step (the sampled noise as the baseline) is not zero
    sds = find("stable-diffusion-guidance")({"pretrained_model_name_or_path": str(tiny_sd_path), "cfg_form": "standard",
                                             "guidance_scale": 7.5, "view_dependent_prompting": False})
    sds_out = sds(latents.permute(0, 2, 3, 1), camera_batch(), prompt, rgb_as_latents=True,
                  t=torch.tensor([300, 700]), noise=noise)
    assert float(sds_out["grad_norm"]) > 1e-2


@pytest.mark.parametrize("lora_kind, camera_condition_type",
                         [("epsilon", "extrinsics"), ("epsilon", "mvp"), ("v_prediction", "extrinsics")])
def test_vsd_gradient_equals_the_formula_from_the_raw_unets(tiny_sd_path, tiny_sd_v, lora_kind, camera_condition_type):
    lora_path = tiny_sd_path if lora_kind == "epsilon" else tiny_sd_v
    s, s_l = 7.5, 2.0
    g = make_guidance(tiny_sd_path, lora_path, guidance_scale=s, guidance_scale_lora=s_l,
                      camera_condition_type=camera_condition_type)
    assert g.lora_model.prediction_type == lora_kind
    randomize_lora(g)
    prompt, batch = FixedPromptUtils(), camera_batch()
    latents, noise, t = torch.randn(B, 4, 8, 8), torch.randn(B, 4, 8, 8), torch.tensor([150, 820])
    grad, out = vsd_grad(g, latents, batch, prompt, t, noise)

    # by hand, from the diffusers UNets
    a = g.alphas_cumprod[t].reshape(B, 1, 1, 1)
    z_t = a.sqrt() * latents + (1 - a).sqrt() * noise
    t2, z2 = torch.cat([t, t]), torch.cat([z_t, z_t])
    with torch.no_grad():
        e = g.model.unet(z2, t2, encoder_hidden_states=prompt.get_text_embeddings(batch["elevation"], None)).sample
        eps_cfg = e[B:] + s * (e[:B] - e[B:])
        cam = batch["c2w" if camera_condition_type == "extrinsics" else "mvp_mtx"].reshape(B, 16)
        o = g.lora_model.unet(z2, t2, encoder_hidden_states=prompt.get_text_embeddings(batch["elevation"], None, None, False),
                              class_labels=torch.cat([cam, torch.zeros_like(cam)])).sample
        if lora_kind == "v_prediction":  # eps = sqrt(a) v + sqrt(1 - a) z_t
            a2 = torch.cat([a, a])
            o = a2.sqrt() * o + (1 - a2).sqrt() * z2
        eps_lora = o[B:] + s_l * (o[:B] - o[B:])
    expected = (1 - a) * (eps_cfg - eps_lora)
    assert float(expected.abs().max()) > 1e-3  # a real difference to compare
    torch.testing.assert_close(grad, expected, atol=2e-5, rtol=1e-4)
    assert float(out["grad_norm"]) == pytest.approx(float(expected.norm()), rel=1e-4)
    # the camera matters: another camera gives another gradient
    other = dict(batch, c2w=batch["c2w"].flip(0), mvp_mtx=batch["mvp_mtx"].flip(0))
    grad_other, _ = vsd_grad(g, latents, other, prompt, t, noise)
    assert not torch.allclose(grad_other, grad, atol=1e-5)


def test_anneal_and_config_errors(tiny_sd_path, tiny_sd_v):
    g = make_guidance(tiny_sd_path, max_step_percent=0.98, max_step_percent_annealed=0.5, anneal_start_step=10)
    g.update_step(0, 10)
    assert (g.min_step, g.max_step) == (20, 980)
    g.update_step(0, 11)
    assert (g.min_step, g.max_step) == (20, 500)
    from lift3d.config import parse_structured

    cls = find("stable-diffusion-vsd-guidance")

    def cfg(**kw):
        return parse_structured(cls.Config, {"pretrained_model_name_or_path": str(tiny_sd_path),
                                             "pretrained_model_name_or_path_lora": str(tiny_sd_path), **kw})

    with pytest.raises(ConfigError, match="camera_condition_type 'intrinsics'"):
        cls.validate_config(cfg(camera_condition_type="intrinsics"))
    with pytest.raises(ConfigError, match="v-prediction model"):
        cls.validate_config(cfg(pretrained_model_name_or_path=str(tiny_sd_v)))
    with pytest.raises(ConfigError, match="pretrained_model_name_or_path_lora"):
        cls.validate_config(cfg(pretrained_model_name_or_path_lora="/nonexistent/sd"))


# ------------------------------------------------------------------ (b) the LoRA's loss and gradients
def test_lora_loss_by_hand_and_the_lora_learns_from_its_own_loss_only(tiny_sd_path):
    g = make_guidance(tiny_sd_path, lora_n_timestamp_samples=2, guidance_eval_interval=1)
    randomize_lora(g)
    prompt, batch = FixedPromptUtils(), camera_batch()
    text = prompt.get_text_embeddings(batch["elevation"], None, None, False)[:B]  # [B,77,32] cond rows
    latents, cam = torch.randn(B, 4, 8, 8), batch["c2w"].reshape(B, 16)
    t, noise = torch.tensor([5, 400, 999, 63]), torch.randn(2 * B, 4, 8, 8)
    loss = g.lora_loss(latents, text, cam, t=t, noise=noise, drop_camera=False)
    z = latents.repeat(2, 1, 1, 1)
    a = g.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    pred = g.lora_model.unet(a.sqrt() * z + (1 - a).sqrt() * noise, t, encoder_hidden_states=text.repeat(2, 1, 1),
                             class_labels=cam.repeat(2, 1)).sample
    assert float(loss.detach()) == pytest.approx(float(((pred - noise) ** 2).mean().detach()), rel=1e-5)
    dropped = g.lora_loss(latents, text, cam, t=t, noise=noise, drop_camera=True)
    assert float(dropped.detach()) != pytest.approx(float(loss.detach()), rel=1e-6)  # the zero camera is another input

    lora = list(g.trainable_modules().parameters())
    z = torch.randn(B, 4, 8, 8, requires_grad=True)
    out = g(z.permute(0, 2, 3, 1), batch, prompt, rgb_as_latents=True)
    assert set(g.produces) == {"loss_vsd", "loss_lora", "loss_vsd_img"}  # loss_vsd_img with use_img_loss (HiFA)
    assert {"loss_vsd", "loss_lora"} <= set(out) and "loss_vsd_img" not in out
    assert out["guidance_eval"].shape == (B * 64, 3 * 64, 3)  # noisy | x0 | denoised of the pretrained model
    vsd_grads = torch.autograd.grad(out["loss_vsd"], [z, *lora], allow_unused=True, retain_graph=True)
    assert float(vsd_grads[0].abs().sum()) > 0  # VSD reaches the 3D model's render ...
    assert all(gr is None for gr in vsd_grads[1:])  # ... never the LoRA
    lora_grads = torch.autograd.grad(out["loss_lora"], [z, *lora], allow_unused=True)
    assert lora_grads[0] is None  # the LoRA loss sees detached latents
    assert all(gr is not None and float(gr.abs().sum()) > 0 for gr in lora_grads[1:])


def vsd_system(sd, cache_dir, lora_group="guidance_params"):
    cfg = OmegaConf.create({
        "geometry": {"radius": 1.0, "pos_encoding_config": {"otype": "HashGrid", "n_levels": 2, "log2_hashmap_size": 10}},
        "renderer": {"num_samples_per_ray": 8},
        "prompt_processor": {"prompt": "a red car", "pretrained_model_name_or_path": str(sd), "cache_dir": str(cache_dir)},
        "guidance": {"pretrained_model_name_or_path": str(sd), "pretrained_model_name_or_path_lora": str(sd)},
        "loss": {"lambda_vsd": 1.0, "lambda_lora": 1.0},
        "optimizer": {"name": "AdamW", "args": {"lr": 1e-3},
                      "params": {"geometry": {"lr": 1e-2}, lora_group: {"lr": 1e-4}}},
    })
    return find("prolificdreamer-system")(cfg)


def test_system_optimizer_group_and_checkpoint_round_trip(tiny_sd_path, tmp_path):
    from lift3d.systems.optim import make_optimizer

    system = vsd_system(tiny_sd_path, tmp_path / "cache")
    assert system.cfg.guidance_input == "comp_rgb"  # stage coarse
    system.setup("fit")  # what Lightning calls before restoring a checkpoint and building the optimizer
    assert system.guidance_params is system.guidance.trainable_modules()
    optimizer = make_optimizer(system, system.cfg.optimizer)
    groups = {gr["name"]: gr for gr in optimizer.param_groups}
    lora_ids = {id(p) for p in system.guidance_params.parameters()}
    assert groups["guidance_params"]["lr"] == 1e-4 and {id(p) for p in groups["guidance_params"]["params"]} == lora_ids
    assert not lora_ids & {id(p) for p in groups["geometry"]["params"]}

    randomize_lora(system.guidance, seed=11)
    state = system.state_dict()
    keys = [k for k in state if k.startswith("guidance_params.")]
    assert any(".camera_embedding." in k for k in keys) and any(k.endswith(".B.weight") for k in keys)
    assert not any(w in k for k in state for w in ("unet", "vae", "text_encoder", "base_layer"))

    def lora_prediction(s):
        torch.manual_seed(0)
        z, cam = torch.randn(1, 4, 8, 8), torch.randn(1, 16)
        return s.guidance.lora_model.predict_eps(z, torch.tensor([500]), torch.randn(1, 77, 32), cam)

    restored = vsd_system(tiny_sd_path, tmp_path / "cache", lora_group="guidance")  # threestudio's group name
    restored.setup("fit")
    restored_groups = {gr["name"]: gr for gr in make_optimizer(restored, restored.cfg.optimizer).param_groups}
    assert {id(p) for p in restored_groups["guidance_params"]["params"]} == {id(p) for p in restored.guidance_params.parameters()}
    fresh = lora_prediction(restored)
    restored.load_state_dict(state)  # strict: every LoRA key has its place
    assert torch.equal(lora_prediction(restored), lora_prediction(system))
    assert not torch.allclose(fresh, lora_prediction(system))
    # a run without a guidance (--test / --export) drops the LoRA of the checkpoint it loads
    evaluation = vsd_system(tiny_sd_path, tmp_path / "cache")
    checkpoint = {"state_dict": dict(state), "global_step": 3}
    evaluation.on_load_checkpoint(checkpoint)
    evaluation.load_state_dict(checkpoint["state_dict"])


def test_stage_picks_what_the_guidance_sees():
    base = {"geometry_type": "tetrahedra-sdf-grid", "geometry": {"isosurface_resolution": 8, "geometry_only": True},
            "renderer_type": "mesh-rasterizer", "background_type": "solid-color-background"}
    system = find("prolificdreamer-system")
    assert system(OmegaConf.create({**base, "stage": "geometry"})).cfg.guidance_input == "comp_normal"
    assert system(OmegaConf.create({**base, "stage": "texture"})).cfg.guidance_input == "comp_rgb"
    assert system(OmegaConf.create({**base, "stage": "geometry", "guidance_input": "comp_rgb"})).cfg.guidance_input == "comp_rgb"


# ------------------------------------------------------------------ configs
CONFIGS = ["prolificdreamer", "prolificdreamer-geometry", "prolificdreamer-texture"]


def test_configs_hold_threestudios_values_and_validate():
    patch, geo, tex = (OmegaConf.load(REPO / f"configs/{n}.yaml") for n in CONFIGS)
    assert [c.system.stage for c in (patch, geo, tex)] == ["coarse", "geometry", "texture"]
    assert {patch.system_type, geo.system_type, tex.system_type} == {"prolificdreamer-system"}
    assert (patch.data.width, patch.system.renderer_type, patch.system.renderer.patch_size) == (512, "patch-renderer", 128)
    for c in (patch, tex):
        gd = c.system.guidance
        assert (c.system.guidance_type, gd.guidance_scale, gd.pretrained_model_name_or_path_lora) == (
            "stable-diffusion-vsd-guidance", 7.5, "stabilityai/stable-diffusion-2-1")
        assert (c.system.loss.lambda_vsd, c.system.loss.lambda_lora) == (1.0, 1.0)
        assert c.system.optimizer.params.guidance_params.lr == 1e-4
    assert (patch.system.guidance.max_step_percent_annealed, patch.system.guidance.anneal_start_step) == (0.5, 5000)
    assert list(patch.system.loss.lambda_opaque) == [10000, 0.0, 1000.0, 10001] and patch.system.loss.lambda_sparsity == 10
    assert (geo.system.guidance_type, geo.system.guidance.guidance_scale, geo.system.geometry_type) == (
        "stable-diffusion-guidance", 100.0, "tetrahedra-sdf-grid")
    assert geo.system.loss.lambda_normal_consistency == geo.system.loss.lambda_laplacian_smoothness == 1e4
    assert tex.system.geometry.fix_geometry and list(tex.system.guidance.max_step_percent) == [5000, 0.98, 0.5, 5001]
    assert (patch.trainer.max_steps, geo.trainer.max_steps, tex.trainer.max_steps) == (25000, 15000, 30000)
    for name in CONFIGS:
        overrides = ["system.prompt_processor.prompt=a cat"]
        if name != "prolificdreamer":
            overrides.append("system.geometry_convert_from=null")
        validate_experiment(load_config(str(REPO / f"configs/{name}.yaml"), cli_args=overrides), fitting=False)
    with pytest.raises(ConfigError, match="system.stage 'refine'"):
        validate_experiment(load_config(str(REPO / "configs/prolificdreamer.yaml"),
                                        cli_args=["system.prompt_processor.prompt=a cat", "system.stage=refine"]), fitting=False)


def rows(trial):
    with open(trial / "csv_logs/metrics.csv") as fp:
        return [r for r in csv.DictReader(fp) if r.get("train/loss")]


def lora_state(ckpt):
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("guidance_params.")}, state


@pytest.mark.slow
def test_three_stages_chained_end_to_end(tmp_path, tiny_sd_path):
    root = tmp_path / "out"
    sd = str(tiny_sd_path)
    common = [
        f"exp_root_dir={root}", "trainer.max_steps=3", "checkpoint.every_n_train_steps=3", "trainer.val_check_interval=3",
        "trainer.enable_progress_bar=false", "data.width=32", "data.height=32", "data.eval_width=32",
        "data.eval_height=32", "data.n_val_views=1", "data.n_test_views=2", "system.prompt_processor.prompt=a cat",
        f"system.prompt_processor.pretrained_model_name_or_path={sd}", f"system.prompt_processor.cache_dir={tmp_path / 'cache'}",
        f"system.guidance.pretrained_model_name_or_path={sd}",
    ]
    small_grid = ["system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=12"]
    # 1: NeRF, VSD, patch renderer
    run_launch(["--config", "configs/prolificdreamer.yaml", "--train", *common, *small_grid,
                f"system.guidance.pretrained_model_name_or_path_lora={sd}", "system.renderer.base_renderer.num_samples_per_ray=24",
                "system.renderer.patch_size=16", "system.renderer.global_downsample=2"])
    nerf = only_trial(root, "prolificdreamer")
    logged = rows(nerf)
    assert [int(r["step"]) for r in logged] == [0, 1, 2]
    assert all(float(r["train/loss_vsd"]) > 0 and float(r["train/loss_lora"]) > 0 for r in logged)
    lora, _ = lora_state(nerf / "ckpts/last.ckpt")
    assert lora and max(float(v.abs().max()) for k, v in lora.items() if k.endswith(".B.weight")) > 0  # B left 0
    # 2: DMTet geometry, SDS on normals (the 3-step NeRF's blob peaks near density 10: convert at 5)
    run_launch(["--config", "configs/prolificdreamer-geometry.yaml", "--train", *common,
                f"system.geometry_convert_from={nerf}", "system.geometry.isosurface_resolution=16",
                "system.geometry.convert_threshold=5.0"])
    geo = only_trial(root, "prolificdreamer-geometry")
    assert all(float(r["train/loss_sds"]) > 0 and float(r["train/loss_normal_consistency"]) > 0 for r in rows(geo))
    _, geo_state = lora_state(geo / "ckpts/last.ckpt")
    # 3: the fixed surface, a fresh texture field, VSD with a fresh LoRA; then --export
    run_launch(["--config", "configs/prolificdreamer-texture.yaml", "--train", *common, *small_grid,
                f"system.guidance.pretrained_model_name_or_path_lora={sd}", f"system.geometry_convert_from={geo}",
                "system.geometry.isosurface_resolution=16", "system.exporter.texture_size=64"])
    tex = only_trial(root, "prolificdreamer-texture")
    assert all(float(r["train/loss_vsd"]) > 0 and float(r["train/loss_lora"]) > 0 for r in rows(tex))
    tex_lora, tex_state = lora_state(tex / "ckpts/last.ckpt")
    assert sorted(tex_lora) == sorted(lora)
    assert torch.equal(tex_state["geometry.sdf"], geo_state["geometry.sdf"])  # the stage-2 surface, unchanged
    assert (tex / "save/it3-test.mp4").is_file()
    run_launch(["--config", str(tex / "configs/parsed.yaml"), "--export", f"resume={tex / 'ckpts/last.ckpt'}"])
    obj = (tex / "save/it3-export/model.obj").read_text()
    assert obj.count("\nf ") > 10 and "mtllib" in obj and (tex / "save/it3-export/texture_kd.png").is_file()
