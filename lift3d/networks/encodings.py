"""Input encodings and the threestudio-style ``get_encoding`` factory.

Every encoding exposes ``n_input_dims`` and ``n_output_dims``; encodings whose behaviour depends on
the training step expose ``update_step(epoch, global_step)``. ``get_encoding`` builds one from a
tcnn/threestudio config dict (``otype`` plus the otype's keys) and wraps it in a
``CompositeEncoding``, exactly like threestudio, so every encoding it returns has
``update_step``. Positions are expected in ``[0, 1]`` (as in threestudio/tcnn), or inside the
``bbox`` given to ``get_encoding``.

Difference from tcnn: ``SphericalHarmonics`` takes unit directions in ``[-1, 1]`` as they are.
tcnn (and so threestudio's materials/backgrounds, which pass ``(dirs + 1) / 2``) takes them in
``[0, 1]``; ``SphericalHarmonicsEncoding(unit_cube_input=True)`` gives that behaviour.
"""

from __future__ import annotations

import difflib
import math
from fractions import Fraction
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from lift3d.errors import ConfigError
from lift3d.networks.hashgrid import HashGridEncoding, ProgressiveBandHashGrid
from lift3d.utils.base import Updateable


class IdentityEncoding(nn.Module):
    """tcnn ``Identity``: ``x * scale + offset``; [..., D] -> [..., D]."""

    def __init__(self, n_input_dims: int, scale: float = 1.0, offset: float = 0.0) -> None:
        super().__init__()
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_input_dims
        self.scale = scale
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset


class FrequencyEncoding(nn.Module):
    """tcnn ``Frequency``: ``sin(2^k * pi * x_d)`` and ``cos(2^k * pi * x_d)``, k < n_frequencies.

    [..., D] -> [..., D * 2 * n_frequencies], ordered like tcnn: input dim d, then frequency k,
    then (sin, cos). The raw input is *not* included (as in tcnn); use ``include_xyz`` of
    ``CompositeEncoding`` for that.
    """

    def __init__(self, n_input_dims: int, n_frequencies: int = 12) -> None:
        super().__init__()
        self.n_input_dims = n_input_dims
        self.n_frequencies = n_frequencies
        self.n_output_dims = n_input_dims * 2 * n_frequencies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands = torch.exp2(torch.arange(self.n_frequencies, dtype=x.dtype, device=x.device)) * math.pi  # [K]
        angles = x[..., None] * bands  # [..., D, K]
        out = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1)  # [..., D, K, 2]
        return out.flatten(-3)  # [..., D * K * 2]


class ProgressiveBandFrequency(nn.Module):
    """threestudio's ``ProgressiveBandFrequency``: ``sin(2^k x)``, ``cos(2^k x)`` (no pi), ordered
    frequency-major ``[sin(f0 x), cos(f0 x), sin(f1 x), ...]`` (each block [..., D]).

    With ``n_masking_step > 0`` band k is faded in by the weight
    ``(1 - cos(pi * clamp(step / n_masking_step * K - k, 0, 1))) / 2``; otherwise all bands are on.
    """

    def __init__(self, n_input_dims: int, n_frequencies: int = 6, n_masking_step: int = 0) -> None:
        super().__init__()
        self.n_input_dims = n_input_dims
        self.n_frequencies = n_frequencies
        self.n_masking_step = n_masking_step
        self.n_output_dims = n_input_dims * 2 * n_frequencies
        self.register_buffer("band_weight", torch.ones(n_frequencies), persistent=False)  # [K]
        self.update_step(None, None)

    def update_step(self, epoch: Optional[int], global_step: Optional[int], on_load_weights: bool = False) -> None:
        if self.n_masking_step <= 0 or global_step is None:
            self.band_weight.fill_(1.0)
            return
        k = torch.arange(self.n_frequencies, dtype=torch.float32, device=self.band_weight.device)
        ramp = (global_step / self.n_masking_step * self.n_frequencies - k).clamp(0.0, 1.0)
        self.band_weight.copy_((1.0 - torch.cos(math.pi * ramp)) / 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands = torch.exp2(torch.arange(self.n_frequencies, dtype=x.dtype, device=x.device))  # [K]
        angles = x[..., None, :] * bands[:, None]  # [..., K, D]
        w = self.band_weight.to(x.dtype)[:, None, None]  # [K, 1, 1]
        out = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-2) * w  # [..., K, 2, D]
        return out.flatten(-3)  # [..., K * 2 * D]


def _legendre_derivative(l: int, m: int) -> List[Fraction]:
    """Coefficients c_j (of z^j) of d^m/dz^m P_l(z), exact."""
    coeffs = [Fraction(0)] * (l + 1)
    for k in range(l // 2 + 1):
        coeffs[l - 2 * k] = Fraction((-1) ** k * math.comb(l, k) * math.comb(2 * l - 2 * k, l), 2**l)
    for _ in range(m):
        coeffs = [coeffs[j] * j for j in range(1, len(coeffs))]
    return coeffs


def _sh_terms(degree: int) -> List[Tuple[int, List[float]]]:
    """For each output (l, m) in tcnn order (l = 0..degree-1, m = -l..l): (m, z-polynomial).

    Real SH with the Condon-Shortley phase (tcnn's convention):
    ``Y_lm = c * (-1)^|m| * sqrt((2l+1)/(4 pi) * (l-|m|)!/(l+|m|)!) * P_l^(|m|)(z) * T_m(x, y)``,
    with ``c = sqrt(2)`` for m != 0 else 1, ``T_m = Re((x + iy)^m)`` for m > 0,
    ``Im((x + iy)^|m|)`` for m < 0 and 1 for m = 0.
    """
    terms: List[Tuple[int, List[float]]] = []
    for l in range(degree):
        for m in range(-l, l + 1):
            a = abs(m)
            norm = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - a) / math.factorial(l + a))
            norm *= (math.sqrt(2.0) if m != 0 else 1.0) * (-1) ** a
            terms.append((m, [norm * float(c) for c in _legendre_derivative(l, a)]))
    return terms


class SphericalHarmonicsEncoding(nn.Module):
    """tcnn ``SphericalHarmonics``: real SH basis of degree ``degree`` (bands l < degree),
    [..., 3] -> [..., degree^2], in tcnn's order and sign convention (Condon-Shortley phase:
    ``Y_00 = 1/(2 sqrt(pi))``, ``Y_1 = sqrt(3/(4 pi)) * (-y, z, -x)``, ...).

    Directions are expected to be unit vectors (not renormalised, as in tcnn). By default the input
    is the direction itself, in [-1, 1] (also what ``get_encoding`` builds). With
    ``unit_cube_input=True`` the input is in [0, 1] and mapped by ``2 * x - 1`` first, as tcnn does.
    """

    def __init__(self, n_input_dims: int = 3, degree: int = 4, unit_cube_input: bool = False) -> None:
        super().__init__()
        if n_input_dims != 3:
            raise ValueError(f"SphericalHarmonicsEncoding needs 3 input dims, got {n_input_dims}")
        if not 1 <= degree <= 8:
            raise ConfigError(f"SphericalHarmonicsEncoding: degree must be in 1..8 (like tcnn), got {degree}")
        self.n_input_dims = 3
        self.degree = degree
        self.unit_cube_input = unit_cube_input
        self.n_output_dims = degree * degree
        self._terms = _sh_terms(degree)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        if self.unit_cube_input:
            d = d * 2.0 - 1.0
        x, y, z = d.unbind(-1)  # [...] each
        # (x + iy)^m = re[m] + i im[m]
        re: List[torch.Tensor] = [torch.ones_like(x)]
        im: List[torch.Tensor] = [torch.zeros_like(x)]
        for _ in range(1, self.degree):
            re_m, im_m = re[-1], im[-1]
            re.append(re_m * x - im_m * y)
            im.append(re_m * y + im_m * x)
        z_pows: List[torch.Tensor] = [torch.ones_like(z)]
        for _ in range(1, self.degree):
            z_pows.append(z_pows[-1] * z)
        out = []
        for m, poly in self._terms:
            p = sum(c * z_pows[j] for j, c in enumerate(poly) if c != 0.0)  # [...]
            if m > 0:
                p = p * re[m]
            elif m < 0:
                p = p * im[-m]
            out.append(p)
        return torch.stack(out, dim=-1)  # [..., degree^2]


class CompositeEncoding(nn.Module, Updateable):
    """Wraps an encoding: optional scaling of raw points from a bounding box to [0, 1] and optional
    concatenation of the (scaled) input, as threestudio's ``CompositeEncoding``. It is ``Updateable``, so
    a component's ``do_update_step`` reaches a progressive encoding inside it (the training step).

    ``bbox`` [2, D] (min row, max row): when given, ``x`` is first mapped by
    ``(x - bbox[0]) / (bbox[1] - bbox[0])``. With ``include_xyz`` the output is
    ``cat([x01 * xyz_scale + xyz_offset, encoding(x01)])`` (threestudio: scale 2, offset -1, i.e.
    the [0, 1] input shown in [-1, 1]).
    """

    def __init__(
        self,
        encoding: nn.Module,
        include_xyz: bool = False,
        xyz_scale: float = 2.0,
        xyz_offset: float = -1.0,
        bbox: Optional[torch.Tensor] = None,
    ) -> None:
        super().__init__()
        self.encoding = encoding
        self.include_xyz = include_xyz
        self.xyz_scale = xyz_scale
        self.xyz_offset = xyz_offset
        self.n_input_dims: int = encoding.n_input_dims
        self.n_output_dims: int = int(include_xyz) * self.n_input_dims + encoding.n_output_dims
        if bbox is not None:
            bbox = torch.as_tensor(bbox, dtype=torch.float32)
            if bbox.shape != (2, self.n_input_dims):
                raise ValueError(f"CompositeEncoding: bbox must be [2, {self.n_input_dims}], got {list(bbox.shape)}")
        self.register_buffer("bbox", bbox, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bbox is not None:
            lo, hi = self.bbox.to(x.dtype).unbind(0)  # [D] each
            x = (x - lo) / (hi - lo)
        enc = self.encoding(x)  # [..., n_enc]
        if not self.include_xyz:
            return enc
        return torch.cat([x * self.xyz_scale + self.xyz_offset, enc.to(x.dtype)], dim=-1)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        if hasattr(self.encoding, "update_step"):
            self.encoding.update_step(epoch, global_step, on_load_weights=on_load_weights)


_HASHGRID_KEYS = ("n_levels", "n_features_per_level", "log2_hashmap_size", "base_resolution", "per_level_scale", "interpolation")
_VALID_KEYS: Dict[str, Sequence[str]] = {
    "HashGrid": _HASHGRID_KEYS,
    "Grid": _HASHGRID_KEYS + ("type",),
    "ProgressiveBandHashGrid": _HASHGRID_KEYS + ("start_level", "start_step", "update_steps"),
    "Frequency": ("n_frequencies",),
    "ProgressiveBandFrequency": ("n_frequencies", "n_masking_step"),
    "SphericalHarmonics": ("degree",),
    "Identity": ("scale", "offset"),
}
_COMMON_KEYS = ("otype", "include_xyz")


def config_to_dict(config: Any) -> Dict[str, Any]:
    """A plain dict from a dict or an OmegaConf DictConfig (resolved)."""
    if isinstance(config, dict):
        return dict(config)
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a requirement of lift3d
        DictConfig = None
    if DictConfig is not None and isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"expected a dict or DictConfig, got {type(config).__name__}")


def check_config_keys(component: str, config: Mapping[str, Any], valid: Sequence[str]) -> None:
    """Raise ConfigError naming the first unknown key, the component and the valid keys."""
    for key in config:
        if key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key '{key}' for {component}.{hint} Valid keys: {', '.join(sorted(valid))}.")


def check_otype(what: str, otype: Any, valid: Sequence[str]) -> None:
    if otype not in valid:
        close = difflib.get_close_matches(str(otype), list(valid), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown {what} otype {otype!r}.{hint} Valid otypes: {', '.join(sorted(valid))}.")


def validate_encoding_config(config: Any) -> Dict[str, Any]:
    """Check an encoding config's otype and keys without building anything; returns it as a dict."""
    cfg = config_to_dict(config)
    otype = cfg.get("otype")
    check_otype("encoding", otype, list(_VALID_KEYS))
    check_config_keys(f"encoding '{otype}'", cfg, tuple(_VALID_KEYS[otype]) + _COMMON_KEYS)
    return cfg


def get_encoding(n_input_dims: int, config: Any, *, bbox: Optional[torch.Tensor] = None) -> CompositeEncoding:
    """Build an encoding from a tcnn/threestudio config (``otype`` + keys), wrapped in
    ``CompositeEncoding(include_xyz=config.include_xyz, bbox=bbox)``.

    Positions are expected in [0, 1] (or inside ``bbox`` when given); ``SphericalHarmonics`` takes
    unit directions in [-1, 1]. Raises ``ConfigError`` for an unknown otype or key.
    """
    cfg = validate_encoding_config(config)
    otype = cfg["otype"]
    include_xyz = bool(cfg.pop("include_xyz", False))
    cfg.pop("otype")
    encoding: nn.Module
    if otype == "Grid":
        grid_type = cfg.pop("type", "Hash")
        if grid_type != "Hash":
            raise ConfigError(f"encoding 'Grid': type {grid_type!r} is not supported; only 'Hash'.")
        encoding = HashGridEncoding(n_input_dims, **cfg)
    elif otype == "HashGrid":
        encoding = HashGridEncoding(n_input_dims, **cfg)
    elif otype == "ProgressiveBandHashGrid":
        encoding = ProgressiveBandHashGrid(n_input_dims, **cfg)
    elif otype == "Frequency":
        encoding = FrequencyEncoding(n_input_dims, **cfg)
    elif otype == "ProgressiveBandFrequency":
        encoding = ProgressiveBandFrequency(n_input_dims, **cfg)
    elif otype == "SphericalHarmonics":
        encoding = SphericalHarmonicsEncoding(n_input_dims, **cfg)  # directions in [-1, 1]
    else:
        encoding = IdentityEncoding(n_input_dims, **cfg)
    return CompositeEncoding(encoding, include_xyz=include_xyz, bbox=bbox)
