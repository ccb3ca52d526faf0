"""Marching cubes on a regular grid (mesh export of implicit volumes), via scikit-image.

Not differentiable: used to turn a density / SDF field into a mesh (e.g. NeRF -> DMTet stage
conversion, export), like threestudio's CPU marching-cubes helper.

Grid convention: ``field[i, j, k]`` is the value at
``bbox[0] + (i, j, k) / (R - 1) * (bbox[1] - bbox[0])`` (axis 0 = x, 1 = y, 2 = z; the samples
include both bbox corners, as ``torch.linspace(lo, hi, R)`` gives). The field may be
[Rx, Ry, Rz] with different sizes per axis.

Inside / orientation convention:
- ``inside_is_greater=True`` (density, occupancy): inside is ``field > level``;
- ``inside_is_greater=False`` (SDF): inside is ``field < level``.
Faces are wound counter-clockwise seen from outside: the face normal
``cross(v1 - v0, v2 - v0)`` points out of the object (toward decreasing density, or toward
increasing SDF). scikit-image winds its faces the other way; this wrapper flips them.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["marching_cubes"]

BBox = Union[torch.Tensor, np.ndarray, Sequence[Sequence[float]]]


def marching_cubes(
    field: torch.Tensor,
    level: float,
    bbox: BBox = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)),
    inside_is_greater: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Extract the ``level`` isosurface of a grid-sampled scalar field.

    Args:
        field: [Rx, Ry, Rz] values on the regular grid over ``bbox`` (R >= 2 per axis).
        level: iso value; must lie strictly between the field's min and max.
        bbox: [2, 3] (min corner, max corner) in world coordinates.
        inside_is_greater: True for density (inside = field > level), False for SDF
            (inside = field < level).
    Returns:
        v_pos: [V, 3] float32 world coordinates, on ``field``'s device.
        faces: [F, 3] long, normals pointing out of the object.
    Raises:
        ValueError: bad shapes, non-finite values, or a level the field never crosses (all
            inside or all outside) - the message names the field's min / max and the level.
    """
    from skimage.measure import marching_cubes as _sk_marching_cubes  # optional heavy import

    if field.ndim != 3 or min(field.shape) < 2:
        raise ValueError(
            f"marching_cubes: field must be [Rx, Ry, Rz] with every R >= 2, got {tuple(field.shape)}"
        )
    device = field.device
    vol = field.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(vol).all():
        raise ValueError(
            f"marching_cubes: field has {int((~np.isfinite(vol)).sum())} non-finite values (NaN/inf)"
        )
    box = torch.as_tensor(np.asarray(bbox, dtype=np.float64), dtype=torch.float64)
    if box.shape != (2, 3) or not bool((box[1] > box[0]).all()):
        raise ValueError(f"marching_cubes: bbox must be [2, 3] with max > min per axis, got {box.tolist()}")

    fmin, fmax, level = float(vol.min()), float(vol.max()), float(level)
    if not fmin < level < fmax:
        n_in = int((vol > level).sum() if inside_is_greater else (vol < level).sum())
        state = (
            "no point is inside" if n_in == 0
            else "every point is inside" if n_in == vol.size
            else "the field only touches the level"
        )
        raise ValueError(
            f"marching_cubes: level {level:g} is not crossed by the field (min {fmin:g}, max {fmax:g}): "
            f"{state} (inside = field {'>' if inside_is_greater else '<'} level), so there is no "
            "surface. Pick a level between min and max (for a density: train longer or lower "
            "the threshold; check that the grid bbox covers the object)."
        )

    # Work on a field where inside is greater: skimage's 'descent' mode then winds faces so that
    # cross(v1 - v0, v2 - v0) points inward; swapping two vertices makes it point outward.
    if not inside_is_greater:
        vol, level = -vol, -level
    verts, faces, _normals, _values = _sk_marching_cubes(
        vol, level=level, gradient_direction="descent"
    )
    faces = faces[:, [0, 2, 1]]

    sizes = torch.tensor(vol.shape, dtype=torch.float64) - 1.0
    v_pos = box[0] + torch.from_numpy(verts.astype(np.float64)) / sizes * (box[1] - box[0])
    v_pos = v_pos.to(device=device, dtype=torch.float32)
    faces_t = torch.from_numpy(np.ascontiguousarray(faces)).long().to(device)
    return v_pos, faces_t
