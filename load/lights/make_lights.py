#!/usr/bin/env python
"""Writes the shipped environment maps of load/lights/ (procedural, so no third-party HDRI is needed).

    python load/lights/make_lights.py            # writes load/lights/studio_sky.hdr (256 x 512, RLE)

studio_sky.hdr: an equirectangular (lift3d convention: row 0 = zenith, column 0 = azimuth 0 = +x,
see lift3d.materials.split_sum) linear-radiance sky for pbr-material: a blue zenith fading to a
bright horizon, a darker ground, a sun (elevation 50°, azimuth 35°) with a soft halo, and two
studio softboxes (a warm key on the left, a cool rim at the back) so that metallic and glossy
surfaces show structured reflections from every side. Scaled so that an upward-facing white
Lambertian surface receives E/π ≈ 0.4 (≈ 0.8 with pbr-material's default environment_scale 2).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))


def direction(elevation_deg: float, azimuth_deg: float) -> np.ndarray:
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    return np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])


def studio_sky(H: int = 256) -> np.ndarray:
    W = 2 * H
    theta = (np.arange(H) + 0.5) / H * math.pi
    phi = (np.arange(W) + 0.5) / W * 2.0 * math.pi
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    d = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1)  # [H,W,3]
    z = d[..., 2:3]
    zenith, horizon = np.array([0.18, 0.28, 0.55]), np.array([0.55, 0.58, 0.62])
    ground_near, ground_far = np.array([0.16, 0.14, 0.12]), np.array([0.06, 0.055, 0.05])
    up = np.clip(z, 0.0, 1.0) ** 0.5
    down = np.clip(-z, 0.0, 1.0) ** 0.5
    env = np.where(z >= 0, horizon * (1 - up) + zenith * up, ground_near * (1 - down) + ground_far * down)

    def lobe(center: np.ndarray, radius_deg: float) -> np.ndarray:
        cos = np.clip(d @ center, -1.0, 1.0)
        return np.degrees(np.arccos(cos))[..., None] / radius_deg

    sun = direction(50.0, 35.0)
    ang = lobe(sun, 1.0)
    env = env + np.array([1.0, 0.95, 0.85]) * (60.0 * (ang < 4.0) + 1.5 * np.exp(-0.5 * (ang / 8.0) ** 2))

    def softbox(elevation: float, azimuth: float, half_w: float, half_h: float, colour, power: float) -> np.ndarray:
        c = direction(elevation, azimuth)
        right = np.cross(np.array([0.0, 0.0, 1.0]), c)
        right /= np.linalg.norm(right)
        upv = np.cross(c, right)
        facing = d @ c
        x = np.degrees(np.arctan2(d @ right, facing))
        y = np.degrees(np.arctan2(d @ upv, facing))
        inside = (np.abs(x) < half_w) & (np.abs(y) < half_h) & (facing > 0)
        return inside[..., None] * np.array(colour) * power

    env = env + softbox(20.0, 110.0, 12.0, 18.0, [1.0, 0.85, 0.7], 3.0)
    env = env + softbox(30.0, -150.0, 20.0, 8.0, [0.7, 0.8, 1.0], 2.0)
    return (0.55 * env).astype(np.float32)


def main() -> None:
    from lift3d.utils.hdr_io import write_hdr

    out = HERE / "studio_sky.hdr"
    write_hdr(out, studio_sky())
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
