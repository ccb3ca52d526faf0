"""Shared regularizers, each switched on by `system.loss.lambda_<name>` > 0 (docs/DESIGN.md).

Each takes the renderer's output dict and returns a scalar. `needs` names the render outputs it
reads, so a config that asks for a regularizer its renderer cannot feed fails with a clear error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from lift3d.errors import ConfigError


@dataclass(frozen=True)
class Regularizer:
    name: str
    fn: Callable[[dict], torch.Tensor]
    needs: tuple[str, ...]
    doc: str


def _sparsity(out: dict) -> torch.Tensor:
    # smooth L1-like penalty on accumulated opacity: sqrt(o^2 + 0.01), mean over pixels
    return (out["opacity"] ** 2 + 0.01).sqrt().mean()


def _opaque(out: dict) -> torch.Tensor:
    # binary entropy of the opacity: pushes every pixel to fully empty or fully opaque
    o = out["opacity"].clamp(1e-3, 1.0 - 1e-3)
    return F.binary_cross_entropy(o, o)


def _orient(out: dict) -> torch.Tensor:
    # DreamFusion's orientation loss: penalise normals facing away from the camera, weighted by
    # the (detached) sample weights: sum w * relu(n . d)^2, with d the ray direction
    w, n, d = out["weights"].detach(), out["normal"], out["t_dirs"]  # [S,1], [S,3], [S,3]
    per_sample = w * F.relu((n * d).sum(-1, keepdim=True)) ** 2
    return per_sample.sum() / max(int((out["opacity"] > 0).sum()), 1)


def _z_variance(out: dict) -> torch.Tensor:
    # variance of the depth along each opaque ray: encourages a thin surface
    opaque = out["opacity"] > 0.5
    if not bool(opaque.any()):
        return out["z_variance"].sum() * 0.0
    return out["z_variance"][opaque].mean()


def _normal_consistency(out: dict) -> torch.Tensor:
    return out["mesh"].normal_consistency()


def _laplacian_smoothness(out: dict) -> torch.Tensor:
    return out["mesh"].laplacian_loss()


def _normal_smooth(out: dict) -> torch.Tensor:
    # threestudio's zero123 2D normal smoothness: squared differences of vertically and horizontally
    # neighbouring pixels of the normal map comp_normal [B,H,W,3], each averaged
    n = out["comp_normal"]
    return (n[:, 1:] - n[:, :-1]).square().mean() + (n[:, :, 1:] - n[:, :, :-1]).square().mean()


def _normal_smooth_3d(out: dict) -> torch.Tensor:
    # threestudio's zero123 3D normal smoothness: |n(x) - n(x + N(0, 0.01^2))|, mean over samples and axes
    return (out["normal"] - out["normal_perturb"]).abs().mean()


def _eikonal(out: dict) -> torch.Tensor:
    # |grad sdf| = 1 on the sampled points
    return ((out["sdf_grad"].norm(dim=-1) - 1.0) ** 2).mean()


REGULARIZERS: dict[str, Regularizer] = {
    r.name: r
    for r in (
        Regularizer("sparsity", _sparsity, ("opacity",), "mean sqrt(opacity^2 + 0.01)"),
        Regularizer("opaque", _opaque, ("opacity",), "binary entropy of opacity"),
        Regularizer("orient", _orient, ("weights", "normal", "t_dirs", "opacity"), "normals face the camera"),
        Regularizer("z_variance", _z_variance, ("z_variance", "opacity"), "depth variance on opaque rays"),
        Regularizer("normal_consistency", _normal_consistency, ("mesh",), "1 - cos between adjacent faces"),
        Regularizer("laplacian_smoothness", _laplacian_smoothness, ("mesh",), "uniform Laplacian of vertices"),
        Regularizer("eikonal", _eikonal, ("sdf_grad",), "(|grad sdf| - 1)^2"),
        Regularizer("normal_smooth", _normal_smooth, ("comp_normal",), "2D normal map smoothness (renderer.return_comp_normal)"),
        Regularizer("3d_normal_smooth", _normal_smooth_3d, ("normal", "normal_perturb"),
                    "normals at jittered points agree (renderer.return_normal_perturb)"),
    )
}


def compute_regularizers(out: dict, lambdas: dict[str, float]) -> dict[str, torch.Tensor]:
    """Evaluate each regularizer whose lambda is > 0 now; returns {"loss_<name>": value}."""
    terms = {}
    for name, reg in REGULARIZERS.items():
        if lambdas.get(name, 0.0) <= 0.0:
            continue
        missing = [k for k in reg.needs if k not in out]
        if missing:
            raise ConfigError(
                f"system.loss.lambda_{name} > 0 but the renderer does not output {missing}: "
                f"set lambda_{name} to 0 or use a renderer/geometry that provides them."
            )
        terms[f"loss_{name}"] = reg.fn(out)
    return terms
