"""DeepFloyd IF (#15 point 2): `deep-floyd-guidance`'s SDS gradient against a hand computation from the raw
diffusers UNet and transformers T5 of a tiny random IF folder; `deep-floyd-prompt-processor`'s T5 embeddings
per view direction and its cache; the clear errors; dreamfusion-if / magic3d-coarse-if end to end."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from lift3d.errors import ConfigError
from lift3d.registry import find
from tests.helpers import only_trial, run_launch

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

PROMPT = "a red cube"


@pytest.fixture(scope="module")
def tiny_if(tmp_path_factory):
    """A DeepFloyd/IF-I-XL-v1.0-shaped folder: UNet on 16² pixels with 6 output channels (noise, variance),
    T5 text encoder of width 16 and a T5 tokenizer (lift3d.models.tiny_factory)."""
    from lift3d.models.tiny_factory import make_tiny_deepfloyd_if

    return make_tiny_deepfloyd_if(tmp_path_factory.mktemp("tiny-models") / "tiny-if", seed=7)


@pytest.fixture(scope="module")
def prompt_utils(tiny_if, tmp_path_factory):
    processor = find("deep-floyd-prompt-processor")({
        "prompt": PROMPT, "pretrained_model_name_or_path": str(tiny_if),
        "cache_dir": str(tmp_path_factory.mktemp("if-text-cache")),
    })
    return processor()


@torch.no_grad()
def t5_by_hand(folder, prompts):
    """[N,77,D] from the folder's tokenizer and T5EncoderModel, as IF's pipeline encodes prompts."""
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
    encoder = T5EncoderModel.from_pretrained(str(folder), subfolder="text_encoder").eval()
    tokens = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    return encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]


# ------------------------------------------------------------------ prompt processor
def test_prompt_processor_gives_t5_embeddings_per_view_direction(tiny_if, prompt_utils, tmp_path):
    assert prompt_utils.prompts_vd == [f"{PROMPT}, side view", f"{PROMPT}, front view", f"{PROMPT}, back view",
                                       f"{PROMPT}, overhead view"]
    assert prompt_utils.text_embeddings_vd.shape == (4, 77, 16)  # [directions, 77 tokens, T5 width of the tiny IF]
    want = t5_by_hand(tiny_if, [*prompt_utils.prompts_vd, ""])
    assert torch.allclose(prompt_utils.text_embeddings_vd, want[:4], atol=1e-5)
    assert torch.allclose(prompt_utils.uncond_text_embeddings_vd, want[4:].expand(4, -1, -1), atol=1e-5)
    # cameras: front (azimuth 0), back (180), overhead (elevation 80) -> [2B,77,D], cond then uncond
    elevation, azimuth = torch.tensor([10.0, 10.0, 80.0]), torch.tensor([0.0, 180.0, 90.0])
    text = prompt_utils.get_text_embeddings(elevation, azimuth, torch.full((3,), 2.0))
    assert text.shape == (6, 77, 16)
    assert torch.allclose(text[:3], want[[1, 2, 3]], atol=1e-5) and torch.allclose(text[3:], want[[4, 4, 4]], atol=1e-5)
    assert (text[0] - text[1]).abs().max() > 1e-3  # the view-dependent variants really differ
    plain = prompt_utils.get_text_embeddings(elevation, azimuth, None, view_dependent_prompting=False)
    assert torch.allclose(plain[:3], t5_by_hand(tiny_if, [PROMPT]).expand(3, -1, -1), atol=1e-5)


def test_prompt_processor_reads_its_cache(tiny_if, tmp_path):
    cfg = {"prompt": "a blue sphere", "pretrained_model_name_or_path": str(tiny_if), "cache_dir": str(tmp_path)}
    first = find("deep-floyd-prompt-processor")(cfg)
    assert len(first.encoded_prompts) == 6 and len(list(tmp_path.glob("*.pt"))) == 6  # prompt, 4 views, ""
    second = find("deep-floyd-prompt-processor")(cfg)
    assert second.encoded_prompts == []
    assert torch.equal(first().text_embeddings_vd, second().text_embeddings_vd)


def test_missing_if_folder_is_one_clear_config_error(tmp_path):
    for name in ("deep-floyd-prompt-processor", "deep-floyd-guidance"):
        cls = find(name)
        cfg = OmegaConf.structured(cls.Config(pretrained_model_name_or_path=str(tmp_path / "no-if"), prompt="a cat")
                                   if name.endswith("processor") else cls.Config(pretrained_model_name_or_path=str(tmp_path / "no-if")))
        with pytest.raises(ConfigError, match="DeepFloyd IF"):
            cls.validate_config(cfg)


def test_sentencepiece_only_tokenizer_without_the_package_is_a_config_error(tiny_if, tmp_path, monkeypatch):
    """DeepFloyd's published tokenizer/ is a bare spiece.model: without sentencepiece, one line before any work."""
    import importlib.util
    import shutil

    folder = shutil.copytree(tiny_if, tmp_path / "if-spiece")
    (folder / "tokenizer/tokenizer.json").unlink()
    (folder / "tokenizer/spiece.model").write_bytes(b"\x00")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sentencepiece" else real_find_spec(name, *a))
    cls = find("deep-floyd-prompt-processor")
    cfg = OmegaConf.structured(cls.Config(pretrained_model_name_or_path=str(folder), prompt="a cat"))
    with pytest.raises(ConfigError, match=r"spiece.model.*pip install sentencepiece"):
        cls.validate_config(cfg)
    cls.validate_config(OmegaConf.structured(cls.Config(pretrained_model_name_or_path=str(tiny_if), prompt="a cat")))


# ------------------------------------------------------------------ guidance
def test_if_sds_gradient_is_w_times_guided_noise_half_minus_noise(tiny_if, prompt_utils):
    """d loss_sds / d image = 2 w(t) (eps_c + s (eps_c - eps_u) - eps) / B, with eps_c, eps_u the first 3 of
    the raw UNet's 6 output channels (x = 2 image - 1 at the native 16²: no resize)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    s = 7.5
    guidance = find("deep-floyd-guidance")({"pretrained_model_name_or_path": str(tiny_if), "guidance_scale": s,
                                            "weighting_strategy": "sds"})
    assert guidance.resolution == 16
    B = 2
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(B, 16, 16, 3, generator=gen).requires_grad_(True)
    noise = torch.randn(B, 3, 16, 16, generator=gen)
    t = torch.tensor([300, 700])
    batch = {"elevation": torch.tensor([10.0, 10.0]), "azimuth": torch.tensor([0.0, 180.0]),
             "camera_distances": torch.tensor([2.0, 2.0])}
    out = guidance(image, batch, prompt_utils=prompt_utils, t=t, noise=noise)
    out["loss_sds"].backward()

    # by hand, from the raw diffusers modules and the folder's T5
    unet = UNet2DConditionModel.from_pretrained(str(tiny_if), subfolder="unet").eval()
    scheduler = DDPMScheduler.from_pretrained(str(tiny_if), subfolder="scheduler")
    text = t5_by_hand(tiny_if, [f"{PROMPT}, front view", f"{PROMPT}, back view", "", ""])
    with torch.no_grad():
        x = image.detach().permute(0, 3, 1, 2) * 2 - 1
        x_t = scheduler.add_noise(x, noise, t)
        raw = unet(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=text).sample  # [2B,6,16,16]
    assert raw.shape == (2 * B, 6, 16, 16)
    eps_c, eps_u = raw[:B, :3], raw[B:, :3]
    w = (1 - scheduler.alphas_cumprod[t]).view(-1, 1, 1, 1)
    grad_x = w * (eps_c + s * (eps_c - eps_u) - noise)
    want = (2 * grad_x / B).permute(0, 2, 3, 1)
    assert torch.allclose(image.grad, want, atol=1e-5, rtol=1e-4), (image.grad - want).abs().max()
    # the test can tell the wrong variants apart: the variance half, the standard CFG form
    var_c, var_u = raw[:B, 3:], raw[B:, 3:]
    wrong_half = (2 * w * (var_c + s * (var_c - var_u) - noise) / B).permute(0, 2, 3, 1)
    wrong_cfg = (2 * w * (eps_u + s * (eps_c - eps_u) - noise) / B).permute(0, 2, 3, 1)
    assert (wrong_half - want).abs().max() > 1e-2 and (wrong_cfg - want).abs().max() > 1e-3
    assert torch.allclose(out["timestep"], t.float().mean())


def test_renders_are_resized_to_the_model_size(tiny_if, prompt_utils):
    guidance = find("deep-floyd-guidance")({"pretrained_model_name_or_path": str(tiny_if)})
    image = torch.rand(1, 24, 24, 3)
    x = guidance.encode(image)
    assert x.shape == (1, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert guidance.cfg.guidance_scale == 20.0 and guidance.guidance_weight == 21.0  # threestudio's IF defaults


def test_wrong_text_or_latent_input_is_a_clear_error(tiny_if):
    cls = find("deep-floyd-guidance")
    with pytest.raises(ConfigError, match="rgb_as_latents=true: DeepFloyd IF has no latent space"):
        cls.validate_config(OmegaConf.structured(cls.Config(pretrained_model_name_or_path=str(tiny_if),
                                                            rgb_as_latents=True)))
    guidance = cls({"pretrained_model_name_or_path": str(tiny_if)})
    batch = {"elevation": torch.zeros(1), "azimuth": torch.zeros(1), "camera_distances": torch.ones(1)}
    with pytest.raises(ConfigError, match="deep-floyd-prompt-processor"):
        guidance(torch.rand(1, 16, 16, 3), batch, prompt_utils=None)

    class ClipWidth:  # what stable-diffusion-prompt-processor would give: the wrong width for IF's UNet
        def get_text_embeddings(self, elevation, azimuth, camera_distances=None, view_dependent_prompting=True):
            return torch.zeros(2, 77, 32)

    with pytest.raises(ConfigError, match="width 32.*width 16.*deep-floyd-prompt-processor"):
        guidance(torch.rand(1, 16, 16, 3), batch, prompt_utils=ClipWidth())


# ------------------------------------------------------------------ configs end to end
SMALL = [
    "trainer.max_steps=2", "checkpoint.every_n_train_steps=2", "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false", "system.renderer.num_samples_per_ray=16",
    "system.geometry.isosurface_resolution=16", "system.geometry.isosurface_threshold=auto",
    "system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=10",
    "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16",
    "data.n_val_views=1", "data.n_test_views=2", "system.prompt_processor.prompt=a red cube",
]
PROGRESSIVE = ["system.geometry.pos_encoding_config.start_level=2", "system.geometry.pos_encoding_config.start_step=1",
               "system.geometry.pos_encoding_config.update_steps=1", "system.guidance.guidance_eval_interval=1"]


@pytest.mark.slow
@pytest.mark.parametrize("config, extra", [("dreamfusion-if", PROGRESSIVE), ("magic3d-coarse-if", [])])
def test_if_config_trains_tests_and_exports(tmp_path, tiny_if, config, extra):
    root = tmp_path / "out"
    run_launch(["--config", f"configs/{config}.yaml", "--train", f"exp_root_dir={root}", *SMALL, *extra,
                f"system.prompt_processor.pretrained_model_name_or_path={tiny_if}",
                f"system.prompt_processor.cache_dir={tmp_path / 'cache'}"])
    trial = only_trial(root, config)
    save = trial / "save"
    assert (trial / "ckpts/last.ckpt").is_file() and (save / "it2-test.mp4").is_file()
    assert len(list((save / "it2-test").glob("*.png"))) == 2
    if extra:
        assert (save / "it1-guidance.png").is_file()  # render | noisy | x0 | denoised, in IF's pixel space
    parsed = (trial / "configs/parsed.yaml").read_text()
    assert f"pretrained_model_name_or_path: {tiny_if}" in parsed and "deep-floyd-guidance" in parsed
    state = torch.load(trial / "ckpts/last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert not any(word in k for k in state for word in ("unet", "text_encoder"))  # frozen models stay out
    run_launch(["--config", str(trial / "configs/parsed.yaml"), "--export", f"resume={trial / 'ckpts/last.ckpt'}"])
    assert (save / "it2-export/model.obj").stat().st_size > 0
