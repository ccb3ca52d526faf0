"""Depth and normal losses at the reference view of image-to-3D (threestudio's zero123 family and
image-condition systems; docs/methods/magic123.md §"Reference-view losses").

The estimates come as files next to the input image (`single-image-datamodule` with
`requires_depth` / `requires_normal`: `<name>_depth.png`, `<name>_normal.png` beside `<name>_rgba.png`),
in the batch as `ref_depth` [B,H,W,1] and `ref_normal` [B,H,W,3] (values / 255). Only pixels of the
reference mask count (N of them below).

- `lambda_depth` (scale-and-shift invariant): the estimate d is fitted to the rendered depth D by least
  squares, (s, b) = argmin ||s d + b - D||² (no gradient through the fit), then
      loss_depth = mean((s d + b - D)²)
- `lambda_depth_rel` (Pearson): loss_depth_rel = 1 - corr(D, d), corr the Pearson correlation over the N pixels.
- `lambda_normal`: the stored normal n ∈ [0,1]³ read as the direction 1 - 2n (threestudio's convention
  for the estimator's output as written by its preprocessing), the rendered comp_normal c ∈ [0,1]³ as 2c - 1:
      loss_normal = 1 - mean cos(2c - 1, 1 - 2n)
- `lambda_normal_smoothness_2d` (Magic123): squared differences of neighbouring pixels of comp_normal,
      mean((c[:,1:] - c[:,:-1])²) + mean((c[:,:,1:] - c[:,:,:-1])²)
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.errors import ConfigError

GEOMETRY_LOSSES = ("depth", "depth_rel", "normal")
# which batch key and data-module switch each loss needs
_NEEDS = {"depth": ("ref_depth", "requires_depth"), "depth_rel": ("ref_depth", "requires_depth"),
          "normal": ("ref_normal", "requires_normal")}


def scale_invariant_depth_loss(pred: Tensor, estimate: Tensor) -> Tensor:
    """pred [N] (rendered depth, differentiable), estimate [N] -> the MSE after the least-squares
    affine fit of the estimate to pred (the fit carries no gradient)."""
    with torch.no_grad():
        A = torch.stack([estimate, torch.ones_like(estimate)], dim=-1).float()  # [N,2]
        scale_shift = torch.linalg.lstsq(A, pred.detach().float()[:, None]).solution  # [2,1]
        fitted = (A @ scale_shift)[:, 0].to(pred)  # [N]
    return F.mse_loss(fitted, pred)


def pearson_depth_loss(pred: Tensor, estimate: Tensor, eps: float = 1e-8) -> Tensor:
    """1 - Pearson correlation of pred [N] and estimate [N]."""
    p = pred - pred.mean()
    e = (estimate - estimate.mean()).to(pred)
    corr = (p * e).sum() / ((p.square().sum() * e.square().sum()).sqrt() + eps)
    return 1.0 - corr


def normal_loss(comp_normal: Tensor, stored_normal: Tensor) -> Tensor:
    """comp_normal [N,3] in [0,1] (rendered), stored_normal [N,3] in [0,1] (file values) -> 1 - mean cos."""
    return 1.0 - F.cosine_similarity(2.0 * comp_normal - 1.0, (1.0 - 2.0 * stored_normal).to(comp_normal)).mean()


def normal_smoothness_2d(comp_normal: Tensor) -> Tensor:
    """comp_normal [B,H,W,3] -> the mean squared difference of vertical plus horizontal neighbours."""
    return ((comp_normal[:, 1:] - comp_normal[:, :-1]).square().mean()
            + (comp_normal[:, :, 1:] - comp_normal[:, :, :-1]).square().mean())


def reference_geometry_losses(out: dict[str, Tensor], batch: dict[str, Any], lambdas: dict[str, float]) -> dict[str, Tensor]:
    """{"loss_depth", "loss_depth_rel", "loss_normal"} for the lambdas > 0, from the reference render
    `out` and the reference batch (mask [B,H,W,1], ref_depth [B,H,W,1], ref_normal [B,H,W,3])."""
    terms: dict[str, Tensor] = {}
    wanted = [n for n in GEOMETRY_LOSSES if lambdas.get(n, 0.0) > 0.0]
    if not wanted:
        return terms
    inside = batch["mask"][..., 0] > 0.5  # [B,H,W]
    for name in wanted:
        key, switch = _NEEDS[name]
        if batch.get(key) is None:
            raise ConfigError(f"system.loss.lambda_{name} > 0 needs the {key[4:]} estimate: set data.{switch}=true "
                              f"and put it next to the image (single-image-datamodule).")
        if name == "normal" and "comp_normal" not in out:
            raise ConfigError("system.loss.lambda_normal > 0 needs rendered normals (comp_normal): use a geometry "
                              "with normals (e.g. system.geometry.normal_type=finite_difference).")
        if not bool(inside.any()):
            terms[f"loss_{name}"] = out["opacity"].sum() * 0.0
        elif name == "normal":
            terms["loss_normal"] = normal_loss(out["comp_normal"][inside], batch["ref_normal"][inside])
        else:
            pred, est = out["depth"][..., 0][inside], batch["ref_depth"][..., 0][inside]  # [N], [N]
            fn = scale_invariant_depth_loss if name == "depth" else pearson_depth_loss
            terms[f"loss_{name}"] = fn(pred, est)
    return terms


__all__ = ["GEOMETRY_LOSSES", "normal_loss", "normal_smoothness_2d", "pearson_depth_loss",
           "reference_geometry_losses", "scale_invariant_depth_loss"]
