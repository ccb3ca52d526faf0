"""stable-diffusion-prompt-processor: view directions, prompt forms, the prompt library, the on-disk
embedding cache (atomic, shared, keyed by model and prompt) and releasing the text encoder."""
import gc
import threading
import weakref

import pytest
import torch

from lift3d.errors import ConfigError
from lift3d.prompt.cache import TextEmbeddingCache
from lift3d.prompt.directions import direction_indices, make_directions, shift_azimuth_deg
from lift3d.prompt.stable_diffusion import StableDiffusionPromptProcessor, resolve_prompt


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tiny models: one thread


def processor(path, cache_dir, **cfg):
    return StableDiffusionPromptProcessor({"pretrained_model_name_or_path": str(path), "cache_dir": str(cache_dir), **cfg})


def encode_directly(path, prompts):
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    enc = CLIPTextModel.from_pretrained(path, subfolder="text_encoder").eval()
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return enc(ids)[0]


# ---------------------------------------------------------------------------------- directions
@pytest.mark.parametrize("elevation, azimuth, expected", [
    (0, 0, "front"), (0, 44.9, "front"), (0, -44.9, "front"), (0, 45.1, "side"), (0, -90, "side"),
    (0, 134.9, "side"), (0, 135.1, "back"), (0, 180, "back"), (0, -135.1, "back"), (0, 200, "back"),
    (0, 360, "front"), (0, 330, "front"), (59.9, 0, "front"), (60.1, 0, "overhead"),
    (60.1, 180, "overhead"), (80, 90, "overhead"), (-30, 170, "back"),
])
def test_direction_thresholds(elevation, azimuth, expected):
    dirs = make_directions(45.0, 45.0, 60.0)
    idx = direction_indices(dirs, torch.tensor([float(elevation)]), torch.tensor([float(azimuth)]))
    assert dirs[int(idx)].name == expected


def test_custom_thresholds_and_azimuth_wrap():
    dirs = make_directions(front_threshold=30.0, back_threshold=60.0, overhead_threshold=45.0)
    idx = direction_indices(dirs, torch.tensor([0.0, 0.0, 0.0, 50.0]), torch.tensor([40.0, 125.0, 29.0, 0.0]))
    assert [dirs[i].name for i in idx] == ["side", "back", "front", "overhead"]
    assert torch.allclose(shift_azimuth_deg(torch.tensor([190.0, -190.0, 540.0, 0.0])), torch.tensor([-170.0, 170.0, -180.0, 0.0]))


# ---------------------------------------------------------------------------------- library
def test_prompt_library_lookup():
    assert resolve_prompt("a plain prompt") == "a plain prompt"
    assert resolve_prompt("lib:pineapple") == "a DSLR photo of a ripe pineapple on a wooden table"
    assert resolve_prompt("lib:hamburger_lego") == "a zoomed out DSLR photo of a hamburger made of lego bricks"
    assert resolve_prompt("lib:Hamburger delicious") == "a zoomed out DSLR photo of a delicious hamburger"
    with pytest.raises(ConfigError) as info:
        resolve_prompt("lib:hamburger")  # two entries: the error lists both
    assert "ambiguous" in str(info.value) and "lego bricks" in str(info.value) and "delicious hamburger" in str(info.value)
    with pytest.raises(ConfigError, match="no entry"):
        resolve_prompt("lib:zebra")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_prompt("lib:pineapple", library="load/nope.json")


# ---------------------------------------------------------------------------------- embeddings
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("text-cache")


@pytest.fixture(scope="module")
def utils(tiny_sd_path, cache_dir):
    return processor(tiny_sd_path, cache_dir, prompt="a photo of a dog", negative_prompt="ugly, blurry",
                     prompt_back="the back of a dog")()


def test_view_dependent_prompts(utils, tiny_sd_path, tmp_path):
    assert utils.prompts_vd == ["a photo of a dog, side view", "a photo of a dog, front view",
                                "the back of a dog", "a photo of a dog, overhead view"]
    assert utils.negative_prompts_vd == ["ugly, blurry"] * 4
    prefix = processor(tiny_sd_path, tmp_path, prompt="lib:pineapple", view_dependent_prompt_front=True)()
    assert prefix.prompts_vd[1] == "front view of a DSLR photo of a ripe pineapple on a wooden table"


def test_text_embeddings_per_camera(utils, tiny_sd_path):
    elevation = torch.tensor([0.0, 0.0, 0.0, 70.0])
    azimuth = torch.tensor([0.0, 90.0, 180.0, 0.0])
    emb = utils.get_text_embeddings(elevation, azimuth, torch.ones(4))
    assert emb.shape == (8, 77, 32)
    expected = encode_directly(tiny_sd_path, ["a photo of a dog, front view", "a photo of a dog, side view",
                                              "the back of a dog", "a photo of a dog, overhead view", "ugly, blurry"])
    assert torch.allclose(emb[:4], expected[:4], atol=1e-5)  # conditional rows first, one per camera
    assert torch.allclose(emb[4:], expected[4:5].expand(4, -1, -1), atol=1e-5)  # then the negative prompt
    assert utils.get_prompts(elevation, azimuth)[2] == "the back of a dog"
    plain = utils.get_text_embeddings(elevation, azimuth, None, view_dependent_prompting=False)
    assert torch.allclose(plain[:4], encode_directly(tiny_sd_path, ["a photo of a dog"]).expand(4, -1, -1), atol=1e-5)
    assert torch.allclose(utils.get_uncond_embeddings(2), expected[4:5].expand(2, -1, -1), atol=1e-5)


def test_cache_hit_needs_no_text_encoder(utils, tiny_sd_path, cache_dir, monkeypatch):
    import transformers

    files = sorted(p.name for p in cache_dir.iterdir())
    assert len(files) == 6 and all(f.endswith(".pt") for f in files)  # 4 directions, base prompt, negative; no .tmp

    def boom(*args, **kwargs):
        raise AssertionError("the text encoder was loaded although every prompt is cached")

    monkeypatch.setattr(transformers.CLIPTextModel, "from_pretrained", boom)
    again = processor(tiny_sd_path, cache_dir, prompt="a photo of a dog", negative_prompt="ugly, blurry",
                      prompt_back="the back of a dog")
    assert again.encoded_prompts == []
    assert torch.equal(again().text_embeddings_vd, utils.text_embeddings_vd)


def test_cache_key_and_corrupt_entries(tiny_sd_path, tmp_path):
    first = processor(tiny_sd_path, tmp_path, prompt="a cat", view_dependent_prompting=False)
    assert len(first.encoded_prompts) == 6
    # a corrupt file is a miss: re-encoded and rewritten, not a crash
    victim = first.cache.path("a cat, front view")
    victim.write_bytes(b"not a torch file")
    second = processor(tiny_sd_path, tmp_path, prompt="a cat", view_dependent_prompting=False)
    assert second.encoded_prompts == ["a cat, front view"]
    assert torch.equal(second().text_embeddings_vd, first().text_embeddings_vd)
    # the key holds the model: another model never reads these entries
    other = TextEmbeddingCache(tmp_path, "another-model|0")
    assert other.path("a cat") != first.cache.path("a cat") and other.load("a cat") is None


def test_cache_is_safe_when_shared(tmp_path):
    """Writers racing on one entry while a reader reads: the reader sees a whole entry or none."""
    cache = TextEmbeddingCache(tmp_path, "model|x")
    errors, seen = [], []

    def write(i):
        for _ in range(20):
            cache.save("same prompt", torch.full((77, 8), float(i)))

    def read():
        for _ in range(200):
            try:
                emb = cache.load("same prompt")
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
                return
            if emb is not None:
                seen.append(emb)
                assert emb.shape == (77, 8) and bool((emb == emb[0, 0]).all())  # one writer's tensor

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)] + [threading.Thread(target=read)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert [p.name for p in tmp_path.iterdir()] == [cache.path("same prompt").name]  # no temporary left


def test_text_encoder_is_released(tiny_sd_path, tmp_path, monkeypatch):
    import transformers

    refs = []
    original = transformers.CLIPTextModel.from_pretrained.__func__

    def tracking(cls, *args, **kwargs):
        model = original(cls, *args, **kwargs)
        refs.append(weakref.ref(model))
        return model

    monkeypatch.setattr(transformers.CLIPTextModel, "from_pretrained", classmethod(tracking))
    proc = processor(tiny_sd_path, tmp_path, prompt="a robot")
    gc.collect()
    assert len(refs) == 1 and refs[0]() is None
    assert not any(isinstance(v, torch.nn.Module) for v in vars(proc).values())


def test_config_errors(tiny_sd_path):
    from lift3d.config import parse_structured

    def check(**cfg):
        merged = {"pretrained_model_name_or_path": str(tiny_sd_path), "prompt": "a cat", **cfg}
        StableDiffusionPromptProcessor.validate_config(parse_structured(StableDiffusionPromptProcessor.Config, merged))

    check()
    with pytest.raises(ConfigError, match="prompt is not set"):
        check(prompt="")
    with pytest.raises(ConfigError, match="ambiguous"):
        check(prompt="lib:hamburger")
    check(use_perp_neg=True)  # Perp-Neg (tests/test_perp_neg.py)
    with pytest.raises(ConfigError, match="use_perp_neg=true needs view-dependent prompts"):
        check(use_perp_neg=True, view_dependent_prompting=False)
    with pytest.raises(ConfigError, match="perp_neg_f_sb"):
        check(perp_neg_f_sb=[1.0, 0.5])
    with pytest.raises(ConfigError, match="system.prompt_processor.pretrained_model_name_or_path"):
        check(pretrained_model_name_or_path="nonexistent-org/nothing-here")
