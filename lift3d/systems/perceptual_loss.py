"""The LPIPS term `loss_p` of systems that compare renders with images (instructnerf2nerf-system,
control4d-multiview-system): its config check before any work and its frozen network at fit start.
The network is lift3d.models.lpips.LPIPS, read from `perceptual_model_path` (a folder with VGG-16's and
LPIPS' linear-head weights)."""
from __future__ import annotations

from typing import Any

from lift3d.config import schedule_max
from lift3d.errors import ConfigError


def uses_perceptual(cfg: Any) -> bool:
    """Whether `system.loss.lambda_p` is ever above zero (a number or a schedule)."""
    return schedule_max(cfg.loss.get("lambda_p", 0.0)) > 0


def check_perceptual(cfg: Any, path: str) -> None:
    """With lambda_p > 0: ConfigError naming `<path>.perceptual_model_path` when it is unset, and a damaged
    weight file fails here, before any work (LPIPS.from_folder's own check)."""
    if not uses_perceptual(cfg):
        return
    from lift3d.models.lpips import LIN_FILE, LPIPS, VGG_FILE

    if not cfg.perceptual_model_path:
        raise ConfigError(f"{path}.loss.lambda_p > 0 needs LPIPS weights: set {path}.perceptual_model_path="
                          f"<folder with {VGG_FILE} (torchvision's vgg16-397923af.pth) and {LIN_FILE} (LPIPS "
                          f"v0.1 linear heads)>, or {path}.loss.lambda_p=0.")
    LPIPS.from_folder(cfg.perceptual_model_path, f"{path}.perceptual_model_path")


def attach_perceptual(system: Any) -> None:
    """At fit start: `system.perceptual` = the LPIPS network on the system's device when lambda_p > 0 — a
    plain attribute, not a child module, so the frozen weights stay out of checkpoints."""
    if system.cfg.perceptual_model_path and uses_perceptual(system.cfg):
        from lift3d.models.lpips import LPIPS

        system.__dict__["perceptual"] = LPIPS.from_folder(system.cfg.perceptual_model_path).to(system.device)
