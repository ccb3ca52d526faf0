"""A toy pose-labelled dataset in EG3D's format: renders of one toy-world shape at random cameras.

    <out>/img00000000.png ...   RGB on white, size × size
    <out>/dataset.json          {"labels": [[filename, [25 floats]], ...]}  (lift3d.gan.camera_label:
                                16 OpenCV cam2world + 9 normalised intrinsics)

Cameras: elevation U[elevation_range], azimuth U[-180°, 180°), fixed distance (as EG3D's fixed
radius) and vertical field of view, looking at the origin, world z up (the toy world's convention).

    python -m tools.toyworld.eg3d_dataset --out load/gan/toy-cube --shape cube --colour red --n 64 --size 32
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lift3d.gan.camera_label import make_label, normalized_intrinsics, opengl_to_opencv_c2w
from tools.toyworld.render import camera_matrices, render_shape

TOY_DISTANCE = 2.0
TOY_FOVY_DEG = 40.0


def write_toy_eg3d_dataset(out: str | Path, shape: str = "cube", colour: str = "red", n_images: int = 64,
                           size: int = 32, seed: int = 0, elevation_range: tuple[float, float] = (0.0, 30.0),
                           distance: float = TOY_DISTANCE, fovy_deg: float = TOY_FOVY_DEG) -> Path:
    """Render `n_images` views of `colour` `shape` and write them with dataset.json; returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    elevation = torch.rand(n_images, generator=g) * (elevation_range[1] - elevation_range[0]) + elevation_range[0]
    azimuth = torch.rand(n_images, generator=g) * 360.0 - 180.0
    dist = torch.full((n_images,), float(distance))
    fovy = torch.full((n_images,), float(fovy_deg))
    rgb, _mask = render_shape(shape, colour, elevation, azimuth, dist, fovy, size)  # [N,S,S,3]
    c2w_gl, _ = camera_matrices(elevation, azimuth, dist, fovy)
    labels = make_label(opengl_to_opencv_c2w(c2w_gl), normalized_intrinsics(fovy_deg, n_images))  # [N,25]
    entries = []
    for i in range(n_images):
        name = f"img{i:08d}.png"
        Image.fromarray((rgb[i].numpy() * 255.0 + 0.5).astype(np.uint8)).save(out / name)
        entries.append([name, [float(v) for v in labels[i]]])
    (out / "dataset.json").write_text(json.dumps({"labels": entries}))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--shape", default="cube")
    parser.add_argument("--colour", default="red")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_toy_eg3d_dataset(args.out, args.shape, args.colour, args.n, args.size, args.seed)
    print(f"wrote {args.n} images + dataset.json to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
