"""Writing what users look at: images, image grids, turntable videos (trial_dir/save/)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[H,W,C] float in [0,1] (C = 1, 3 or 4), or already uint8 → uint8 [H,W,3|4]."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    if image.dtype == np.uint8:
        return image if image.ndim == 3 and image.shape[-1] in (3, 4) else to_uint8(image.astype(np.float32) / 255.0)
    image = np.clip(np.nan_to_num(image), 0.0, 1.0)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return (image * 255.0 + 0.5).astype(np.uint8)


def save_image(path: str | Path, image: torch.Tensor | np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image)).save(path)
    return path


def image_row(images: Sequence[torch.Tensor]) -> np.ndarray:
    """Concatenate [H,W,C] images left to right (all converted to RGB uint8)."""
    return np.concatenate([to_uint8(im)[..., :3] for im in images], axis=1)


def save_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = 30) -> Path:
    """Write uint8 [H,W,3] frames as an H.264 mp4 (imageio-ffmpeg ships its own ffmpeg)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in frames]  # even sizes for yuv420p
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def save_video_from_folder(folder: str | Path, out_path: str | Path, fps: int = 30) -> Path:
    files = sorted(Path(folder).glob("*.png"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    frames = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return save_video(out_path, frames, fps=fps)


class TrialSaveDir:
    """Mixin of the systems that write into `<trial>/save` (launch.py calls `set_save_dir`)."""

    _save_dir: "Path | None" = None

    def set_save_dir(self, path: str | Path) -> None:
        self._save_dir = Path(path)

    def save_path(self, relative: str) -> Path:
        """`<trial>/save/<relative>`, its parent folder created."""
        if self._save_dir is None:
            raise RuntimeError("save dir not set: launch.py sets it with set_save_dir(<trial>/save)")
        path = self._save_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
