"""Trial folder names (#21): safe, bounded, readable and unique for any prompt; a prompt longer
than the text encoder's window is reported."""
import logging

import pytest

from lift3d.utils.paths import TAG_MAX_BYTES, reserve_trial_dir, safe_tag


@pytest.mark.parametrize("tag", [
    "a_DSLR_photo_of_a_pineapple", "x" * 1000, "é" * 400, "../../etc/passwd", "", "   ", ".hidden",
    "a/b\\c:d*e?f\"g<h>i|j", "日本語のプロンプト" * 30, "emoji 🍍" * 50, "nul\x00byte", "new\nline",
])
def test_safe_tag_is_a_bounded_single_safe_name(tag, tmp_path):
    name = safe_tag(tag)
    assert 0 < len(name.encode()) <= TAG_MAX_BYTES
    assert "/" not in name and "\\" not in name and "\x00" not in name and not name.startswith(".")
    (tmp_path / (name + "@20260101-000000")).mkdir()  # the file system accepts it


def test_safe_tag_keeps_readable_prompts_and_separates_long_ones():
    assert safe_tag("a_DSLR_photo_of_a_pineapple") == "a_DSLR_photo_of_a_pineapple"
    assert safe_tag("a cat, sitting") == "a_cat,_sitting"
    long_a, long_b = "a" * 300 + " one", "a" * 300 + " two"
    assert safe_tag(long_a) != safe_tag(long_b)  # the cut names differ by the digest of the full prompt
    assert safe_tag(long_a).startswith("a" * 50)


def test_two_runs_in_the_same_second_get_two_folders(tmp_path):
    first = reserve_trial_dir(tmp_path / "exp", "tag@20260101-000000")
    second = reserve_trial_dir(tmp_path / "exp", "tag@20260101-000000")
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name == "tag@20260101-000000-2"


def test_a_prompt_longer_than_the_tokenizer_window_is_reported(tiny_sd_path, caplog):
    from transformers import CLIPTokenizer

    from lift3d.prompt.stable_diffusion import warn_truncated_prompts

    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_sd_path), subfolder="tokenizer")
    short, long = "a cat", " ".join(["a red cat"] * 40)
    with caplog.at_level(logging.WARNING):
        assert warn_truncated_prompts(tokenizer, [short, long], 77) == [long]
    assert "more than the text encoder's 77" in caplog.text and "Shorten system.prompt_processor.prompt" in caplog.text
