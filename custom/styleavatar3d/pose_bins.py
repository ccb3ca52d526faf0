"""Yaw / pitch of EG3D camera labels, their fine and coarse bins, and StyleAvatar3D's coarse-to-fine
pose label (arXiv 2305.19012; docs/methods/styleavatar3d.md §"Coarse-to-fine pose-aware discriminator").

Angles are read from the camera centre p of the label's cam2world (lift3d.gan.camera_label), in a frame
given by the scene's `up` axis and its `front` axis (the direction a frontal camera sits in):

    yaw   = atan2(p·(up × front), p·front)   in degrees, (-180, 180], 0 = frontal
    pitch = asin(p·up / |p|)                 in degrees, [-90, 90], > 0 = camera above

lift3d's toy world (z up, azimuth 0 on +x) has up = (0,0,1), front = (1,0,0): yaw = azimuth, pitch =
elevation. EG3D's FFHQ labels (y up, faces looking at +z) have up = (0,1,0), front = (0,0,1).

Bins split [lo, hi] into n equal left-closed intervals [lo + k·Δ, lo + (k+1)·Δ); values outside the range
(and hi itself) go to the nearest end bin. The pose label of an image is
[fine yaw one-hot (Fy) | fine pitch one-hot (Fp) | coarse yaw one-hot (Cy) | coarse pitch one-hot (Cp)]
with either the fine half or the coarse half zeroed: the fine half is kept with probability p_h for a
confident (near-frontal, |yaw| <= confident_yaw_deg) view and p_l for the others, where the generated
data's pose is less reliable (the paper's back views).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.gan.camera_label import split_label


def yaw_pitch_from_labels(labels: Tensor, up: Sequence[float] = (0.0, 0.0, 1.0),
                          front: Sequence[float] = (1.0, 0.0, 0.0)) -> tuple[Tensor, Tensor]:
    """labels [B,25] -> (yaw [B], pitch [B]) in degrees (see the module docstring for the frame)."""
    cam2world, _ = split_label(labels)
    p = cam2world[:, :3, 3]  # [B,3] camera centres
    up_t = F.normalize(torch.as_tensor(up, dtype=p.dtype, device=p.device), dim=0)
    front_t = torch.as_tensor(front, dtype=p.dtype, device=p.device)
    front_t = F.normalize(front_t - (front_t @ up_t) * up_t, dim=0)  # orthogonal to up
    side = torch.linalg.cross(up_t, front_t, dim=0)
    yaw = torch.rad2deg(torch.atan2(p @ side, p @ front_t))
    pitch = torch.rad2deg(torch.asin((p @ up_t / p.norm(dim=-1).clamp_min(1e-8)).clamp(-1.0, 1.0)))
    return yaw, pitch


def bin_index(values: Tensor, lo: float, hi: float, n_bins: int) -> Tensor:
    """values [B] -> long bin indices [B] in 0..n_bins-1 of n equal left-closed bins over [lo, hi]."""
    k = torch.floor((values - lo) / (hi - lo) * n_bins).long()
    return k.clamp(0, n_bins - 1)


@dataclass
class PoseBinning:
    """Numbers of bins and ranges of the coarse-to-fine pose label (all configurable)."""
    fine_yaw_bins: int = 36  # 10° bins over [-180, 180]
    fine_pitch_bins: int = 6  # 10° bins over [-30, 30]
    coarse_yaw_bins: int = 4  # front / sides / back quadrants (90° bins)
    coarse_pitch_bins: int = 2  # below / above
    yaw_range: tuple[float, float] = (-180.0, 180.0)
    pitch_range: tuple[float, float] = (-30.0, 30.0)
    p_high: float = 0.9  # P(fine) for confident views
    p_low: float = 0.3  # P(fine) for the others
    confident_yaw_deg: float = 45.0  # |yaw| <= this is confident (near-frontal)

    @property
    def fine_dim(self) -> int:
        return self.fine_yaw_bins + self.fine_pitch_bins

    @property
    def dim(self) -> int:
        return self.fine_dim + self.coarse_yaw_bins + self.coarse_pitch_bins

    def validate(self, path: str) -> None:
        for key in ("fine_yaw_bins", "fine_pitch_bins", "coarse_yaw_bins", "coarse_pitch_bins"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{path}.{key} = {getattr(self, key)} must be >= 1.")
        for key in ("yaw_range", "pitch_range"):
            rng = list(getattr(self, key))
            if len(rng) != 2 or not rng[0] < rng[1]:
                raise ConfigError(f"{path}.{key} = {rng}: give [low, high] in degrees with low < high.")
        for key in ("p_high", "p_low"):
            if not 0.0 <= float(getattr(self, key)) <= 1.0:
                raise ConfigError(f"{path}.{key} = {getattr(self, key)} must lie in [0, 1].")
        if self.confident_yaw_deg < 0:
            raise ConfigError(f"{path}.confident_yaw_deg = {self.confident_yaw_deg} must be >= 0.")

    def one_hots(self, yaw: Tensor, pitch: Tensor) -> tuple[Tensor, Tensor]:
        """(fine [B, Fy+Fp], coarse [B, Cy+Cp]) one-hot blocks of yaw / pitch [B] in degrees."""
        (ylo, yhi), (plo, phi) = self.yaw_range, self.pitch_range
        fine = torch.cat([F.one_hot(bin_index(yaw, ylo, yhi, self.fine_yaw_bins), self.fine_yaw_bins),
                          F.one_hot(bin_index(pitch, plo, phi, self.fine_pitch_bins), self.fine_pitch_bins)], 1)
        coarse = torch.cat([F.one_hot(bin_index(yaw, ylo, yhi, self.coarse_yaw_bins), self.coarse_yaw_bins),
                            F.one_hot(bin_index(pitch, plo, phi, self.coarse_pitch_bins), self.coarse_pitch_bins)], 1)
        return fine.to(yaw.dtype), coarse.to(yaw.dtype)

    def fine_probability(self, yaw: Tensor) -> Tensor:
        """[B] probability of keeping the fine label: p_high for confident views, p_low otherwise."""
        confident = yaw.abs() <= self.confident_yaw_deg
        return torch.where(confident, torch.full_like(yaw, self.p_high), torch.full_like(yaw, self.p_low))

    def sample_labels(self, yaw: Tensor, pitch: Tensor, generator: Optional[torch.Generator] = None
                      ) -> tuple[Tensor, Tensor]:
        """(pose labels [B, dim], keep_fine [B] bool): one of the fine / coarse blocks per image, the other 0."""
        fine, coarse = self.one_hots(yaw, pitch)
        u = torch.rand(yaw.shape, generator=generator, device=yaw.device if generator is None else generator.device)
        keep_fine = u.to(yaw.device) < self.fine_probability(yaw)
        kf = keep_fine[:, None].to(yaw.dtype)
        return torch.cat([fine * kf, coarse * (1 - kf)], dim=1), keep_fine
