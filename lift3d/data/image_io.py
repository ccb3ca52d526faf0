"""Reading the reference image of image-to-3D (an RGBA picture of one object on a transparent
background) into an RGB tensor, its alpha and a binary foreground mask, and compositing it.

Compositing uses the continuous alpha, `rgb * alpha + background * (1 - alpha)` (`composite`), as
threestudio composites its reference image (zero123_guidance.py, stable_zero123_guidance.py): an
anti-aliased edge pixel with alpha 0.5 becomes the half-way blend of object and background. The
binary mask (alpha > 0.5) is for the mask loss only (docs/faithfulness.md).

Errors are raised as `ConfigError`s that name the file, the config key it came from (by default
`data.image_path`) and the fix, so a data module can check its image while the experiment config
is validated, before any training work starts.
"""
from __future__ import annotations

import os
import warnings
from typing import Tuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from lift3d.errors import ConfigError

DEFAULT_KEY = "data.image_path"

# Modes that carry an alpha channel (premultiplied 'RGBa'/'La' included).
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class ImageNotFoundError(ConfigError, FileNotFoundError):
    """The configured image does not exist (a ConfigError that is also a FileNotFoundError)."""


def _fix_hint() -> str:
    return (
        "Provide an RGBA PNG of the object on a transparent background (alpha 0 outside the "
        "object), e.g. cut the object out with a background-removal tool such as `rembg` and save "
        "it as load/images/<name>_rgba.png; see load/images/README.md."
    )


def _has_alpha(im: Image.Image) -> bool:
    if im.mode in _ALPHA_MODES:
        return True
    # palette or RGB/L images with a tRNS transparency entry
    return "transparency" in im.info and im.mode in {"P", "RGB", "L", "1"}


def read_rgba(path: str, key: str = DEFAULT_KEY) -> Image.Image:
    """Open and fully decode `path`, check it has a usable alpha channel, return it as RGBA.

    Raises ConfigError (ImageNotFoundError for a missing file) naming `path` and `key` when the
    path is empty or missing, the file is not a readable image, it has no alpha channel, or its
    alpha channel is fully opaque / fully transparent (no object/background separation).
    """
    path = "" if path is None else str(path)
    if not path.strip():
        raise ConfigError(
            f"{key} is empty: set it to the reference image, e.g. {key}=load/images/<name>_rgba.png. "
            + _fix_hint()
        )
    if not os.path.exists(path):
        raise ImageNotFoundError(
            f"image file not found: '{path}' (from {key}; looked at '{os.path.abspath(path)}'). "
            f"Check the path (relative paths are relative to the directory you launch from) "
            f"or set {key}=<existing RGBA png>."
        )
    if os.path.isdir(path):
        raise ConfigError(f"{key}='{path}' is a directory, not an image file: point {key} at an RGBA PNG.")
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: truncated or corrupt data fails here, not mid-training
            im = ImageOps.exif_transpose(opened)
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ConfigError(
            f"cannot read image '{path}' (from {key}): the file is corrupt or not an image "
            f"({type(exc).__name__}: {exc}). Re-export it as a PNG with an alpha channel (RGBA) "
            f"and set {key} to it."
        ) from None
    if not _has_alpha(im):
        raise ConfigError(
            f"image '{path}' (from {key}) has no alpha channel (mode {im.mode}), so the object "
            f"cannot be separated from its background. " + _fix_hint()
        )
    rgba = im.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    if alpha.min() > 127:
        raise ConfigError(
            f"image '{path}' (from {key}) has an alpha channel but it is fully opaque: there is no "
            f"transparent background, so the foreground mask would cover the whole frame. "
            + _fix_hint()
        )
    if alpha.max() <= 127:
        raise ConfigError(
            f"image '{path}' (from {key}) is fully transparent: the foreground mask is empty. "
            + _fix_hint()
        )
    return rgba


def resize_rgba(rgba: Image.Image, height: int, width: int) -> Image.Image:
    """Resize an RGBA image to (height, width) with premultiplied alpha (no dark fringes).

    Area averaging (BOX) when shrinking, bicubic when enlarging. The aspect ratio is not kept.
    """
    if rgba.size == (width, height):
        return rgba
    shrinking = width <= rgba.width and height <= rgba.height
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
    return rgba.resize((width, height), resample=resample)  # PIL premultiplies RGBA for this


def load_rgb_alpha(path: str, height: int, width: int, key: str = DEFAULT_KEY) -> Tuple[Tensor, Tensor]:
    """Load an RGBA image resized to height x width.

    Returns rgb [H, W, 3] float32 in [0, 1] (straight, not premultiplied: colours where alpha is 0
    are whatever the file stores) and alpha [H, W, 1] float32 in [0, 1]; composite them with
    `composite`. Errors: see `read_rgba`. Warns when the image's aspect ratio differs from
    width / height (it is stretched, not cropped).
    """
    rgba = read_rgba(path, key)
    if abs(rgba.width / rgba.height - width / height) > 0.01 * (width / height):
        warnings.warn(
            f"image '{path}' ({rgba.width}x{rgba.height}) is stretched to {width}x{height}: its "
            f"aspect ratio differs from the configured width/height. Pad the image to the same "
            f"aspect ratio to avoid distortion.",
            stacklevel=2,
        )
    arr = np.asarray(resize_rgba(rgba, height, width), dtype=np.float32) / 255.0  # [H, W, 4]
    t = torch.from_numpy(arr.copy())
    return t[..., :3].contiguous(), t[..., 3:].contiguous()


def binary_mask(alpha: Tensor) -> Tensor:
    """The foreground mask of an alpha [..., 1]: 1.0 where alpha > 0.5, else 0.0 (for mask losses)."""
    return (alpha > 0.5).to(alpha.dtype)


def composite(rgb: Tensor, alpha: Tensor, background: Tensor | float) -> Tensor:
    """rgb * alpha + background * (1 - alpha): straight-alpha colour [..., 3] over a background
    (broadcastable to rgb: a colour [3], an image [..., 3] or a scalar), with the continuous alpha [..., 1]."""
    return rgb * alpha + background * (1.0 - alpha)


def load_rgba(path: str, height: int, width: int, key: str = DEFAULT_KEY) -> Tuple[Tensor, Tensor]:
    """`load_rgb_alpha` with the alpha made binary: (rgb [H, W, 3], mask [H, W, 1] = alpha > 0.5).
    For a mask; composite the colour with the continuous alpha of `load_rgb_alpha`."""
    rgb, alpha = load_rgb_alpha(path, height, width, key)
    return rgb, binary_mask(alpha)
