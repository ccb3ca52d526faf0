"""Relative-camera embeddings that condition Zero-1-to-3 and Stable Zero123 (docs/methods/usd.md §2).

Zero-1-to-3 describes the target view relative to the reference view in spherical coordinates:

    T = [Δpolar, sin Δazimuth, cos Δazimuth, Δradius]                 (Zero-1-to-3, Zero-1-to-3 XL)
    T = [Δpolar, sin Δazimuth, cos Δazimuth, polar_reference]         (Stable Zero123)

Angles are in radians. polar = 90° − elevation (0 at the north pole, z-up world), so Δpolar =
polar_target − polar_reference = elevation_reference − elevation_target. Azimuth follows lift3d's
camera convention (degrees in the helpers, 0 = +x); only its difference enters.
"""

from __future__ import annotations

from typing import Union

import torch

Number = Union[float, int, torch.Tensor]


def _as_batch(*values: Number) -> list[torch.Tensor]:
    """Turns scalars / tensors into float tensors broadcast to one common [B] shape."""
    tensors = [torch.as_tensor(v) for v in values]
    dtype = torch.float32
    for t in tensors:
        if t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    device = next((t.device for t in tensors if t.device.type != "cpu"), torch.device("cpu"))
    tensors = [t.to(device=device, dtype=dtype).reshape(-1) for t in tensors]
    return list(torch.broadcast_tensors(*tensors))


def zero123_camera_embedding(
    delta_polar_rad: Number, delta_azimuth_rad: Number, delta_radius: Number
) -> torch.Tensor:
    """[Δpolar, sin Δaz, cos Δaz, Δradius] -> [B, 4] (Zero-1-to-3 / Zero-1-to-3 XL)."""
    d_polar, d_az, d_radius = _as_batch(delta_polar_rad, delta_azimuth_rad, delta_radius)
    return torch.stack([d_polar, torch.sin(d_az), torch.cos(d_az), d_radius], dim=-1)


def stable_zero123_camera_embedding(
    delta_polar_rad: Number, delta_azimuth_rad: Number, reference_polar_rad: Number
) -> torch.Tensor:
    """[Δpolar, sin Δaz, cos Δaz, polar of the reference view] -> [B, 4] (Stable Zero123)."""
    d_polar, d_az, ref_polar = _as_batch(delta_polar_rad, delta_azimuth_rad, reference_polar_rad)
    return torch.stack([d_polar, torch.sin(d_az), torch.cos(d_az), ref_polar], dim=-1)


def relative_camera_embedding(
    elevation_deg: Number,
    azimuth_deg: Number,
    camera_distance: Number,
    reference_elevation_deg: Number,
    reference_azimuth_deg: Number,
    reference_camera_distance: Number,
    variant: str = "zero123",
) -> torch.Tensor:
    """Camera embedding [B, 4] of target views given in lift3d's batch convention (degrees).

    variant: "zero123" (4th entry Δradius) or "stable-zero123" (4th entry = reference polar, rad).
    Every argument may be a scalar or a [B] tensor; per-sample references are allowed.
    """
    elev, az, dist, ref_elev, ref_az, ref_dist = _as_batch(
        elevation_deg, azimuth_deg, camera_distance,
        reference_elevation_deg, reference_azimuth_deg, reference_camera_distance,
    )
    d_polar = torch.deg2rad((90.0 - elev) - (90.0 - ref_elev))  # [B]
    d_az = torch.deg2rad(az - ref_az)  # [B]
    if variant == "zero123":
        return zero123_camera_embedding(d_polar, d_az, dist - ref_dist)
    if variant == "stable-zero123":
        return stable_zero123_camera_embedding(d_polar, d_az, torch.deg2rad(90.0 - ref_elev))
    raise ValueError(f"unknown camera embedding variant {variant!r}; expected 'zero123' or 'stable-zero123'")


__all__ = [
    "zero123_camera_embedding",
    "stable_zero123_camera_embedding",
    "relative_camera_embedding",
]
