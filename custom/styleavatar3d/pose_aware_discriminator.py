"""`pose-aware-discriminator`: StyleAvatar3D's coarse-to-fine pose-aware discriminator (arXiv 2305.19012;
docs/methods/styleavatar3d.md). lift3d's camera-conditioned discriminator (lift3d/gan/discriminator.py,
EG3D's projection discriminator) whose conditioning is not the 25-D camera label itself but a one-hot pose
label made from it: yaw / pitch binned finely and coarsely, one of the two blocks kept per image and the
other zeroed (custom/styleavatar3d/pose_bins.py). The fine block is kept with probability p_high for
confident (near-frontal) views and p_low for the others, so D asks for exact poses where the generated
training images' poses are reliable and only for the rough direction where they are not (back views).

Drop-in for gan-system (`system.discriminator_type: pose-aware-discriminator`): the same forward(image, c,
image_raw, augment) with c [B,25]. Each call records `training_stats()` (fraction of fine labels overall,
on confident views and on the others), which gan-system logs as train/D_<name>.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

import torch
import torch.nn as nn
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.gan.discriminator import CameraConditionedDiscriminator
from lift3d.gan.mapping_network import MappingNetwork
from lift3d.registry import register

from .pose_bins import PoseBinning, yaw_pitch_from_labels


class PoseLabelMapping(nn.Module):
    """c [B,25] -> sampled coarse-to-fine pose label [B, dim] -> the projection's cmap [B,1,cmap_dim]."""

    def __init__(self, binning: PoseBinning, up: List[float], front: List[float], cmap_dim: int, num_layers: int) -> None:
        super().__init__()
        self.binning, self.up, self.front = binning, list(up), list(front)
        self.net = MappingNetwork(0, binning.dim, cmap_dim, num_ws=1, num_layers=num_layers, lr_mul=1.0)
        self.stats: dict[str, float] = {}

    def pose_labels(self, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """c [B,25] -> (pose labels [B,dim], keep_fine [B], confident [B])."""
        yaw, pitch = yaw_pitch_from_labels(c.float(), self.up, self.front)
        labels, keep_fine = self.binning.sample_labels(yaw, pitch)
        return labels.to(c.dtype), keep_fine, yaw.abs() <= self.binning.confident_yaw_deg

    def forward(self, z: None, c: Tensor) -> Tensor:
        labels, keep_fine, confident = self.pose_labels(c)
        kf = keep_fine.float()
        self.stats = {"pose_fine_fraction": float(kf.mean()), "pose_confident_fraction": float(confident.float().mean())}
        if confident.any():
            self.stats["pose_fine_fraction_confident"] = float(kf[confident].mean())
        if (~confident).any():
            self.stats["pose_fine_fraction_other"] = float(kf[~confident].mean())
        return self.net(None, labels)


@register("pose-aware-discriminator")
class PoseAwareDiscriminator(CameraConditionedDiscriminator):
    @dataclass
    class Config(CameraConditionedDiscriminator.Config):
        fine_yaw_bins: int = 36
        fine_pitch_bins: int = 6
        coarse_yaw_bins: int = 4
        coarse_pitch_bins: int = 2
        yaw_range: List[float] = field(default_factory=lambda: [-180.0, 180.0])
        pitch_range: List[float] = field(default_factory=lambda: [-30.0, 30.0])
        p_high: float = 0.9  # P(fine label) for confident (near-frontal) views
        p_low: float = 0.3  # P(fine label) for the other views
        confident_yaw_deg: float = 45.0
        up: List[float] = field(default_factory=lambda: [0.0, 0.0, 1.0])  # scene up (toy world: z)
        front: List[float] = field(default_factory=lambda: [1.0, 0.0, 0.0])  # where a frontal camera sits

    @staticmethod
    def binning_of(cfg: Any) -> PoseBinning:
        return PoseBinning(int(cfg.fine_yaw_bins), int(cfg.fine_pitch_bins), int(cfg.coarse_yaw_bins),
                           int(cfg.coarse_pitch_bins), tuple(cfg.yaw_range), tuple(cfg.pitch_range),
                           float(cfg.p_high), float(cfg.p_low), float(cfg.confident_yaw_deg))

    @classmethod
    def validate_config(cls, cfg: Any, path: str) -> None:
        super().validate_config(cfg, path)
        cls.binning_of(cfg).validate(path)
        for key in ("up", "front"):
            vec = list(cfg[key])
            if len(vec) != 3 or sum(v * v for v in vec) < 1e-12:
                raise ConfigError(f"{path}.{key} = {vec}: give a non-zero 3-vector, e.g. [0, 0, 1].")
        up, front = torch.tensor(list(cfg.up)), torch.tensor(list(cfg.front))
        if torch.linalg.cross(up, front).norm() < 1e-6 * up.norm() * front.norm():
            raise ConfigError(f"{path}.front = {list(cfg.front)} is parallel to {path}.up = {list(cfg.up)}: "
                              f"give the horizontal direction of a frontal camera.")

    def configure(self) -> None:
        super().configure()
        # replace the 25-D label mapping by the pose-label one (same output: [B,1,cmap_dim])
        self.mapping = PoseLabelMapping(self.binning_of(self.cfg), self.cfg.up, self.cfg.front, self.cfg.cmap_dim,
                                        self.cfg.mapping_layers)

    def training_stats(self) -> dict[str, float]:
        """Fractions of fine labels of the last call (logged by gan-system as train/D_<key>)."""
        return dict(self.mapping.stats)
