"""The frozen-model refactor (issue #13) changed no guidance gradient.

tests/data/guidance_golden.pt holds the gradients that SD, Zero-1-to-3, USD text, USD image (with its
reference-view term) and X-Dreamer (coarse and fine phases, AMA on, CG-LoRA active) gave on the tiny
models before the refactor (tests/guidance_golden.py). The same inputs through today's code must give
the same gradients; the SD family runs with `cfg_form: standard`, the form the old code had.
"""
from __future__ import annotations

import pytest
import torch

from tests.guidance_golden import GOLDEN, compute

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def values(tiny_sd_path, tiny_zero123_path, tmp_path_factory):
    return compute(tiny_sd_path, tiny_zero123_path, str(tmp_path_factory.mktemp("golden-cache")), {"cfg_form": "standard"})


@pytest.mark.parametrize("name", sorted(torch.load(GOLDEN)))
def test_gradient_unchanged_by_the_refactor(values, name):
    expected = torch.load(GOLDEN)[name]
    got = values[name]
    assert got.shape == expected.shape
    scale = expected.abs().max().clamp_min(1e-12)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(scale)), (
        f"{name}: max |diff| {float((got - expected).abs().max()):.3g} (max |g| {float(scale):.3g})")
