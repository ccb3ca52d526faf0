"""The procedural toy-world dataset: renders of coloured shapes from random cameras, with captions and masks.

Every object of the catalogue (shapes.py) is rendered from `views_per_object` cameras drawn with
the conventions' camera model: elevation U[-10°, 45°], azimuth U[-180°, 180°), distance
U[1.8, 2.2], fovy 40° (what configs/demo/*.yaml sample during distillation). Captions are the
object's prompt with the view-direction suffix lift3d's prompt processor appends
("a red cube, front view"; lift3d/prompt/directions.py, default thresholds), so the prior learns
the same prompts it is later queried with.

    python -m tools.toyworld.dataset --out toyworld.npz [--views-per-object 160 --size 32 --seed 0]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lift3d.prompt.directions import DIRECTION_NAMES, direction_indices, make_directions, view_prompt
from tools.toyworld.render import render_shape
from tools.toyworld.shapes import caption, shape_names_and_colours

ELEVATION_RANGE = (-10.0, 45.0)
DISTANCE_RANGE = (1.8, 2.2)
FOVY_DEG = 40.0


@dataclass
class ToyDataset:
    """All renders of the toy world (N = objects × views_per_object)."""

    images: torch.Tensor  # [N,S,S,3] float in [0,1], composited on white
    masks: torch.Tensor  # [N,S,S,1] float in [0,1]
    elevation: torch.Tensor  # [N] degrees
    azimuth: torch.Tensor  # [N] degrees in [-180, 180)
    distance: torch.Tensor  # [N]
    object_index: torch.Tensor  # [N] long, index into `objects`
    objects: list  # [(shape, colour)]

    @property
    def views_per_object(self) -> int:
        return int(len(self.images) // len(self.objects))

    def prompts(self) -> list[str]:
        """Object prompt per image, without a view suffix."""
        return [caption(*self.objects[i]) for i in self.object_index.tolist()]

    def view_captions(self) -> list[str]:
        """Object prompt with the view-direction suffix of each image's camera."""
        idx = direction_indices(make_directions(), self.elevation, self.azimuth, self.distance)
        return [view_prompt(p, DIRECTION_NAMES[d]) for p, d in zip(self.prompts(), idx.tolist())]

    def save(self, path: str | Path) -> None:
        np.savez_compressed(
            path,
            images=(self.images * 255).round().byte().numpy(), masks=(self.masks * 255).round().byte().numpy(),
            elevation=self.elevation.numpy(), azimuth=self.azimuth.numpy(), distance=self.distance.numpy(),
            object_index=self.object_index.numpy(), objects=np.array(["/".join(o) for o in self.objects]),
        )

    @classmethod
    def load(cls, path: str | Path) -> "ToyDataset":
        d = np.load(path)
        return cls(
            images=torch.from_numpy(d["images"]).float() / 255, masks=torch.from_numpy(d["masks"]).float() / 255,
            elevation=torch.from_numpy(d["elevation"]), azimuth=torch.from_numpy(d["azimuth"]),
            distance=torch.from_numpy(d["distance"]), object_index=torch.from_numpy(d["object_index"]),
            objects=[tuple(o.split("/")) for o in d["objects"].tolist()],
        )


def sample_cameras(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(elevation [n], azimuth [n], distance [n]) drawn from the toy world's camera distribution."""
    u = torch.rand(3, n, generator=generator)
    elevation = ELEVATION_RANGE[0] + (ELEVATION_RANGE[1] - ELEVATION_RANGE[0]) * u[0]
    azimuth = -180.0 + 360.0 * u[1]
    distance = DISTANCE_RANGE[0] + (DISTANCE_RANGE[1] - DISTANCE_RANGE[0]) * u[2]
    return elevation, azimuth, distance


def generate(views_per_object: int = 160, size: int = 32, seed: int = 0, objects=None) -> ToyDataset:
    """Render every object (default: the whole catalogue) from `views_per_object` random cameras."""
    objects = list(objects or shape_names_and_colours())
    g = torch.Generator().manual_seed(seed)
    parts = []
    for k, (shape, colour) in enumerate(objects):
        ele, azi, dist = sample_cameras(views_per_object, g)
        rgb, mask = render_shape(shape, colour, ele, azi, dist, torch.full_like(ele, FOVY_DEG), size)
        parts.append((rgb, mask, ele, azi, dist, torch.full((views_per_object,), k, dtype=torch.long)))
    cat = [torch.cat(p) for p in zip(*parts)]
    return ToyDataset(*cat, objects=objects)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.toyworld.dataset", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--views-per-object", type=int, default=160)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    data = generate(args.views_per_object, args.size, args.seed)
    data.save(args.out)
    print(f"wrote {len(data.images)} renders of {len(data.objects)} objects to {args.out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
