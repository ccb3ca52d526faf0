"""The step of the finite-difference normals of the implicit geometries (`finite_difference_normal_eps`).

A number is a fixed step (world units). `progressive` is Neuralangelo's schedule (Li et al., CVPR 2023,
§3.2; docs/nerf_sampling.md): the step is the cell size of the finest hash-grid level active now,
so early on (few coarse levels) the numerical gradient spans a large cell and sees a smooth field, and
it shrinks as the progressive-band hash grid switches on finer levels:

    eps = 2 · radius / (base_resolution · per_level_scale^(L − 1)),   L = the encoding's active levels

(threestudio's formula; the cube [-radius, radius]^3 is the encoding's [0, 1]^3). L is read from the
`ProgressiveBandHashGrid` itself (start_level + (step − start_step) // update_steps, at most n_levels),
so the step always matches the levels the field uses; other encodings have no levels to follow.
"""
from __future__ import annotations

from typing import Any, Union

from lift3d.errors import ConfigError

PROGRESSIVE = "progressive"


def validate_finite_difference_eps(eps: Union[float, str], encoding_config: Any, path: str) -> None:
    """ConfigError for `finite_difference_normal_eps` that is neither a number > 0 nor `progressive`
    with a ProgressiveBandHashGrid encoding."""
    if isinstance(eps, str):
        if eps != PROGRESSIVE:
            raise ConfigError(f"{path}.finite_difference_normal_eps = '{eps}': give a number > 0 (e.g. 0.01) or "
                              f"'{PROGRESSIVE}'.")
        otype = (encoding_config or {}).get("otype")
        if otype != "ProgressiveBandHashGrid":
            raise ConfigError(f"{path}.finite_difference_normal_eps = {PROGRESSIVE} follows the active levels of a "
                              f"progressive hash grid, but {path}.pos_encoding_config.otype is '{otype}': use "
                              f"otype ProgressiveBandHashGrid or a number for the step.")
    elif not float(eps) > 0.0:
        raise ConfigError(f"{path}.finite_difference_normal_eps = {eps}: give a number > 0 (e.g. 0.01) or '{PROGRESSIVE}'.")


def finest_cell_size(radius: float, base_resolution: float, per_level_scale: float, active_levels: int) -> float:
    """World size of a cell of the finest active level (the formula in the module docstring)."""
    resolution = float(base_resolution) * float(per_level_scale) ** (max(int(active_levels), 1) - 1)
    return 2.0 * float(radius) / resolution


def finite_difference_eps(eps: Union[float, str], encoding: Any, radius: float) -> float:
    """The step to use now: `eps` itself, or (progressive) the finest active cell of `encoding` (a
    CompositeEncoding wrapping a ProgressiveBandHashGrid, as lift3d.networks.encodings.get_encoding builds)."""
    if not isinstance(eps, str):
        return float(eps)
    grid = getattr(encoding, "encoding", encoding)
    return finest_cell_size(radius, grid.base_resolution, grid.per_level_scale, grid.current_level)


__all__ = ["PROGRESSIVE", "finest_cell_size", "finite_difference_eps", "validate_finite_difference_eps"]
