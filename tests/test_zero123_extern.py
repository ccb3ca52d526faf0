"""extern/zero123: camera embeddings, Zero123Pipeline on the tiny folder, original-.ckpt converter."""

import json
import math
import sys
import types

import pytest
import torch

from extern.zero123.camera import (
    relative_camera_embedding,
    stable_zero123_camera_embedding,
    zero123_camera_embedding,
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run fastest on one thread; two OpenMP threads on a busy 2-core machine spin-wait
    (measured: a 2-step DDIM call 0.1 s with one thread, 16 s with two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ camera
def test_zero123_camera_embedding_known_angles():
    emb = zero123_camera_embedding(
        torch.tensor([math.pi / 2, 0.0, -0.25]), torch.tensor([math.pi / 2, math.pi, 0.0]), torch.tensor([0.5, 0.0, -0.2])
    )
    expected = torch.tensor([[math.pi / 2, 1.0, 0.0, 0.5], [0.0, 0.0, -1.0, 0.0], [-0.25, 0.0, 1.0, -0.2]])
    assert emb.shape == (3, 4)
    assert torch.allclose(emb, expected, atol=1e-6)
    # scalars broadcast against a batch
    emb = zero123_camera_embedding(0.1, torch.tensor([0.0, math.pi / 6]), 0.0)
    assert torch.allclose(emb, torch.tensor([[0.1, 0.0, 1.0, 0.0], [0.1, 0.5, math.sqrt(3) / 2, 0.0]]), atol=1e-6)


def test_stable_zero123_uses_reference_polar():
    emb = stable_zero123_camera_embedding(torch.tensor([0.2]), torch.tensor([-math.pi / 2]), torch.tensor([1.2]))
    assert torch.allclose(emb, torch.tensor([[0.2, -1.0, 0.0, 1.2]]), atol=1e-6)


def test_relative_camera_from_lift3d_angles():
    # target elevation 30°, azimuth 120°, distance 1.8; reference elevation 15°, azimuth 90°, distance 1.5
    emb = relative_camera_embedding(30.0, 120.0, 1.8, 15.0, 90.0, 1.5)
    d_polar = math.radians((90 - 30) - (90 - 15))  # -15°: the target is higher than the reference
    assert torch.allclose(emb, torch.tensor([[d_polar, 0.5, math.sqrt(3) / 2, 0.3]]), atol=1e-6)
    emb = relative_camera_embedding(torch.tensor([30.0, 15.0]), 90.0, 1.5, 15.0, 90.0, 1.5, variant="stable-zero123")
    ref_polar = math.radians(75.0)
    assert torch.allclose(emb, torch.tensor([[d_polar, 0.0, 1.0, ref_polar], [0.0, 0.0, 1.0, ref_polar]]), atol=1e-6)
    with pytest.raises(ValueError, match="variant"):
        relative_camera_embedding(0, 0, 1, 0, 0, 1, variant="nope")


# ------------------------------------------------------------------------------------ pipeline
@pytest.fixture(scope="module")
def tiny_zero123(tmp_path_factory):
    from lift3d.models.tiny_factory import make_tiny_zero123

    return make_tiny_zero123(tmp_path_factory.mktemp("zero123") / "tiny", seed=0)


@pytest.fixture(scope="module")
def pipe(tiny_zero123):
    from extern.zero123.pipeline import Zero123Pipeline

    return Zero123Pipeline.from_pretrained(str(tiny_zero123))


def test_pipeline_loads_published_layout(tiny_zero123, pipe):
    from extern.zero123.pipeline import CCProjection

    index = json.loads((tiny_zero123 / "model_index.json").read_text())
    # the module name stock diffusers cannot resolve, as in bennyguo/zero123-xl-diffusers
    assert index["clip_camera_projection"] == ["zero123", "CLIPCameraProjection"]
    assert isinstance(pipe.clip_camera_projection, CCProjection)
    assert type(pipe.unet).__name__ == "UNet2DConditionModel" and pipe.unet.config.in_channels == 8
    assert type(pipe.image_encoder).__name__ == "CLIPVisionModelWithProjection"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.clip_camera_projection.proj.weight.shape == (32, 36)
    assert pipe.image_size == (32, 32)


def test_encode_image_embedding_matches_clip_processor(pipe):
    gen = torch.Generator().manual_seed(0)
    # 8-bit values at the crop size: the processor's PIL path is then exact (no resize, no rounding)
    image = torch.randint(0, 256, (2, 3, 32, 32), generator=gen).float() / 255
    emb = pipe.encode_image_embedding(image)
    assert emb.shape == (2, 1, 32)
    pixel_values = pipe.feature_extractor(
        images=[im.permute(1, 2, 0).numpy() for im in image], do_rescale=False, return_tensors="pt"
    ).pixel_values
    ref = pipe.image_encoder(pixel_values=pixel_values).image_embeds[:, None]
    assert torch.allclose(emb, ref, atol=1e-5)
    # other sizes are resized to the crop size first
    assert pipe.encode_image_embedding(torch.rand(1, 3, 64, 64)).shape == (1, 1, 32)


def test_latents_conditioning_and_noise_prediction(pipe):
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 64, 64, generator=gen)
    lat = pipe.encode_image_latents(image)
    assert lat.shape == (1, 4, 8, 8)
    ref_lat = pipe.vae.encode(image * 2 - 1).latent_dist.mode()
    assert torch.allclose(lat, ref_lat, atol=1e-6)  # unscaled (no 0.18215)

    emb = pipe.encode_image_embedding(image)  # [1,1,32]
    camera = zero123_camera_embedding(torch.tensor([0.1, -0.3]), torch.tensor([0.5, 2.0]), 0.0)  # [2,4]
    ctx = pipe.conditioning(emb, camera)
    assert ctx.shape == (2, 1, 32)
    manual = pipe.clip_camera_projection(torch.cat([emb.expand(2, -1, -1), camera[:, None]], dim=-1))
    assert torch.allclose(ctx, manual, atol=1e-6)
    assert not torch.allclose(ctx[0], ctx[1])  # the camera matters

    z_t = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([20, 700])
    eps = pipe.predict_noise(z_t, t, lat, ctx)
    assert eps.shape == (2, 4, 8, 8)
    ref = pipe.unet(torch.cat([z_t, lat.expand(2, -1, -1, -1)], 1), t, encoder_hidden_states=ctx).sample
    assert torch.allclose(eps, ref, atol=1e-6)


def test_ddim_sampling_with_cfg(pipe):
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    camera = zero123_camera_embedding(torch.tensor([0.0, 0.4]), torch.tensor([0.0, 1.0]), 0.0)
    run = lambda: pipe(image, camera, num_inference_steps=2, guidance_scale=3.0,
                       generator=torch.Generator().manual_seed(0), output_type="pt").images
    a, b = run(), run()
    assert a.shape == (2, 3, 64, 64)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)  # seeded
    lat = pipe(image, camera, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert lat.shape == (2, 4, 8, 8)


# ------------------------------------------------------------------------------------ converter
_RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                  "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def _unet_to_ldm(sd, layers_per_block, up_has_attention):
    """Hand-written inverse of the LDM -> diffusers UNet mapping (openaimodel.UNetModel key names)."""
    per = layers_per_block + 1  # resnets per up block; resnets + downsample per down block
    out = {}
    for key, value in sd.items():
        p = key.split(".")
        if p[0] == "time_embedding":
            new = f"time_embed.{0 if p[1] == 'linear_1' else 2}.{p[2]}"
        elif p[0] == "conv_in":
            new = f"input_blocks.0.0.{p[1]}"
        elif p[0] == "conv_norm_out":
            new = f"out.0.{p[1]}"
        elif p[0] == "conv_out":
            new = f"out.2.{p[1]}"
        elif p[0] == "down_blocks":
            b = int(p[1])
            if p[2] == "resnets":
                new = f"input_blocks.{1 + b * per + int(p[3])}.0.{_RESNET_TO_LDM[p[4]]}.{'.'.join(p[5:])}"
            elif p[2] == "attentions":
                new = f"input_blocks.{1 + b * per + int(p[3])}.1.{'.'.join(p[4:])}"
            else:  # downsamplers.0.conv.{weight,bias}
                new = f"input_blocks.{(b + 1) * per}.0.op.{p[-1]}"
        elif p[0] == "mid_block":
            if p[1] == "resnets":
                new = f"middle_block.{0 if p[2] == '0' else 2}.{_RESNET_TO_LDM[p[3]]}.{'.'.join(p[4:])}"
            else:
                new = f"middle_block.1.{'.'.join(p[3:])}"
        elif p[0] == "up_blocks":
            b = int(p[1])
            if p[2] == "resnets":
                new = f"output_blocks.{b * per + int(p[3])}.0.{_RESNET_TO_LDM[p[4]]}.{'.'.join(p[5:])}"
            elif p[2] == "attentions":
                new = f"output_blocks.{b * per + int(p[3])}.1.{'.'.join(p[4:])}"
            else:  # upsamplers.0.conv.{weight,bias}: after the resnet (and its attention)
                new = f"output_blocks.{b * per + layers_per_block}.{2 if up_has_attention[b] else 1}.conv.{p[-1]}"
        else:
            raise KeyError(key)
        out["model.diffusion_model." + new] = value
    return out


_VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}


def _vae_to_ldm(sd, n_blocks):
    """Hand-written inverse of the LDM -> diffusers AutoencoderKL mapping (ldm Encoder/Decoder names)."""
    out = {}
    for key, value in sd.items():
        p = key.split(".")
        if p[0] in ("quant_conv", "post_quant_conv"):
            new = key
        elif p[1] in ("conv_in", "conv_out"):
            new = key
        elif p[1] == "conv_norm_out":
            new = f"{p[0]}.norm_out.{p[2]}"
        elif p[1] in ("down_blocks", "up_blocks"):
            i = int(p[2]) if p[1] == "down_blocks" else n_blocks - 1 - int(p[2])
            side = "down" if p[1] == "down_blocks" else "up"
            if p[3] == "resnets":
                layer = p[5].replace("conv_shortcut", "nin_shortcut")
                new = f"{p[0]}.{side}.{i}.block.{p[4]}.{layer}.{p[-1]}"
            else:
                new = f"{p[0]}.{side}.{i}.{'downsample' if side == 'down' else 'upsample'}.conv.{p[-1]}"
        elif p[1] == "mid_block":
            if p[2] == "resnets":
                new = f"{p[0]}.mid.block_{int(p[3]) + 1}.{p[4]}.{p[-1]}"
            else:
                new = f"{p[0]}.mid.attn_1.{_VAE_ATTN_TO_LDM[p[4]]}.{p[-1]}"
                if value.ndim == 2:  # LDM uses 1x1 convolutions for q / k / v / proj_out
                    value = value[:, :, None, None]
        else:
            raise KeyError(key)
        out["first_stage_model." + new] = value
    return out


def _save_original_ckpt(pipe, path):
    unet, vae, proj = pipe.unet, pipe.vae, pipe.clip_camera_projection
    up_attn = ["CrossAttn" in t for t in unet.config.up_block_types]
    state = {}
    state.update(_unet_to_ldm(unet.state_dict(), unet.config.layers_per_block, up_attn))
    state.update(_vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels)))
    state["cc_projection.weight"] = proj.proj.weight.detach().clone()
    state["cc_projection.bias"] = proj.proj.bias.detach().clone()
    state["betas"] = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64).float() ** 2
    # a Lightning-style extra whose class cannot be imported when the checkpoint is read back
    fake = types.ModuleType("fake_lightning_callbacks")
    cls = type("ModelCheckpoint", (), {"__module__": fake.__name__})
    fake.ModelCheckpoint = cls
    sys.modules[fake.__name__] = fake
    try:
        torch.save({"state_dict": state, "global_step": 105000, "callbacks": {"cb": cls()}}, path)
    finally:
        del sys.modules[fake.__name__]
    return state


def test_converter_reproduces_the_models(tmp_path, tiny_zero123, pipe):
    from extern.zero123.convert_original_ckpt import main
    from extern.zero123.pipeline import Zero123Pipeline

    ckpt = tmp_path / "zero123-tiny.ckpt"
    state = _save_original_ckpt(pipe, ckpt)
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" in state  # LDM names really used
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    out = tmp_path / "converted"
    rc = main(["--ckpt", str(ckpt), "--out", str(out), "--image-encoder", str(tiny_zero123 / "image_encoder"),
               "--image-size", "64"])
    assert rc == 0
    conv = Zero123Pipeline.from_pretrained(str(out))
    assert conv.unet.config.in_channels == 8 and conv.unet.config.sample_size == 8
    assert conv.unet.config.use_linear_projection is False
    assert list(conv.unet.config.down_block_types) == list(pipe.unet.config.down_block_types)
    assert conv.vae.config.scaling_factor == pytest.approx(0.18215)
    assert torch.allclose(conv.scheduler.alphas_cumprod, pipe.scheduler.alphas_cumprod)

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 8, 8, generator=gen)
    ctx = torch.randn(2, 1, 32, generator=gen)
    t = torch.tensor([15, 640])
    with torch.no_grad():
        ref = pipe.unet(x, t, encoder_hidden_states=ctx).sample
        got = conv.unet(x, t, encoder_hidden_states=ctx).sample
        assert ref.abs().max() > 1e-3  # a non-trivial output
        assert (got - ref).abs().max() < 1e-5

        image = torch.rand(1, 3, 64, 64, generator=gen)
        assert (conv.encode_image_latents(image) - pipe.encode_image_latents(image)).abs().max() < 1e-5
        z = torch.randn(1, 4, 8, 8, generator=gen)
        assert (conv.vae.decode(z).sample - pipe.vae.decode(z).sample).abs().max() < 1e-5
        cam = torch.randn(2, 4, generator=gen)
        emb = pipe.encode_image_embedding(image)
        assert (conv.conditioning(emb, cam) - pipe.conditioning(emb, cam)).abs().max() < 1e-6


def test_converter_infers_real_zero123_architecture():
    """Config inference on the full-size Zero-1-to-3 UNet (meta tensors: shapes only, no memory)."""
    from diffusers import UNet2DConditionModel

    from extern.zero123.convert_original_ckpt import infer_ldm_unet_params

    real = dict(
        sample_size=32, in_channels=8, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    with torch.device("meta"):
        unet = UNet2DConditionModel(**real)
    up_attn = ["CrossAttn" in t for t in real["up_block_types"]]
    state = _unet_to_ldm(unet.state_dict(), 2, up_attn)
    assert "model.diffusion_model.output_blocks.11.1.proj_in.weight" in state
    params = infer_ldm_unet_params(state)
    assert params["model_channels"] == 320 and params["in_channels"] == 8 and params["out_channels"] == 4
    assert params["channel_mult"] == [1, 2, 4, 4] and params["num_res_blocks"] == 2
    assert params["attention_resolutions"] == [1, 2, 4]  # LDM's [4, 2, 1]
    assert params["context_dim"] == 768 and params["transformer_depth"] == 1
    assert params["use_linear_in_transformer"] is False


def test_converter_rejects_non_ldm_checkpoint(tmp_path):
    from extern.zero123.convert_original_ckpt import main

    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"foo.weight": torch.zeros(1)}}, bad)
    assert main(["--ckpt", str(bad), "--out", str(tmp_path / "o"), "--image-encoder", "none"]) == 1
    assert main(["--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "o"), "--image-encoder", "none"]) == 1
    assert not (tmp_path / "o").exists()


def test_converter_missing_image_encoder_fails_first(tmp_path, monkeypatch, capsys):
    from extern.zero123.convert_original_ckpt import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = main(["--ckpt", str(tmp_path / "never-read.ckpt"), "--out", str(tmp_path / "o"),
               "--image-encoder", "nonexistent-org/nonexistent-clip"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "CLIP image encoder for --image-encoder" in err and "nonexistent-org/nonexistent-clip" in err
    assert "set --image-encoder=/path/to/folder" in err and "hf download nonexistent-org/nonexistent-clip" in err
    assert not (tmp_path / "o").exists()

