"""Split-sum image-based lighting in PyTorch (Karis 2013, "Real Shading in Unreal Engine 4"):
equirectangular environment lookups, GGX-prefiltered environment levels,
cosine-convolved irradiance and the BRDF lookup table, all computed in code (no baked assets
besides the environment image; docs/methods/xdreamer.md §4).

The specular part of the rendering equation under an environment L is approximated by

    ∫ L(l) f_spec(l, v) (n·l) dl  ≈  Lpre(r, ρ) · (F0 · A(n·v, ρ) + B(n·v, ρ))

- `Lpre(r, ρ)`, the environment prefiltered with the GGX lobe of roughness ρ (α = ρ²) under
  Karis' assumption n = v = r:  Lpre(r) = ∫ L(l) D(h) (r·l)+ dl / ∫ D(h) (r·l)+ dl, h = (r + l)/|r + l|.
  It is computed by dense quadrature over the texels of an equirectangular source (weights × texel
  solid angle), at `n_levels` roughness values ρ_k linearly spaced in [ρ_min, 1]; level 0 (ρ_min)
  is the environment itself. A lookup interpolates linearly between the two levels around ρ.
- `A, B`, the BRDF lookup table: the scale and bias of F0 in the directional albedo of the GGX
  microfacet BRDF (Smith-Schlick G with k = α/2, Schlick Fresnel), integrated by GGX importance
  sampling over a Hammersley sequence. Small tables are computed in a fraction of a second and
  cached per process.
- Diffuse: the irradiance E(n)/π = (1/π) ∫ L(l) (n·l)+ dl, by the same dense quadrature.
Environment images are read from Radiance .hdr files by `lift3d.utils.hdr_io.read_hdr`.

Equirectangular convention (world z-up, lift3d's): a direction d = (x, y, z) has polar angle
θ = acos(z) (row: v = θ/π, row 0 = +z, the zenith) and azimuth φ = atan2(y, x) (column: u = φ/2π
mod 1, so u = 0 is +x, the front). Environment images are [H, W, 3] linear radiance, W = 2H.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "dir_to_equirect_uv", "equirect_directions", "equirect_solid_angles",
    "sample_equirect", "resize_equirect", "ggx_d", "prefilter_specular", "irradiance_map",
    "brdf_lut", "lookup_brdf_lut", "srgb_to_linear", "linear_to_srgb", "EnvironmentLight",
]


# ---------------------------------------------------------------------------------- equirectangular maps
def dir_to_equirect_uv(d: Tensor) -> Tensor:
    """Unit directions [..., 3] -> (u, v) [..., 2] in [0, 1]: u = atan2(y, x)/2π mod 1, v = acos(z)/π."""
    u = torch.remainder(torch.atan2(d[..., 1], d[..., 0]) / (2.0 * math.pi), 1.0)
    v = torch.acos(d[..., 2].clamp(-1.0, 1.0)) / math.pi
    return torch.stack([u, v], dim=-1)


def equirect_directions(H: int, W: int, device=None, dtype=torch.float32) -> Tensor:
    """Unit directions of the texel centres of an H × W equirectangular map: [H, W, 3]."""
    v = (torch.arange(H, device=device, dtype=dtype) + 0.5) / H
    u = (torch.arange(W, device=device, dtype=dtype) + 0.5) / W
    theta, phi = torch.meshgrid(v * math.pi, u * 2.0 * math.pi, indexing="ij")
    return torch.stack([theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()], dim=-1)


def equirect_solid_angles(H: int, W: int, device=None, dtype=torch.float32) -> Tensor:
    """Solid angle of each texel [H, W] (exact per row: 2π/W · (cos θ0 − cos θ1)); sums to 4π."""
    edges = torch.arange(H + 1, device=device, dtype=torch.float64) / H * math.pi
    band = (edges[:-1].cos() - edges[1:].cos()) * (2.0 * math.pi / W)
    return band.to(dtype)[:, None].expand(H, W).contiguous()


def sample_equirect(env: Tensor, dirs: Tensor) -> Tensor:
    """Bilinear lookup of env [H, W, C] at directions [..., 3] -> [..., C].

    Wraps in u. Towards a pole the value goes linearly from the nearest row to the pole's value,
    the mean of that row (a ghost row 2·mean − row above/below the map does it), so lookups near
    the poles do not depend on the arbitrary azimuth there.
    """
    H, W, C = env.shape
    uv = dir_to_equirect_uv(F.normalize(dirs.to(env.dtype), dim=-1)).reshape(1, -1, 1, 2)
    top = 2.0 * env[:1].mean(1, keepdim=True) - env[:1]
    bottom = 2.0 * env[-1:].mean(1, keepdim=True) - env[-1:]
    padded = torch.cat([top, env, bottom], dim=0)
    padded = torch.cat([padded[:, -1:], padded, padded[:, :1]], dim=1).permute(2, 0, 1)[None]  # [1,C,H+2,W+2]
    x = (uv[..., 0] * W + 1.0) / (W + 2) * 2.0 - 1.0  # texel centres of the padded image
    y = (uv[..., 1] * H + 1.0) / (H + 2) * 2.0 - 1.0
    out = F.grid_sample(padded, torch.stack([x, y], -1), mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, :, 0].T.reshape(*dirs.shape[:-1], C)


def resize_equirect(env: Tensor, H: int) -> Tensor:
    """Area-average env [h, w, C] to [H, 2H, C] (H <= h), or bilinear when enlarging."""
    x = env.permute(2, 0, 1)[None]
    if H <= env.shape[0]:
        x = F.adaptive_avg_pool2d(x, (H, 2 * H))
    else:
        x = F.interpolate(x, size=(H, 2 * H), mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).contiguous()


# ---------------------------------------------------------------------------------- GGX prefiltering
def ggx_d(cos_h: Tensor, alpha: float | Tensor) -> Tensor:
    """GGX / Trowbridge-Reitz normal distribution D(h) = α² / (π ((n·h)² (α² − 1) + 1)²)."""
    a2 = alpha * alpha
    denom = cos_h.clamp(min=0.0) ** 2 * (a2 - 1.0) + 1.0
    return a2 / (math.pi * denom * denom)


def _convolve(env: Tensor, out_h: int, weight_fn, chunk: int = 1024) -> Tensor:
    """out[i] = Σ_j w(d_i, l_j) ΔΩ_j L_j / Σ_j w(d_i, l_j) ΔΩ_j over the texels j of env [h, w, C]."""
    h, w, C = env.shape
    src = equirect_directions(h, w, env.device, env.dtype).reshape(-1, 3)  # [S,3]
    d_omega = equirect_solid_angles(h, w, env.device, env.dtype).reshape(-1)  # [S]
    radiance = env.reshape(-1, C)
    out_dirs = equirect_directions(out_h, 2 * out_h, env.device, env.dtype).reshape(-1, 3)
    rows = []
    for d in out_dirs.split(chunk):
        wts = weight_fn(d, src) * d_omega  # [n,S]
        rows.append((wts @ radiance) / wts.sum(-1, keepdim=True).clamp_min(1e-20))
    return torch.cat(rows).reshape(out_h, 2 * out_h, C)


def prefilter_specular(env: Tensor, roughness: float, out_h: int, src_h: Optional[int] = None) -> Tensor:
    """The GGX-prefiltered environment (see the module docstring) at `out_h` × 2 out_h for roughness ρ.

    env [H, W, 3] linear; the quadrature runs over env resized to `src_h` (default: max(out_h, 32), at
    most H): the lobes of the levels above ρ_min are wider than those texels.
    """
    src_h = min(env.shape[0], src_h or max(out_h, 32))
    src = resize_equirect(env, src_h)
    alpha = float(roughness) ** 2

    def weight(r: Tensor, l: Tensor) -> Tensor:  # r [n,3], l [S,3] -> [n,S]
        cos_rl = r @ l.T
        cos_h = ((1.0 + cos_rl) * 0.5).clamp_min(0.0).sqrt()  # r·h for h = (r + l)/|r + l|, |r|=|l|=1
        return ggx_d(cos_h, alpha) * cos_rl.clamp_min(0.0)

    return _convolve(src, out_h, weight)


def irradiance_map(env: Tensor, out_h: int = 16, src_h: int = 32) -> Tensor:
    """E(n)/π = (1/π) ∫ L(l) (n·l)+ dl at out_h × 2 out_h texel centres (a constant L gives L)."""
    src = resize_equirect(env, min(env.shape[0], src_h))
    # normalised by Σ (n·l)+ ΔΩ ≈ π, which also cancels the quadrature's discretisation error
    return _convolve(src, out_h, lambda n, l: (n @ l.T).clamp_min(0.0))


# ---------------------------------------------------------------------------------- BRDF lookup table
def _hammersley(n: int, dtype=torch.float64) -> Tensor:
    """[n, 2] Hammersley points (i/n, radical inverse of i in base 2)."""
    i = torch.arange(n, dtype=torch.int64)
    bits = i.clone()
    inv = torch.zeros(n, dtype=dtype)
    scale = 0.5
    for _ in range(max(1, int(math.ceil(math.log2(max(n, 2)))))):
        inv = inv + (bits & 1).to(dtype) * scale
        bits = bits >> 1
        scale *= 0.5
    return torch.stack([i.to(dtype) / n, inv], dim=-1)


def smith_g_schlick_ibl(n_dot_v: Tensor, n_dot_l: Tensor, roughness: Tensor) -> Tensor:
    """Smith's G with the Schlick-GGX approximation for image-based lighting, k = α/2 = ρ²/2."""
    k = roughness * roughness / 2.0
    return (n_dot_v / (n_dot_v * (1 - k) + k)) * (n_dot_l / (n_dot_l * (1 - k) + k))


@functools.lru_cache(maxsize=4)
def _brdf_lut_cached(size: int, samples: int) -> Tensor:
    n_dot_v = (torch.arange(size, dtype=torch.float64) + 0.5) / size  # [S]
    rough = (torch.arange(size, dtype=torch.float64) + 0.5) / size  # [S]
    nv, r = torch.meshgrid(n_dot_v, rough, indexing="ij")  # [S,S]
    xi = _hammersley(samples)  # [M,2]
    alpha = (r * r)[..., None]  # [S,S,1]
    phi = 2.0 * math.pi * xi[:, 0]
    cos_t = torch.sqrt((1.0 - xi[:, 1]) / (1.0 + (alpha * alpha - 1.0) * xi[:, 1]))  # [S,S,M]
    sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp_min(0.0))
    hx, hy, hz = sin_t * phi.cos(), sin_t * phi.sin(), cos_t  # GGX half vectors around n = z
    vx, vz = torch.sqrt(1.0 - nv * nv)[..., None], nv[..., None]  # v in the xz plane
    v_dot_h = vx * hx + vz * hz
    lz = 2.0 * v_dot_h * hz - vz  # l = 2 (v·h) h − v
    valid = lz > 0
    n_dot_l = lz.clamp_min(1e-8)
    g = smith_g_schlick_ibl(vz, n_dot_l, r[..., None])
    g_vis = torch.where(valid, g * v_dot_h.clamp_min(0.0) / (hz * vz), torch.zeros_like(g))
    fc = (1.0 - v_dot_h.clamp(0.0, 1.0)) ** 5
    a = ((1.0 - fc) * g_vis).mean(-1)
    b = (fc * g_vis).mean(-1)
    return torch.stack([a, b], dim=-1).float()  # [S(n·v), S(ρ), 2]


def brdf_lut(size: int = 32, samples: int = 512) -> Tensor:
    """The split-sum BRDF table [size (n·v), size (roughness), 2 (A, B)] at texel centres, float32.

    A(n·v, ρ) = ∫ (1 − Fc) G_vis, B = ∫ Fc G_vis with Fc = (1 − v·h)^5 and G_vis = G (v·h) / ((n·h)(n·v)),
    the GGX importance-sampling estimator of Karis (2013); `samples` Hammersley points per texel.
    """
    return _brdf_lut_cached(int(size), int(samples)).clone()


def lookup_brdf_lut(lut: Tensor, n_dot_v: Tensor, roughness: Tensor) -> Tensor:
    """Bilinear lookup of lut [S, S, 2] at n·v [...], roughness [...] in [0, 1] -> [..., 2] (differentiable)."""
    S = lut.shape[0]
    grid = torch.stack([roughness * 2.0 - 1.0, n_dot_v * 2.0 - 1.0], dim=-1).reshape(1, -1, 1, 2)
    out = F.grid_sample(lut.permute(2, 0, 1)[None].to(grid.dtype), grid, mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out[0, :, :, 0].T.reshape(*n_dot_v.shape, 2)


# ---------------------------------------------------------------------------------- colour
def srgb_to_linear(x: Tensor) -> Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: Tensor) -> Tensor:
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055)


# ---------------------------------------------------------------------------------- the light
class EnvironmentLight(torch.nn.Module):
    """A fixed environment map prepared for split-sum shading.

    Buffers (non-persistent: rebuilt from the HDR file, never stored in checkpoints):
    `specular` [n_levels, H0, 2 H0, 3] (levels upsampled to the base size for one batched lookup
    per level), `irradiance` [h, 2h, 3], `lut` [S, S, 2]; `roughness_levels` [n_levels].
    """

    def __init__(self, env: Tensor, scale: float = 1.0, base_resolution: int = 64, n_levels: int = 6,
                 min_roughness: float = 0.08, irradiance_resolution: int = 16, lut_size: int = 32,
                 lut_samples: int = 512) -> None:
        super().__init__()
        env = env.float() * float(scale)
        base_resolution = min(int(base_resolution), env.shape[0])
        base = resize_equirect(env, base_resolution)
        levels = torch.linspace(float(min_roughness), 1.0, int(n_levels))
        maps = [base]
        for k in range(1, int(n_levels)):
            out_h = max(8, base_resolution >> k)
            level = prefilter_specular(env, float(levels[k]), out_h)
            maps.append(resize_equirect(level, base_resolution) if out_h != base_resolution else level)
        self.register_buffer("specular", torch.stack(maps), persistent=False)
        self.register_buffer("roughness_levels", levels, persistent=False)
        self.register_buffer("irradiance", irradiance_map(env, irradiance_resolution, 2 * irradiance_resolution), persistent=False)
        self.register_buffer("lut", brdf_lut(lut_size, lut_samples), persistent=False)

    def diffuse(self, normal: Tensor) -> Tensor:
        """E(n)/π at unit normals [N, 3] -> [N, 3]."""
        return sample_equirect(self.irradiance, normal)

    def specular_radiance(self, reflected: Tensor, roughness: Tensor) -> Tensor:
        """Prefiltered radiance at reflected directions [N, 3] and roughness [N] (linear between levels)."""
        levels = self.roughness_levels
        n = levels.shape[0]
        pos = ((roughness - levels[0]) / (levels[-1] - levels[0]) * (n - 1)).clamp(0.0, n - 1)  # [N]
        lo = pos.floor().long().clamp(max=n - 2)
        frac = (pos - lo.to(pos.dtype))[:, None]
        values = torch.stack([sample_equirect(self.specular[k], reflected) for k in range(n)], 0)  # [L,N,3]
        idx = torch.arange(reflected.shape[0], device=reflected.device)
        return values[lo, idx] * (1.0 - frac) + values[lo + 1, idx] * frac

    def brdf(self, n_dot_v: Tensor, roughness: Tensor) -> Tensor:
        return lookup_brdf_lut(self.lut, n_dot_v, roughness)
