"""Scoring a trained trial against the reference mesh it was fitted to (known-answer checks).

`evaluate_against_reference(trial_dir)` rebuilds the trial's system from its saved config and
checkpoint, renders held-out turntable views (the test cameras, which are never trained on
exactly), renders the reference mesh at the same cameras, and returns mask IoU and PSNR.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf

from lift3d.registry import find
from lift3d.utils.metrics import mask_iou, psnr


def load_trial_system(trial_dir: str | Path, ckpt: Optional[str | Path] = None):
    trial_dir = Path(trial_dir)
    cfg = OmegaConf.load(trial_dir / "configs" / "parsed.yaml")
    system = find(cfg.system_type)(cfg.system, resumed=True)
    state = torch.load(ckpt or trial_dir / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    system.load_state_dict(state["state_dict"])
    system.eval()
    return cfg, system


@torch.no_grad()
def evaluate_against_reference(
    trial_dir: str | Path, n_views: int = 8, resolution: Optional[int] = None, elevation_deg: Optional[float] = None
) -> dict[str, float]:
    cfg, system = load_trial_system(trial_dir)
    data_cfg = OmegaConf.merge(cfg.data, {"n_test_views": n_views})
    if resolution is not None:
        data_cfg = OmegaConf.merge(data_cfg, {"eval_height": resolution, "eval_width": resolution})
    if elevation_deg is not None:
        data_cfg = OmegaConf.merge(data_cfg, {"eval_elevation_deg": elevation_deg})
    datamodule = find(cfg.data_type)(data_cfg)
    guidance = find(cfg.system.guidance_type)(cfg.system.guidance)
    ious, psnrs = [], []
    for batch in datamodule.test_dataloader():
        out = system(batch)
        color, mask = guidance.render_reference(batch["mvp_mtx"], batch["height"], batch["width"])
        target = color + out["comp_rgb_bg"] * (1.0 - mask)
        ious.append(mask_iou(out["opacity"], mask))
        psnrs.append(psnr(out["comp_rgb"].clamp(0, 1), target))
    return {"mask_iou": float(torch.cat(ious).mean()), "psnr": float(torch.cat(psnrs).mean())}
