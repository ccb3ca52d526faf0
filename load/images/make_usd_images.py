"""Regenerate the reference images of the USD configs (custom/usd/configs/) by rendering shipped meshes.

    python load/images/make_usd_images.py

* blocks_rgba.png (512×512 RGBA): load/shapes/blocks_union.ply seen from elevation 15°, azimuth 45°,
  distance 1.5, vertical fov 39.6° — USD's reference camera (docs/methods/usd.md §2; the
  data.default_* values of custom/usd/configs/usd-patch.yaml). Same shading and format as
  make_images.py (Lambert + ambient, straight colour, antialiased alpha, transparent background).
  The three parts (red box, yellow sphere, blue handle towards +x) make the shape asymmetric, so
  a reconstruction's orientation can be checked against the mesh.
"""
from __future__ import annotations

import os
import sys

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
for path in (REPO, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

from make_images import render_rgba  # noqa: E402

# (file, mesh, elevation, azimuth, distance, fovy, size)
IMAGES = [("blocks_rgba.png", "blocks_union.ply", 15.0, 45.0, 1.5, 39.6, 512)]


def main() -> None:
    for name, mesh, elevation, azimuth, distance, fovy, size in IMAGES:
        rgba = render_rgba(os.path.join(REPO, "load", "shapes", mesh), size=size, elevation_deg=elevation,
                           azimuth_deg=azimuth, distance=distance, fovy_deg=fovy)
        out = os.path.join(HERE, name)
        Image.fromarray(rgba, mode="RGBA").save(out, optimize=True)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
