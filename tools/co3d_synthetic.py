"""A tiny synthetic CO3D sequence in CO3D's own layout (for tests/test_co3d.py and the threestudio config
tests): <root>/<category>/frame_annotations.jgz and <root>/<category>/<sequence>/{images,masks,depths}/.

The "CO3D world" has +y up and the object centred at CENTER; cameras on a ring at DISTANCE around it
(slightly above), PyTorch3D's convention (X_view = X_world R + T, camera x left, y up, z forward),
CO3D v2 intrinsics (ndc_isotropic). Each photo shows three Gaussian blobs at the exact projections of
POINTS (red, green, blue channel), a foreground mask (a disc around the centre's projection) and a
depth map holding DISTANCE everywhere (float16 bits in a 16-bit PNG, CO3D's encoding).
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
from PIL import Image

CENTER = np.array([0.3, -0.2, 0.5])
UP = np.array([0.0, 1.0, 0.0])
POINTS = np.stack([CENTER, CENTER + 0.3 * UP, CENTER + np.array([0.3, 0.0, 0.0])])  # centre, above, beside
DISTANCE = 4.0
FOCAL_NDC = 2.0
PRINCIPAL_NDC = (0.05, -0.03)
SIZE_HW = (48, 64)


def pytorch3d_camera(position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, T) of a camera at `position` looking at CENTER with +y up: columns of R = the camera's
    x (left), y (up), z (forward) axes in the world; T = -R^T position."""
    forward = CENTER - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, UP)
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    R = np.stack([-right, up, forward], axis=1)
    return R, -R.T @ position


def project(point: np.ndarray, R: np.ndarray, T: np.ndarray) -> tuple[float, float]:
    """Continuous pixel (u from the left edge, v from the top) of a world point; PyTorch3D NDC has +x
    left, +y up, the shorter side spanning [-1, 1]."""
    H, W = SIZE_HW
    x, y, z = point @ R + T
    half = 0.5 * min(H, W)
    x_ndc, y_ndc = FOCAL_NDC * x / z + PRINCIPAL_NDC[0], FOCAL_NDC * y / z + PRINCIPAL_NDC[1]
    return 0.5 * W - x_ndc * half, 0.5 * H - y_ndc * half


def write_co3d_sequence(root: Path, n_frames: int = 12, category: str = "toy", sequence: str = "seq_0",
                        other_sequence_frames: int = 2) -> Path:
    """Write the sequence (plus a few frames of another sequence in the same annotation file, and one
    "unseen" frame); returns the sequence folder (threestudio's data.root_dir)."""
    H, W = SIZE_HW
    seq_dir = root / category / sequence
    for sub in ("images", "masks", "depths"):
        (seq_dir / sub).mkdir(parents=True, exist_ok=True)
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float64) + 0.5  # pixel centres
    depth_bits = np.full((H, W), DISTANCE, dtype=np.float16).view(np.uint16)
    annotations = []
    for i in range(n_frames + 1):
        angle = 2 * np.pi * i / n_frames
        position = CENTER + DISTANCE * (np.cos(0.3) * np.array([np.cos(angle), 0.0, np.sin(angle)]) + np.sin(0.3) * UP)
        R, T = pytorch3d_camera(position)
        image = np.zeros((H, W, 3))
        for c, point in enumerate(POINTS):
            u, v = project(point, R, T)
            image[..., c] = np.exp(-((cols - u) ** 2 + (rows - v) ** 2) / (2 * 1.5 ** 2))
        u0, v0 = project(CENTER, R, T)
        mask = (((cols - u0) ** 2 + (rows - v0) ** 2) < 14.0 ** 2).astype(np.float64)
        name = f"frame{i:06d}"
        Image.fromarray((image * 255).round().astype(np.uint8)).save(seq_dir / "images" / f"{name}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(seq_dir / "masks" / f"{name}.png")
        Image.fromarray(depth_bits).save(seq_dir / "depths" / f"{name}.png")
        rel = f"{category}/{sequence}"
        annotations.append({
            "sequence_name": sequence, "frame_number": i,
            "image": {"path": f"{rel}/images/{name}.png", "size": [H, W]},
            "mask": {"path": f"{rel}/masks/{name}.png"},
            "depth": {"path": f"{rel}/depths/{name}.png", "scale_adjustment": 1.0},
            "viewpoint": {"R": R.tolist(), "T": T.tolist(), "focal_length": [FOCAL_NDC, FOCAL_NDC],
                          "principal_point": list(PRINCIPAL_NDC), "intrinsics_format": "ndc_isotropic"},
            "meta": {"frame_type": "test_unseen" if i == n_frames else "train_known"},  # the last one: unseen
        })
    for j in range(other_sequence_frames):  # another sequence of the category: ignored
        annotations.append({**annotations[j], "sequence_name": "other_seq"})
    with gzip.open(root / category / "frame_annotations.jgz", "wt", encoding="utf-8") as fp:
        json.dump(annotations, fp)
    return seq_dir
