"""GAN objectives (StyleGAN2 arXiv 1912.04958 Appendix B; EG3D arXiv 2112.07945 §4.2 and supplement).

- non-saturating logistic loss: L_G = E[softplus(-D(G(z)))], L_D = E[softplus(D(G(z)))] + E[softplus(-D(x))];
- R1 (Mescheder et al. 2018): (γ/2) E[‖∇_x D(x)‖²] on reals; "lazy regularisation" (StyleGAN2 §B):
  evaluated every N D steps and multiplied by N so that its average weight is unchanged;
- density regularisation (EG3D supplement, "density regularization"): σ at random points of the
  tri-plane box and at the same points moved by a small Gaussian offset should agree, L1.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def generator_loss(fake_logits: Tensor) -> Tensor:
    """fake_logits [B,1] -> scalar E[softplus(-D(G(z)))]."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """[B,1], [B,1] -> scalar E[softplus(D(G(z)))] + E[softplus(-D(x))]."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_penalty(real_logits: Tensor, real_inputs: Sequence[Tensor]) -> Tensor:
    """E_batch[Σ ‖∂ΣD/∂x‖²] over every input the logits were computed from (the image, and the raw
    image under dual discrimination; each [B,...] with requires_grad) -> scalar, with create_graph so
    the penalty can be minimised. Multiply by γ/2 (and N when lazy) for the loss."""
    grads = torch.autograd.grad(real_logits.sum(), list(real_inputs), create_graph=True)
    return sum(g.square().flatten(1).sum(1) for g in grads).mean()


def density_regularization(query_density: Callable[[Tensor], Tensor], batch: int, n_points: int, box_warp: float,
                           offset_std: float, device: torch.device) -> Tensor:
    """mean |σ(p) - σ(p + ε)| with p ~ U(box) [B,n_points,3], ε ~ N(0, offset_std²).
    `query_density(points [B,P,3]) -> σ [B,P,1]`."""
    points = (torch.rand(batch, n_points, 3, device=device) - 0.5) * box_warp
    moved = points + torch.randn_like(points) * offset_std
    sigma = query_density(torch.cat([points, moved], dim=1))  # [B,2P,1]
    return (sigma[:, :n_points] - sigma[:, n_points:]).abs().mean()
