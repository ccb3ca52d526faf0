"""Models found on the Hub are downloaded during the lookup (lift3d.models.loading, #21): a download that
stalls midway is ONE error line (a ConfigError: launch.py exit 2), never an httpx traceback; a download
that completes gives a local folder that loads. No network: tests/faults/fake_hub.py serves a tiny model
on 127.0.0.1."""
import pytest

from lift3d.errors import ConfigError
from lift3d.models.loading import ModelNotFoundError, files_to_download, resolve_pretrained
from tests.faults.fake_hub import FakeHub

REPO_ID = "tiny-org/tiny-sd"
WHAT = "Stable Diffusion for system.guidance.pretrained_model_name_or_path"


@pytest.fixture
def online(monkeypatch, tmp_path):
    """An online environment (conftest puts the suite offline) whose HF cache is empty."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read at import
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    return tmp_path / "hf-cache"


def test_files_to_download_picks_one_weight_format():
    listing = ["model_index.json", "v1-5-pruned.ckpt", "v1-5-pruned-emaonly.safetensors",
               "unet/config.json", "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.safetensors",
               "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.non_ema.bin",
               "text_encoder/model.bin", "tokenizer/vocab.json", "tokenizer/merges.txt"]
    assert files_to_download(listing) == [
        "model_index.json", "text_encoder/model.bin", "tokenizer/merges.txt", "tokenizer/vocab.json",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    # a transformers repo keeps its weights at the root
    assert files_to_download(["config.json", "model.safetensors", "pytorch_model.bin"]) == [
        "config.json", "model.safetensors"]


def test_hub_model_is_downloaded_and_loads(tiny_sd_path, online, monkeypatch, one_torch_thread):
    from lift3d.models.stable_diffusion import StableDiffusion

    with FakeHub(tiny_sd_path, REPO_ID) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        folder = resolve_pretrained(REPO_ID, WHAT, ("model_index.json", "unet/config.json"), cache_dir=str(online))
        assert folder.startswith(str(online)), folder  # a snapshot folder in the cache, not the id
        assert any(p.endswith("unet/diffusion_pytorch_model.safetensors") for _, p in hub.requests)
    model = StableDiffusion(folder)  # offline now: everything is on disk
    assert model.unet.config.in_channels == 4


def test_stalled_download_is_one_line(tiny_sd_path, online, monkeypatch):
    from huggingface_hub import constants

    from lift3d.models.stable_diffusion import StableDiffusion

    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.2)  # seconds without a byte, per attempt
    with FakeHub(tiny_sd_path, REPO_ID, stall_suffix="unet/diffusion_pytorch_model.safetensors") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(online))
        with pytest.raises(ConfigError) as err:
            StableDiffusion.resolve(REPO_ID, WHAT)
        assert hub.stalled_gets >= 2  # it stalled midway, and the client's resume attempts stalled too
    msg = str(err.value)
    assert isinstance(err.value, ModelNotFoundError)
    assert "\n" not in msg and "Traceback" not in msg
    assert f"downloading '{REPO_ID}'" in msg and "stalled" in msg and "ReadTimeout" in msg
    assert f"hf download {REPO_ID}" in msg and "system.guidance.pretrained_model_name_or_path=" in msg
