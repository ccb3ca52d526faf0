"""Radiance HDR files (.hdr, Ward's RGBE): `read_hdr` -> [H, W, 3] float32 linear radiance,
`write_hdr` from it. Flat and new-style run-length-encoded scanlines, '-Y H +X W' orientation
(row 0 = top), in NumPy, no image library needed. Environment maps of the PBR material
(lift3d.materials.pbr, load/lights/) are stored this way.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

__all__ = ["read_hdr", "write_hdr"]


def _rgbe_to_float(rgbe: np.ndarray) -> np.ndarray:
    """[..., 4] uint8 RGBE -> [..., 3] float32 (Ward's shared-exponent format)."""
    e = rgbe[..., 3].astype(np.int32)
    scale = np.where(e > 0, np.ldexp(1.0, e - 136), 0.0).astype(np.float32)  # 2^(e-128) / 256
    return (rgbe[..., :3].astype(np.float32) + 0.5) * scale[..., None] * (e[..., None] > 0)


def _float_to_rgbe(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] float -> [..., 4] uint8 RGBE (values below 1e-32 become 0)."""
    rgb = np.maximum(np.asarray(rgb, dtype=np.float64), 0.0)
    m = rgb.max(-1)
    mant, exp = np.frexp(m)  # m = mant * 2^exp, mant in [0.5, 1)
    scale = np.where(m > 1e-32, mant * 256.0 / np.where(m > 1e-32, m, 1.0), 0.0)
    out = np.zeros(rgb.shape[:-1] + (4,), dtype=np.uint8)
    out[..., :3] = np.clip(np.floor(rgb * scale[..., None]), 0, 255).astype(np.uint8)
    out[..., 3] = np.where(m > 1e-32, exp + 128, 0).astype(np.uint8)
    return out


def _read_rle_scanline(data: bytes, pos: int, width: int) -> tuple[np.ndarray, int]:
    """One new-style run-length-encoded scanline -> ([width, 4] uint8, new position)."""
    line = np.empty((4, width), dtype=np.uint8)
    for c in range(4):
        x = 0
        while x < width:
            count = data[pos]
            pos += 1
            if count > 128:  # a run
                count -= 128
                line[c, x:x + count] = data[pos]
                pos += 1
            else:  # literal bytes
                line[c, x:x + count] = np.frombuffer(data, dtype=np.uint8, count=count, offset=pos)
                pos += count
            x += count
        if x != width:
            raise ValueError("corrupt run-length-encoded HDR scanline")
    return line.T, pos


def read_hdr(path: str | Path) -> np.ndarray:
    """Read a Radiance .hdr (RGBE; flat or new-style RLE scanlines, '-Y H +X W' orientation) ->
    [H, W, 3] float32 linear radiance, row 0 = top."""
    data = Path(path).read_bytes()
    if not (data.startswith(b"#?RADIANCE") or data.startswith(b"#?RGBE")):
        raise ValueError(f"{path}: not a Radiance HDR file (no #?RADIANCE header)")
    end = data.find(b"\n\n")
    header = data[:end].decode("ascii", "replace")
    if "FORMAT=" in header and "32-bit_rle_rgbe" not in header:
        raise ValueError(f"{path}: only the 32-bit_rle_rgbe format is supported")
    nl = data.find(b"\n", end + 2)
    size_line = data[end + 2:nl].decode("ascii").strip()
    match = re.fullmatch(r"-Y (\d+) \+X (\d+)", size_line)
    if not match:
        raise ValueError(f"{path}: unsupported HDR orientation '{size_line}' (expected '-Y H +X W')")
    H, W = int(match.group(1)), int(match.group(2))
    pos = nl + 1
    rows = []
    for _ in range(H):
        if 8 <= W < 32768 and data[pos] == 2 and data[pos + 1] == 2 and (data[pos + 2] << 8 | data[pos + 3]) == W:
            line, pos = _read_rle_scanline(data, pos + 4, W)
        else:  # flat RGBE pixels
            line = np.frombuffer(data, dtype=np.uint8, count=4 * W, offset=pos).reshape(W, 4)
            pos += 4 * W
        rows.append(line)
    return _rgbe_to_float(np.stack(rows))


def _rle_encode_channel(values: np.ndarray) -> bytes:
    out = bytearray()
    i, n = 0, len(values)
    while i < n:
        run = 1
        while i + run < n and run < 127 and values[i + run] == values[i]:
            run += 1
        if run >= 4:
            out += bytes((128 + run, int(values[i])))
            i += run
            continue
        start = i  # literal span until the next run of >= 4 or 128 bytes
        while i < n and i - start < 128:
            if i + 3 < n and values[i] == values[i + 1] == values[i + 2] == values[i + 3]:
                break
            i += 1
        out += bytes((i - start,)) + values[start:i].tobytes()
    return bytes(out)


def write_hdr(path: str | Path, image: np.ndarray, rle: bool = True) -> None:
    """Write [H, W, 3] linear radiance as a Radiance .hdr (RGBE, new-style RLE when `rle`)."""
    image = np.asarray(image, dtype=np.float32)
    H, W = image.shape[:2]
    rgbe = _float_to_rgbe(image)
    body = bytearray()
    for y in range(H):
        if rle and 8 <= W < 32768:
            body += bytes((2, 2, W >> 8, W & 255))
            for c in range(4):
                body += _rle_encode_channel(rgbe[y, :, c])
        else:
            body += rgbe[y].tobytes()
    header = f"#?RADIANCE\n# lift3d\nFORMAT=32-bit_rle_rgbe\n\n-Y {H} +X {W}\n".encode("ascii")
    Path(path).write_bytes(header + bytes(body))
