"""Regenerate the toy-world reference image of configs/demo/image-to-3d.yaml.

    python load/images/make_toy_images.py

* toy_yellow_cone_rgba.png (128×128 RGBA): the toy world's yellow cone (tools/toyworld/shapes.py)
  seen from elevation 15°, azimuth 0°, distance 2.0, vertical fov 40° — the data.default_* values
  of the demo config — shaded as the toy priors were trained (tools/toyworld/render.py), straight
  colour, antialiased alpha, transparent background.
"""
from __future__ import annotations

import os
import sys

import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tools.toyworld.render import render_shape_rgba  # noqa: E402

# (file, shape, colour, elevation, azimuth, distance, fovy, size)
IMAGES = [("toy_yellow_cone_rgba.png", "cone", "yellow", 15.0, 0.0, 2.0, 40.0, 128)]


def write_toy_image(out: str, shape: str, colour: str, elevation: float, azimuth: float, distance: float,
                    fovy: float, size: int) -> None:
    """One toy-world object as an RGBA PNG (also benchmarks/toyworld.py --image's reference images)."""
    one = lambda x: torch.tensor([float(x)])  # noqa: E731
    rgba = render_shape_rgba(shape, colour, one(elevation), one(azimuth), one(distance), one(fovy), size,
                             supersample=4)[0]
    Image.fromarray((rgba * 255).round().byte().numpy(), mode="RGBA").save(out, optimize=True)


def main() -> None:
    for name, *view in IMAGES:
        out = os.path.join(HERE, name)
        write_toy_image(out, *view)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
