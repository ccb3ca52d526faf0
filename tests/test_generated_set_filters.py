"""PODIA-3D's optional CLIP filter of the generated set (lift3d/gan/generated_set_filters.py) with a tiny
random CLIPModel saved in the Hugging Face layout and loaded by folder, as a real CLIP id would be."""
import pytest
import torch
import torch.nn.functional as F

from lift3d.gan.generated_set_filters import clip_scores, keep_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    from lift3d.models.tiny_factory import clip_image_processor, write_tokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = write_tokenizer(folder / "tok", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=clip_image_processor(32), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def _images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 32, 32, generator=g)  # [N,3,H,W] in [0,1], the generated set's range


def test_clip_scores_are_the_cosine_of_clips_own_embeddings(tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    images, prompts = _images(), ["a red cube", "a blue sphere", "a green cone"]
    scores = clip_scores(images, prompts, str(tiny_clip), batch_size=2)  # two batches: 2 + 1
    assert scores.shape == (3,)

    model, processor = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)
    pixels = [(im.permute(1, 2, 0) * 255).round().byte().numpy() for im in images]
    inputs = processor(text=prompts, images=pixels, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    expected = F.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)  # [3]: image i with prompt i
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)
    assert float(scores.abs().max()) <= 1.0 + 1e-6


def test_clip_threshold_keeps_exactly_the_images_above_it(tiny_clip):
    scores = clip_scores(_images(), ["a red cube"] * 3, str(tiny_clip))
    threshold = float(scores.median())
    keep = keep_mask(None, 0.0, scores, threshold)
    assert keep.tolist() == (scores >= threshold).tolist() and 1 <= int(keep.sum()) <= 2
    pose = torch.tensor([1.0, 0.0, 1.0])
    both = keep_mask(pose, 0.5, scores, threshold)
    assert both.tolist() == ((pose >= 0.5) & (scores >= threshold)).tolist()


def test_a_missing_clip_folder_is_a_config_error(tmp_path):
    from lift3d.errors import ConfigError

    with pytest.raises(ConfigError, match="clip_model"):
        clip_scores(_images(), ["x"] * 3, str(tmp_path / "no-such-clip"))
