"""FID and KID of generated vs real images, on Inception features when a package and its weights are
present, on fixed toy features otherwise (docs/distributed.md, "GAN metrics").

- FID (Heusel et al. 2017, arXiv 1706.08500): the Fréchet distance between Gaussians fitted to the
  two feature sets, |μ1 - μ2|² + tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^½).
- KID (Bińkowski et al. 2018, arXiv 1801.01401 §3): the unbiased MMD² with the cubic polynomial
  kernel k(x, y) = (xᵀy / d + 1)³, averaged over random subsets (its std is reported too). Unbiased,
  so it is ~0 (and may be slightly negative) for two samples of one distribution, at any sample size.

Feature extractors (`feature_extractor(kind)`):
- "inception": Inception-v3 pool features (2048-D) from torch-fidelity
  (`torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3`, uint8 NCHW in, resized
  inside) or clean-fid (`cleanfid.inception_torchscript.InceptionV3W` after `cleanfid.resize.build_resizer
  ("clean")`). Weights are never downloaded here: torch-fidelity's file in torch hub's checkpoint folder
  (or `LIFT3D_INCEPTION_WEIGHTS`), clean-fid's `inception-2015-12-05.pt` in `LIFT3D_CLEANFID_DIR` (or /tmp,
  clean-fid's own place). Missing package or weights: `FeaturesUnavailable` with the reason.
- "toy": a fixed, weight-free descriptor of small renders (colour moments, a coarse colour layout, a
  coarse luminance-edge layout), enough to tell toy shapes and colours apart; numbers on it are
  comparable only with each other, never with published FIDs.
- "auto": inception when available, else toy.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.errors import ConfigError

FEATURE_KINDS = ("auto", "inception", "toy")
TORCH_FIDELITY_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file name in torch hub
CLEANFID_WEIGHTS = "inception-2015-12-05.pt"


class FeaturesUnavailable(RuntimeError):
    """Inception features cannot be computed here (package or weights missing): the reason."""


# ---------------------------------------------------------------- feature extractors
def to_uint8_nchw(images: Tensor) -> Tensor:
    """[N,3,H,W] in [-1,1] (the GAN's range) -> uint8 [N,3,H,W]."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8)


@torch.no_grad()
def toy_features(images: Tensor) -> Tensor:
    """[N,3,H,W] in [-1,1] -> [N,102] float64: per-channel mean and std (6), the 4x4 average colour
    layout (48), the 4x4 layout of luminance-gradient magnitude (16) and the 4x4 layout of the
    pixels brighter/darker than the image's median luminance (16 + 16)."""
    x = (images.detach().float().clamp(-1, 1) + 1) / 2  # [N,3,H,W] in [0,1]
    n = x.shape[0]
    moments = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)  # [N,6]
    layout = F.adaptive_avg_pool2d(x, 4).reshape(n, -1)  # [N,48]
    lum = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]  # [N,1,H,W]
    gx = lum[..., :, 1:] - lum[..., :, :-1]
    gy = lum[..., 1:, :] - lum[..., :-1, :]
    grad = (gx[..., :-1, :].square() + gy[..., :, :-1].square()).sqrt()  # [N,1,H-1,W-1]
    edges = F.adaptive_avg_pool2d(grad, 4).reshape(n, -1)  # [N,16]
    median = lum.flatten(1).median(dim=1).values[:, None, None, None]
    bright = F.adaptive_avg_pool2d((lum > median).float(), 4).reshape(n, -1)  # [N,16]
    dark = F.adaptive_avg_pool2d((lum < median).float(), 4).reshape(n, -1)  # [N,16]
    return torch.cat([moments, layout, edges * 4.0, bright, dark], dim=1).double()


def _torch_fidelity_extractor(device: torch.device) -> Callable[[Tensor], Tensor]:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as exc:
        raise FeaturesUnavailable(f"torch-fidelity is not installed ({exc})") from None
    weights = os.environ.get("LIFT3D_INCEPTION_WEIGHTS") or str(
        Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_WEIGHTS)
    if not Path(weights).is_file():
        raise FeaturesUnavailable(f"torch-fidelity's Inception weights are not at {weights} (set "
                                  f"LIFT3D_INCEPTION_WEIGHTS to the .pth file)")
    model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)
    model = model.to(device).eval()

    @torch.no_grad()
    def extract(images: Tensor) -> Tensor:
        (features,) = model(to_uint8_nchw(images).to(device))  # one entry per features_list item
        return features.double().cpu()

    return extract


def _cleanfid_extractor(device: torch.device) -> Callable[[Tensor], Tensor]:
    try:
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer
    except ImportError as exc:
        raise FeaturesUnavailable(f"clean-fid is not installed ({exc})") from None
    folder = os.environ.get("LIFT3D_CLEANFID_DIR", "/tmp")
    if not (Path(folder) / CLEANFID_WEIGHTS).is_file():
        raise FeaturesUnavailable(f"clean-fid's {CLEANFID_WEIGHTS} is not in {folder} (set LIFT3D_CLEANFID_DIR)")
    model = InceptionV3W(folder, download=False, resize_inside=False).to(device).eval()
    resize = build_resizer("clean")  # uint8 HWC -> float32 [299,299,3] in [0,255]

    @torch.no_grad()
    def extract(images: Tensor) -> Tensor:
        hwc = to_uint8_nchw(images).permute(0, 2, 3, 1).cpu().numpy()
        batch = torch.from_numpy(np.stack([resize(im) for im in hwc])).permute(0, 3, 1, 2)  # [N,3,299,299]
        return model(batch.to(device)).double().cpu()

    return extract


def inception_extractor(device: torch.device | str = "cpu") -> Tuple[str, Callable[[Tensor], Tensor]]:
    """('inception (torch-fidelity)' | 'inception (clean-fid)', extractor), or FeaturesUnavailable
    naming why neither works."""
    reasons = []
    for name, build in (("torch-fidelity", _torch_fidelity_extractor), ("clean-fid", _cleanfid_extractor)):
        try:
            return f"inception ({name})", build(torch.device(device))
        except FeaturesUnavailable as exc:
            reasons.append(str(exc))
    raise FeaturesUnavailable("; ".join(reasons))


def feature_extractor(kind: str, device: torch.device | str = "cpu") -> Tuple[str, Callable[[Tensor], Tensor]]:
    """(name, images [N,3,H,W] in [-1,1] -> features [N,D] float64) for kind auto | inception | toy."""
    if kind not in FEATURE_KINDS:
        raise ConfigError(f"metric features '{kind}': use one of {', '.join(FEATURE_KINDS)}.")
    if kind == "toy":
        return "toy", toy_features
    try:
        return inception_extractor(device)
    except FeaturesUnavailable as exc:
        if kind == "inception":
            raise ConfigError(f"Inception features were asked for but are unavailable: {exc}. Install "
                              f"torch-fidelity or clean-fid with their weights, or use toy features.") from None
        return "toy", toy_features


# ---------------------------------------------------------------- the two distances
def _sqrtm_psd(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clamped at 0)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(feats1: Tensor, feats2: Tensor) -> float:
    """FID of two feature sets [N1,D], [N2,D] (N >= 2). tr((Σ1 Σ2)^½) is computed as
    tr((Σ1^½ Σ2 Σ1^½)^½), the same number for PSD matrices, with symmetric eigen-decompositions."""
    a, b = feats1.double(), feats2.double()
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("FID needs at least 2 samples per set")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T).reshape(a.shape[1], a.shape[1]), torch.cov(b.T).reshape(b.shape[1], b.shape[1])
    root1 = _sqrtm_psd(s1)
    cross = _sqrtm_psd(root1 @ s2 @ root1)
    return float((mu1 - mu2).square().sum() + torch.trace(s1) + torch.trace(s2) - 2 * torch.trace(cross))


def kernel_inception_distance(feats1: Tensor, feats2: Tensor, subsets: int = 10, subset_size: int = 1000,
                              seed: int = 0) -> Tuple[float, float]:
    """(mean, std) over `subsets` random subsets of the unbiased MMD² with k(x,y) = (xᵀy/d + 1)³."""
    a, b = feats1.double(), feats2.double()
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    d = a.shape[1]
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(a.shape[0], generator=g)[:m]]
        y = b[torch.randperm(b.shape[0], generator=g)[:m]]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        off = m * (m - 1)
        mmd = ((kxx.sum() - kxx.diagonal().sum()) / off + (kyy.sum() - kyy.diagonal().sum()) / off
               - 2 * kxy.mean())
        values.append(float(mmd))
    return float(np.mean(values)), float(np.std(values))


def fid_kid(real: Tensor, fake: Tensor, kind: str = "auto", device: torch.device | str = "cpu",
            extractor: Optional[Tuple[str, Callable[[Tensor], Tensor]]] = None) -> dict:
    """Images [N,3,H,W] in [-1,1] -> {'features': name, 'fid': float, 'kid': float, 'kid_std': float}."""
    name, extract = extractor or feature_extractor(kind, device)
    fr, ff = extract(real), extract(fake)
    kid, kid_std = kernel_inception_distance(fr, ff, subsets=10, subset_size=min(1000, fr.shape[0], ff.shape[0]))
    return {"features": name, "fid": frechet_distance(fr, ff), "kid": kid, "kid_std": kid_std}
