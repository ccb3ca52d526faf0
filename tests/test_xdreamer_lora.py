"""X-Dreamer's CG-LoRA (custom/xdreamer, docs/methods/xdreamer.md §1) on the tiny SD 2.1-base-shaped model.

- With B = 0 the adapted UNet's output equals the plain UNet's exactly (same processor maths).
- After an optimizer step on the AMA loss it differs, and gradients reach B, both generators
  (H_text, H_cam) and the camera encoder (the generators' gradient is B-weighted, so it appears
  from the second step on: at B = 0 it is exactly zero).
- Sizes derive from the model: 1,647,616 adapter parameters and 7 recorded blocks for the real
  SD 2.1-base UNet (built on the meta device), text width 32 for the tiny one.
- The system hook: the adapters are the system's `guidance_params` (in checkpoints, in optimizer
  groups), the frozen UNet is not; runs without a guidance drop those entries on load.
"""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from lift3d.errors import ConfigError
from lift3d.plugins import load_plugins
from lift3d.registry import find

load_plugins()

from custom.xdreamer.attention_capture import last_cross_attention_per_block  # noqa: E402
from custom.xdreamer.camera_encoder import camera_inputs  # noqa: E402
from custom.xdreamer.cg_lora import CGLoRA  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tiny models: one thread


@pytest.fixture(scope="module")
def prompt_utils(tiny_sd_path, tmp_path_factory):
    processor = find("stable-diffusion-prompt-processor")({
        "prompt": "a photo of a red car", "pretrained_model_name_or_path": str(tiny_sd_path),
        "cache_dir": str(tmp_path_factory.mktemp("cache")), "overhead_threshold": 90.0,
    })
    return processor()


@pytest.fixture(scope="module")
def plain_unet(tiny_sd_path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet").eval().requires_grad_(False)


def make_guidance(path, **cfg):
    return find("xdreamer-guidance")({"pretrained_model_name_or_path": str(path), "guidance_scale": 7.5, **cfg})


BATCH = {
    "elevation": torch.tensor([10.0, 30.0]), "azimuth": torch.tensor([5.0, 170.0]),
    "camera_distances": torch.tensor([3.0, 3.0]), "camera_positions": torch.tensor([[2.9, 0.2, 0.5], [-2.5, 0.4, 1.5]]),
    "fovy": torch.deg2rad(torch.tensor([30.0, 40.0])),
}


def unet_outputs(g, unet, prompt_utils, seed=0):
    """(adapted, plain) UNet predictions for the same noisy latents, timesteps and text."""
    gen = torch.Generator().manual_seed(seed)
    text = prompt_utils.get_text_embeddings(BATCH["elevation"], BATCH["azimuth"], BATCH["camera_distances"])
    z = torch.randn(4, 4, 8, 8, generator=gen)
    t = torch.tensor([120, 730, 120, 730])
    _, e, f = g.conditions(prompt_utils, BATCH, text)
    with torch.no_grad(), g.adapted(e, f):
        adapted = g.model.predict_noise(z, t, text)
    with torch.no_grad():
        plain = unet(z, t, encoder_hidden_states=text).sample
    return adapted, plain


def render_out(B=2, size=32):
    mask = torch.zeros(B, size, size, 1)
    mask[:, size // 4: 3 * size // 4, size // 3: 2 * size // 3] = 1.0
    return {"opacity": mask.requires_grad_(True), "comp_normal": torch.rand(B, size, size, 3)}


def test_zero_b_is_exactly_the_plain_unet_and_ama_training_changes_it(tiny_sd_path, prompt_utils, plain_unet):
    torch.manual_seed(0)
    g = make_guidance(tiny_sd_path, ama_start_step=0)
    lora = g.trainable_modules()
    assert all(float(p.detach().abs().max()) == 0.0 for n, p in lora.named_parameters() if n.endswith(".B"))
    adapted, plain = unet_outputs(g, plain_unet, prompt_utils)
    assert torch.equal(adapted, plain)  # bit-identical, not merely close

    optim = torch.optim.AdamW(lora.parameters(), lr=1e-2, weight_decay=0.0)
    image = torch.rand(2, 32, 32, 3)
    out = g(image, BATCH, prompt_utils=prompt_utils, render_out=render_out())
    assert out["loss_ama"].requires_grad and float(out["loss_ama"].detach()) > 0
    optim.zero_grad()
    out["loss_ama"].backward()
    grads = {n: (p.grad.abs().sum().item() if p.grad is not None else 0.0) for n, p in lora.named_parameters()}
    # at B = 0 only B receives gradient: dL/dA = x^T (dL/dy) B^T = 0
    assert all(v == 0.0 for n, v in grads.items() if ".h_text." in n or ".h_cam." in n or n.startswith("camera_encoder"))
    first = last_cross_attention_per_block(g.model.unet)[0].replace(".", "__")
    for proj in ("to_q", "to_k"):  # the first recorded map depends on these directly
        assert grads[f"adapters.{first}.{proj}.B"] > 0
    assert sum(v > 0 for n, v in grads.items() if n.endswith(".B")) >= 6
    optim.step()

    adapted, plain = unet_outputs(g, plain_unet, prompt_utils)
    assert not torch.allclose(adapted, plain, atol=1e-6)  # CG-LoRA now changes the prediction

    out = g(image, BATCH, prompt_utils=prompt_utils, render_out=render_out())
    optim.zero_grad()
    out["loss_ama"].backward()
    reached = {key: any(p.grad is not None and float(p.grad.abs().sum()) > 0
                        for n, p in lora.named_parameters() if key in n)
               for key in (".B", ".h_text.0.", ".h_text.1.", ".h_cam.0.", ".h_cam.1.", "camera_encoder.net.0.", "camera_encoder.net.2.")}
    assert all(reached.values()), reached


def test_adapters_run_in_fp32_even_on_a_half_precision_unet(tiny_sd_path, prompt_utils):
    g = make_guidance(tiny_sd_path, ama_start_step=None, half_precision_weights=True)
    assert next(g.model.unet.parameters()).dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in g.trainable_modules().parameters())


def test_sizes_derive_from_the_model(tiny_sd_path):
    from diffusers import UNet2DConditionModel

    from benchmarks.bench_guidance import SD21_BASE_UNET

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_BASE_UNET)
    lora = CGLoRA.for_unet(unet)
    # 16 attn2 × (4 × (H_text + H_cam) + B) with r = 4: the spec's "about 1.65 M"
    assert sum(p.numel() for p in lora.adapter_parameters()) == 1_647_616
    assert len(lora.adapters) == 16 and lora.text_dim == 1024 and lora.camera_dim == 1024
    names = last_cross_attention_per_block(unet)
    assert len(names) == 7 and names[3].startswith("mid_block")
    tiny = UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet")
    small = CGLoRA.for_unet(tiny, rank=2)
    assert small.text_dim == 32 == tiny.config.cross_attention_dim
    k = small.adapters[next(iter(small.adapters))]["to_k"]
    assert k.h_text[0].in_features == 32 and k.h_text[1].out_features == 32 * 2 // 2 and tuple(k.B.shape) == (2, k.d_out)
    assert len(last_cross_attention_per_block(tiny)) == 3


def test_camera_inputs_and_eos_conditions(tiny_sd_path, prompt_utils):
    x = camera_inputs(BATCH, (25.7, 45.0))
    assert x.shape == (2, 6)
    assert torch.allclose(x[:, :3], torch.sigmoid(BATCH["camera_positions"]))
    assert torch.allclose(x[:, 3], torch.tensor([80.0, 60.0]) / 180.0)
    assert torch.allclose(x[:, 4], torch.tensor([185.0, 350.0]) / 360.0)
    assert torch.allclose(x[:, 5], (torch.tensor([30.0, 40.0]) - 25.7) / 19.3, atol=1e-5)

    g = make_guidance(tiny_sd_path, ama_start_step=None)
    cond, uncond = g.prompts_of(prompt_utils, BATCH, 2)
    assert cond == ["a photo of a red car, front view", "a photo of a red car, back view"] and uncond == ["", ""]
    text = prompt_utils.get_text_embeddings(BATCH["elevation"], BATCH["azimuth"], BATCH["camera_distances"])
    eos, e, f = g.conditions(prompt_utils, BATCH, text)
    tok = g.tokenizer
    for i, p in enumerate(cond + uncond):
        ids = tok(p).input_ids
        assert eos[i] == ids.index(tok.eos_token_id) == len(ids) - 1
        assert torch.equal(e[i], text[i, eos[i]])
    assert f.shape == (4, 32) and torch.equal(f[:2], f[2:])
    assert not torch.allclose(f[0], f[1])  # the cameras differ


def xdreamer_system(tiny_sd_path, cache_dir):
    cfg = OmegaConf.create({
        "geometry_type": "tetrahedra-sdf-grid",
        "geometry": {"isosurface_resolution": 8, "geometry_only": True, "shape_init": "sphere"},
        "renderer_type": "mesh-rasterizer",
        "prompt_processor_type": "stable-diffusion-prompt-processor",
        "prompt_processor": {"prompt": "a red car", "pretrained_model_name_or_path": str(tiny_sd_path), "cache_dir": str(cache_dir)},
        "guidance_type": "xdreamer-guidance",
        "guidance": {"pretrained_model_name_or_path": str(tiny_sd_path)},
        "loss": {"lambda_sds": 1.0, "lambda_ama": 0.1},
        "optimizer": {"name": "AdamW", "args": {"lr": 1e-3}, "params": {"geometry": {"lr": 1e-3}, "guidance_params": {"lr": 1e-4}}},
    })
    return find("lift3d-system")(cfg)


def test_system_registers_the_adapters_as_trainable_checkpointed_state(tiny_sd_path, tmp_path):
    from lift3d.systems.optim import make_optimizer

    system = xdreamer_system(tiny_sd_path, tmp_path / "cache")
    assert "guidance_params" not in dict(system.named_children())
    system.setup("fit")  # what Lightning calls before restoring a checkpoint and building the optimizer
    assert system.guidance_params is system.guidance.trainable_modules()
    state = system.state_dict()
    lora_keys = [k for k in state if k.startswith("guidance_params.")]
    assert len(lora_keys) == 4 + 4 * 4 * 5  # camera encoder (2 × weight, bias) + 4 attn2 × 4 projections × 5
    assert not any(w in k for k in state for w in ("unet", "vae", "text_encoder"))
    optimizer = make_optimizer(system, system.cfg.optimizer)
    group = next(g for g in optimizer.param_groups if g["name"] == "guidance_params")
    assert group["lr"] == 1e-4 and len(group["params"]) == len(lora_keys)
    # a run without a guidance (--test / --export) drops the adapters of the checkpoint it loads
    evaluation = xdreamer_system(tiny_sd_path, tmp_path / "cache")
    checkpoint = {"state_dict": dict(state), "global_step": 7}
    evaluation.on_load_checkpoint(checkpoint)
    assert not any(k.startswith("guidance_params.") for k in checkpoint["state_dict"])
    evaluation.load_state_dict(checkpoint["state_dict"])  # strict: nothing missing or unexpected


def test_lora_from_errors(tiny_sd_path, tmp_path):
    cls = find("xdreamer-guidance")
    from lift3d.config import parse_structured

    def cfg(**kw):
        return parse_structured(cls.Config, {"pretrained_model_name_or_path": str(tiny_sd_path), **kw})

    with pytest.raises(ConfigError, match="lora_from: checkpoint .* does not exist"):
        cls.validate_config(cfg(lora_from=str(tmp_path / "nope.ckpt")))
    ckpt = tmp_path / "geo.ckpt"
    torch.save({"state_dict": {"geometry.sdf": torch.zeros(3)}}, ckpt)
    with pytest.raises(ConfigError, match="holds no CG-LoRA weights"):
        cls.validate_config(cfg(lora_from=str(ckpt)))
    with pytest.raises(ConfigError, match="coarse_weighting_strategy"):
        cls.validate_config(cfg(coarse_weighting_strategy="nope"))
    # weights of another rank do not fit: a clear error, not a stack of shape mismatches
    other = make_guidance(tiny_sd_path, ama_start_step=None, lora_rank=2).trainable_modules()
    torch.save({"state_dict": {f"guidance_params.{k}": v for k, v in other.state_dict().items()}}, ckpt)
    with pytest.raises(ConfigError, match="do not fit this model/config"):
        make_guidance(tiny_sd_path, ama_start_step=None, lora_from=str(ckpt))
    g = make_guidance(tiny_sd_path, ama_start_step=None, lora_rank=2, lora_from=str(ckpt))
    assert all(torch.equal(a, b) for a, b in zip(g.trainable_modules().state_dict().values(), other.state_dict().values()))
    assert math.isfinite(float(sum(p.detach().sum() for p in g.trainable_modules().parameters())))
