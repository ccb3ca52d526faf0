"""X-Dreamer's camera encoder: camera parameters -> the feature f that generates CG-LoRA's camera half
of A (docs/methods/xdreamer.md §1).

    f = CameraEncoder(c) = ReLU(W2 ReLU(W1 c + b1) + b2),   c in R^6, f in R^{feature_dim}

with the six inputs (lift3d's camera convention, degrees, azimuth 0 = +x):
    sigmoid(camera position x, y, z),
    (90 − elevation) / 180                      ("normalised −elevation": 0 at the zenith, 1 at the nadir),
    (azimuth + 180) / 360                       (azimuth wrapped to [−180, 180)),
    (fovy − fovy_min) / (fovy_max − fovy_min)   (the data module's fovy range; 25.7–45° in X-Dreamer).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from torch import Tensor

N_CAMERA_INPUTS = 6


def camera_inputs(batch: dict[str, Any], fovy_range_deg: Sequence[float] = (25.7, 45.0)) -> Tensor:
    """The six encoder inputs [B, 6] (float32) from a camera batch (camera_positions [B,3],
    elevation [B], azimuth [B] in degrees, fovy [B] in radians)."""
    pos = torch.as_tensor(batch["camera_positions"]).float()
    device = pos.device
    elevation = torch.as_tensor(batch["elevation"], device=device).float().reshape(-1)
    azimuth = torch.as_tensor(batch["azimuth"], device=device).float().reshape(-1)
    fovy = torch.rad2deg(torch.as_tensor(batch["fovy"], device=device).float().reshape(-1))
    lo, hi = float(fovy_range_deg[0]), float(fovy_range_deg[1])
    azimuth = torch.remainder(azimuth + 180.0, 360.0) - 180.0
    return torch.stack([
        *torch.sigmoid(pos).unbind(-1),
        (90.0 - elevation) / 180.0,
        (azimuth + 180.0) / 360.0,
        (fovy - lo) / max(hi - lo, 1e-6),
    ], dim=-1)


class CameraEncoder(nn.Module):
    """MLP 6 -> hidden_dim -> feature_dim with a ReLU after each layer (512 and 1024 in X-Dreamer)."""

    def __init__(self, feature_dim: int, hidden_dim: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(N_CAMERA_INPUTS, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, feature_dim), nn.ReLU(),
        )
        self.feature_dim = feature_dim

    def forward(self, inputs: Tensor) -> Tensor:
        """inputs [B, 6] -> f [B, feature_dim]."""
        return self.net(inputs)


__all__ = ["CameraEncoder", "N_CAMERA_INPUTS", "camera_inputs"]
