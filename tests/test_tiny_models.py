"""Tiny random-weight model folders (lift3d.models.tiny_factory) and model lookup (lift3d.models.loading)."""

import json
import shutil
import socket

import pytest
import torch

from lift3d.models.loading import ModelNotFoundError, resolve_pretrained
from lift3d.models.tiny_factory import build_tiny_clip_vocab, folder_size_bytes, main, make_tiny_sd, make_tiny_zero123

WHAT = "Stable Diffusion for system.guidance.pretrained_model_name_or_path"
ABSENT = "nonexistent-org/nonexistent-model-xyz"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run fastest on one thread; two OpenMP threads on a busy 2-core machine spin-wait
    (measured: a 2-step DDIM call 0.1 s with one thread, 16 s with two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    import diffusers  # noqa: F401  (imports are not part of the build time)
    import transformers  # noqa: F401

    # no wall-clock limit here (#21): the suite must pass on a loaded machine
    return make_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd", seed=0)


@pytest.fixture(scope="module")
def sd_pipe(tiny_sd):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------ SD folder
def test_sd_folder_layout_and_size(tiny_sd):
    index = json.loads((tiny_sd / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_sd / sub).is_dir()
    assert (tiny_sd / "tokenizer" / "vocab.json").is_file() and (tiny_sd / "tokenizer" / "merges.txt").is_file()
    assert folder_size_bytes(tiny_sd) < 8e6


def test_sd_components_load_by_subfolder(tiny_sd):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(tiny_sd, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(tiny_sd, subfolder="text_encoder")
    scheduler = DDPMScheduler.from_pretrained(tiny_sd, subfolder="scheduler")
    assert unet.config.in_channels == 4 and unet.config.cross_attention_dim == 32
    assert unet.config.use_linear_projection is True  # SD 2.x
    assert vae.config.latent_channels == 4 and vae.config.scaling_factor == pytest.approx(0.18215)
    assert text_encoder.config.hidden_size == 32 and text_encoder.config.max_position_embeddings == 77
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.prediction_type == "epsilon"
    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.betas[0].item() == pytest.approx(0.00085, rel=1e-5)
    assert scheduler.betas[-1].item() == pytest.approx(0.012, rel=1e-5)
    # alphabar of SD's schedule at t = 500 (scaled-linear betas): a known figure
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert scheduler.alphas_cumprod[500].item() == pytest.approx(torch.cumprod(1 - betas, 0)[500].item(), rel=1e-5)


def test_sd_shapes(sd_pipe):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        image = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
        latents = sd_pipe.vae.encode(image).latent_dist.sample(gen) * sd_pipe.vae.config.scaling_factor
        assert latents.shape == (2, 4, 8, 8)  # downsampling factor 8
        decoded = sd_pipe.vae.decode(latents / sd_pipe.vae.config.scaling_factor).sample
        assert decoded.shape == (2, 3, 64, 64)

        ids = sd_pipe.tokenizer(["a photo of a dog", ""], padding="max_length", max_length=77,
                                truncation=True, return_tensors="pt").input_ids
        text = sd_pipe.text_encoder(ids)[0]
        assert text.shape == (2, 77, 32)
        eps = sd_pipe.unet(latents, torch.tensor([10, 900]), encoder_hidden_states=text).sample
        assert eps.shape == (2, 4, 8, 8)
        assert not torch.allclose(eps[0], eps[1])


def test_sd_pipeline_runs_end_to_end(sd_pipe):
    out = sd_pipe("a photo of a hamburger", num_inference_steps=2, height=64, width=64, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 64, 64)
    assert out.min() >= 0 and out.max() <= 1


def test_tokenizer_round_trip(tiny_sd):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer")
    assert tok.model_max_length == 77
    prompt = "A DSLR photo of a hamburger"
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert len(ids) == 77
    n = len(tok(prompt).input_ids)
    assert ids[0] == tok.bos_token_id and ids[n - 1] == tok.eos_token_id
    assert ids[n:] == [tok.pad_token_id] * (77 - n)
    assert tok.pad_token == "!"  # SD 2.x's OpenCLIP tokenizer pads with "!"
    assert tok.convert_ids_to_tokens(ids[1:4]) == ["a</w>", "dslr</w>", "photo</w>"]  # whole-word merges
    assert tok.decode(ids, skip_special_tokens=True) == prompt.lower()

    # arbitrary text never fails: unknown words fall back to byte-level characters
    odd = "Zyxomorph #42 — naïve café 😀 in ÜBER-style!!"
    odd_ids = tok(odd, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(odd_ids) == 77 and max(odd_ids) < len(tok)
    assert tok.unk_token_id not in tok(odd).input_ids[1:-1]
    long_ids = tok("word " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long_ids) == 77 and long_ids[-1] == tok.eos_token_id


def test_vocab_covers_bytes_and_specials():
    vocab, merges = build_tiny_clip_vocab()
    assert "<|startoftext|>" in vocab and "<|endoftext|>" in vocab
    assert vocab["<|endoftext|>"] == len(vocab) - 1
    assert all(m.replace(" ", "") in vocab for m in merges)  # every merge result is a token
    assert sum(1 for t in vocab if t.endswith("</w>")) >= 256


# ------------------------------------------------------------------------------------ zero123 folder
def test_zero123_folder(tmp_path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    folder = make_tiny_zero123(tmp_path / "z", seed=0)
    assert folder_size_bytes(folder) < 8e6
    index = json.loads((folder / "model_index.json").read_text())
    assert {"vae", "unet", "image_encoder", "feature_extractor", "clip_camera_projection", "scheduler"} <= set(index)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    encoder = CLIPVisionModelWithProjection.from_pretrained(folder, subfolder="image_encoder")
    assert unet.config.in_channels == 8 and unet.config.out_channels == 4
    assert unet.config.cross_attention_dim == encoder.config.projection_dim == 32
    proj_cfg = json.loads((folder / "clip_camera_projection" / "config.json").read_text())
    assert proj_cfg["embedding_dim"] == 32 and proj_cfg["additional_embeddings"] == 4
    sched_cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert sched_cfg["_class_name"] == "DDIMScheduler" and sched_cfg["beta_end"] == 0.012

    # seeded: the same seed gives the same weights, another seed other weights
    again = make_tiny_zero123(tmp_path / "z_again", seed=0)
    other = make_tiny_zero123(tmp_path / "z_other", seed=1)
    w = lambda f: UNet2DConditionModel.from_pretrained(f, subfolder="unet").conv_in.weight
    assert torch.equal(w(folder), w(again))
    assert not torch.equal(w(folder), w(other))


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "cli-sd"), "--kind", "sd", "--seed", "3"]) == 0
    assert "wrote tiny sd model" in capsys.readouterr().out
    assert (tmp_path / "cli-sd" / "model_index.json").is_file()
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--kind", "nope"])


# ------------------------------------------------------------------------------------ loading
def test_resolve_local_folder(tiny_sd):
    assert resolve_pretrained(str(tiny_sd), WHAT) == str(tiny_sd.resolve())
    assert resolve_pretrained(tiny_sd, WHAT, ("model_index.json", "unet/config.json")) == str(tiny_sd.resolve())
    with pytest.raises(ModelNotFoundError) as err:
        resolve_pretrained(str(tiny_sd), WHAT, ("model_index.json", "image_encoder/config.json"))
    assert "lacks image_encoder/config.json" in str(err.value)


def test_resolve_missing_local_path(tmp_path):
    missing = tmp_path / "models" / "sd21"
    with pytest.raises(ModelNotFoundError) as err:
        resolve_pretrained(str(missing), WHAT)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert str(missing) in msg and "does not exist" in msg
    assert "system.guidance.pretrained_model_name_or_path=" in msg
    assert "python -m lift3d.models.tiny_factory --out DIR --kind sd" in msg


def _assert_absent_message(msg):
    assert WHAT in msg and ABSENT in msg  # what was looked for
    assert "Hugging Face cache" in msg and "the Hub" in msg  # where
    assert f"hf download {ABSENT}" in msg and f"huggingface-cli download {ABSENT}" in msg  # how
    assert "system.guidance.pretrained_model_name_or_path=" in msg
    assert "python -m lift3d.models.tiny_factory --out DIR --kind sd" in msg
    assert "Traceback" not in msg


def test_resolve_absent_id_offline_is_fast(monkeypatch, tmp_path):
    """Offline, the lookup never opens a network connection (fast by construction, not by a clock)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    connections: list = []  # recorded, not raised: the lookup's own error handling must not hide them

    def no_network(*args, **kwargs):
        connections.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ModelNotFoundError) as err:
        resolve_pretrained(ABSENT, WHAT, cache_dir=str(tmp_path / "hf-cache"))
    assert connections == [], "an offline lookup opened a network connection"
    _assert_absent_message(str(err.value))
    assert "HF_HUB_OFFLINE=1" in str(err.value)


def test_resolve_absent_id_online_is_fast(monkeypatch, tmp_path):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ModelNotFoundError) as err:  # bounded by network_timeout_s (see the silent-hub test)
        resolve_pretrained(ABSENT, WHAT, cache_dir=str(tmp_path / "hf-cache"), network_timeout_s=2.0)
    _assert_absent_message(str(err.value))


def test_resolve_never_hangs_on_a_silent_hub(monkeypatch, tmp_path):
    """A Hub that accepts connections but never answers: bounded by the timeouts, not by retries."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read at import; conftest sets it
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # the kernel completes handshakes; nobody ever reads or replies
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        with pytest.raises(ModelNotFoundError) as err:
            resolve_pretrained(ABSENT, WHAT, cache_dir=str(tmp_path / "hf-cache"), network_timeout_s=0.4)
        assert "no answer within 2 s" in str(err.value)  # the deadline (5 x network_timeout_s) ended it
    finally:
        server.close()


def test_resolve_hub_id_from_local_cache(tiny_sd, tmp_path, monkeypatch):
    """A Hub id present in the HF cache resolves to its snapshot folder, with no network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "hf-cache" / "models--tiny-org--tiny-sd"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_sd, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    got = resolve_pretrained("tiny-org/tiny-sd", WHAT, ("model_index.json", "unet/config.json"),
                             cache_dir=str(tmp_path / "hf-cache"))
    assert got == str(repo / "snapshots" / commit)
    with pytest.raises(ModelNotFoundError) as err:
        resolve_pretrained("tiny-org/tiny-sd", WHAT, ("model_index.json", "image_encoder/config.json"),
                           cache_dir=str(tmp_path / "hf-cache"))
    assert "lacks image_encoder/config.json" in str(err.value)
