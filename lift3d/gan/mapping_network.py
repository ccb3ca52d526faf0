"""The mapping network z (+ camera label c) -> w (StyleGAN2 arXiv 1912.04958 §2; EG3D arXiv 2112.07945
§4.2 "generator pose conditioning": G is conditioned on the camera label through its mapping network).

EG3D names: `mapping.embed` (c -> w_dim), `mapping.fc{i}`, buffer `mapping.w_avg`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from lift3d.gan.layers import FullyConnectedLayer


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    """x [B, D] scaled so that mean(x²) over D is 1 (StyleGAN's pixel norm of z)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


class MappingNetwork(nn.Module):
    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, num_layers: int = 2, lr_mul: float = 0.01,
                 w_avg_beta: float = 0.998) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.w_avg_beta = w_avg_beta
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, w_dim)
        features = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * num_layers
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], activation=True, lr_mul=lr_mul))
        self.num_layers = num_layers
        self.register_buffer("w_avg", torch.zeros(w_dim))  # running mean of w (truncation trick)

    def forward(self, z: Tensor | None, c: Tensor | None = None, truncation_psi: float = 1.0,
                update_w_avg: bool = False) -> Tensor:
        """z [B, z_dim] (None when z_dim = 0: the discriminator's label mapping), c [B, c_dim] -> ws [B, num_ws, w_dim] (one w broadcast to every layer)."""
        parts = [normalize_2nd_moment(z)] if self.z_dim > 0 else []
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this mapping network is camera-conditioned: pass c [B, {self.c_dim}]")
            parts.append(normalize_2nd_moment(self.embed(c)))
        x = torch.cat(parts, dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)  # [B, w_dim]
        if update_w_avg:
            self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1.0:
            x = self.w_avg.lerp(x, truncation_psi)
        return x[:, None, :].expand(-1, self.num_ws, -1)
