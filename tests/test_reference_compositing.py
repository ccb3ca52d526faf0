"""The reference image of image-to-3D is composited with its continuous alpha (docs/faithfulness.md):
target = rgb * alpha + background * (1 - alpha), as threestudio composites its reference image; the
binary mask (alpha > 0.5) stays the mask-loss target. A half-transparent edge pixel becomes the
blend of object and background, not the object colour (the old alpha > 0.5 cut) or the background.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lift3d.data.image_io import composite, load_rgb_alpha, load_rgba
from lift3d.data.single_image import SingleImageDataModule
from lift3d.systems.lift3d_system import Lift3DSystem

RED = (255, 0, 0)


@pytest.fixture
def edge_image(tmp_path):
    """4x4 RGBA: an opaque red block, a half-transparent (128) and a quarter (64) red edge pixel."""
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[1:3, 1:3] = (*RED, 255)
    arr[0, 1] = (*RED, 128)
    arr[0, 2] = (*RED, 64)
    path = tmp_path / "edge_rgba.png"
    Image.fromarray(arr, "RGBA").save(path)
    return str(path)


def test_a_half_transparent_pixel_composites_to_the_blend(edge_image):
    rgb, alpha = load_rgb_alpha(edge_image, 4, 4)  # no resize: the file's own values
    assert rgb.shape == (4, 4, 3) and alpha.shape == (4, 4, 1)
    a_half, a_quarter = 128 / 255, 64 / 255
    assert float(alpha[0, 1, 0]) == pytest.approx(a_half) and float(alpha[0, 2, 0]) == pytest.approx(a_quarter)
    white = composite(rgb, alpha, torch.ones(3))
    # red over white: (1, 1 - a, 1 - a); the alpha > 0.5 cut gave pure red (1, 0, 0) here
    assert torch.allclose(white[0, 1], torch.tensor([1.0, 1 - a_half, 1 - a_half]), atol=1e-6)
    assert torch.allclose(white[0, 2], torch.tensor([1.0, 1 - a_quarter, 1 - a_quarter]), atol=1e-6)  # cut: white
    assert torch.equal(white[1, 1], torch.tensor([1.0, 0.0, 0.0])) and torch.equal(white[3, 3], torch.ones(3))
    # the mask of mask losses stays binary
    _, mask = load_rgba(edge_image, 4, 4)
    assert mask[..., 0].tolist() == [[0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]


def test_the_reference_batch_and_the_rgb_target_use_the_continuous_alpha(edge_image):
    dm = SingleImageDataModule({"image_path": edge_image, "height": 4, "width": 4, "batch_size": 2,
                                "use_random_camera": False})
    batch = dm.train_dataset.sample()
    assert batch["alpha"].shape == batch["mask"].shape == (2, 4, 4, 1)
    assert float(batch["alpha"][1, 0, 1, 0]) == pytest.approx(128 / 255) and float(batch["mask"][1, 0, 1, 0]) == 1.0
    assert float(batch["alpha"][1, 0, 2, 0]) == pytest.approx(64 / 255) and float(batch["mask"][1, 0, 2, 0]) == 0.0
    # the rgb-loss / USD reference target of lift3d-system, over a rendered background colour
    bg = torch.tensor([0.0, 0.0, 1.0]).expand(2, 4, 4, 3)  # blue
    system = SimpleNamespace(cfg=SimpleNamespace(reference_background="render"))
    target = Lift3DSystem.reference_target(system, batch, {"comp_rgb_bg": bg})
    a = 128 / 255
    assert torch.allclose(target[:, 0, 1], torch.tensor([a, 0.0, 1 - a]).expand(2, 3), atol=1e-6)
    assert torch.allclose(target[:, 1, 1], torch.tensor([1.0, 0.0, 0.0]).expand(2, 3))
    assert torch.allclose(target[:, 3, 3], torch.tensor([0.0, 0.0, 1.0]).expand(2, 3))
