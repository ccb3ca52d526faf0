"""Writing evaluation renders as a multi-view RGBA dataset: straight-alpha PNGs plus a
`transforms.json` in the instant-ngp / nerfstudio format (OpenGL c2w per frame; intrinsics shared
by every frame at the top level), ready for reconstruction (e.g. USD's view distillation)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from lift3d.utils.saving import save_image


class RGBADatasetWriter:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.frames: list[dict] = []
        (self.folder / "images").mkdir(parents=True, exist_ok=True)
        for old in (self.folder / "images").glob("*.png"):  # a repeated pass replaces the previous one
            old.unlink()

    def add(self, batch: dict[str, Any], out: dict[str, torch.Tensor], b: int, index: int) -> None:
        """Write view b of a rendered batch; colour = comp_rgb_fg / opacity, alpha = opacity."""
        alpha = out["opacity"][b].clamp(0.0, 1.0)  # [H,W,1]
        fg = out["comp_rgb_fg"][b]  # [H,W,3], premultiplied
        rgb = torch.where(alpha > 1e-4, fg / alpha.clamp(min=1e-4), torch.zeros_like(fg))
        name = f"images/{index:04d}.png"
        save_image(self.folder / name, torch.cat([rgb.clamp(0, 1), alpha], -1))
        H, W = int(batch["height"]), int(batch["width"])
        fl = 0.5 * H / math.tan(0.5 * float(batch["fovy"][b]))  # pixels (fovy is vertical)
        self.frames.append({
            "file_path": name, "transform_matrix": batch["c2w"][b].detach().float().cpu().tolist(),  # OpenGL c2w
            "w": W, "h": H, "fl_x": fl, "fl_y": fl, "cx": 0.5 * W, "cy": 0.5 * H,
            "camera_angle_x": 2.0 * math.atan(0.5 * W / fl), "camera_angle_y": float(batch["fovy"][b]),
            "elevation_deg": float(batch["elevation"][b]), "azimuth_deg": float(batch["azimuth"][b]),
            "camera_distance": float(batch["camera_distances"][b]),
        })

    def finish(self) -> Path | None:
        """Write transforms.json; returns its path (None when no frame was added)."""
        if not self.frames:
            return None
        frames = sorted(self.frames, key=lambda f: f["file_path"])
        shared = ("w", "h", "fl_x", "fl_y", "cx", "cy", "camera_angle_x", "camera_angle_y")
        top = {k: frames[0][k] for k in shared if all(f[k] == frames[0][k] for f in frames)}
        frames = [{k: v for k, v in f.items() if k not in top} for f in frames]
        path = self.folder / "transforms.json"
        path.write_text(json.dumps({"camera_model": "OPENCV", **top, "frames": frames}, indent=1))
        return path


def test_pass_datasets(trial: Path) -> list[Path]:
    """The `save/it{N}-test-rgba` folders of a trial that hold a transforms.json, by step N (newest last)."""
    found = []
    for folder in (Path(trial) / "save").glob("it*-test-rgba"):
        match = re.fullmatch(r"it(\d+)-test-rgba", folder.name)
        if match and (folder / "transforms.json").is_file():
            found.append((int(match.group(1)), folder))
    return [folder for _, folder in sorted(found)]
