"""LPIPS perceptual distance (Zhang et al., arXiv 1801.03924 §3, eq. 1) on VGG-16 features, in plain
PyTorch: the `loss_p` of InstructNeRF2NeRF (docs/methods/instructnerf2nerf.md §4), as threestudio's
`LPIPS` computes it.

    d(x, y) = sum_l mean_hw || w_l * (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|) ||^2

f_l: the ReLU outputs relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of VGG-16 on the inputs shifted and
scaled channel-wise (LPIPS's ScalingLayer), normalised over channels; w_l: the learned 1x1 "lin"
weights. Inputs [B,3,H,W] are taken as given (threestudio passes images in [0, 1], not [-1, 1]).

Weights: a folder with
  vgg16.pth  torchvision's VGG-16 state dict (the file torchvision downloads, vgg16-397923af.pth; only
             the `features.*` convolutions are used)
  vgg.pth    LPIPS v0.1's linear heads (`lin0.model.1.weight` ... `lin4.model.1.weight`, [1,C,1,1];
             the file of the `lpips` package, weights/v0.1/vgg.pth, or taming-transformers' vgg.pth)
Channel widths are read from the files, so `tiny_factory.make_tiny_lpips` writes a narrow random
network in the same format, loaded by the same `LPIPS.from_folder`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lift3d.errors import ConfigError

# torchvision vgg16.features: indices of the convolutions, grouped by the ReLU that ends each LPIPS slice
VGG16_CONV_BLOCKS = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
VGG_FILE, LIN_FILE = "vgg16.pth", "vgg.pth"
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """LPIPS-VGG (module docstring); forward(x, y) [B,3,H,W] each -> distance [B,1,1,1]."""

    def __init__(self, features: dict[str, Tensor], lins: dict[str, Tensor]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for block in VGG16_CONV_BLOCKS:
            convs = nn.ModuleList()
            for i in block:
                w, b = features[f"features.{i}.weight"], features[f"features.{i}.bias"]
                conv = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1)
                conv.weight.data.copy_(w)
                conv.bias.data.copy_(b)
                convs.append(conv)
            self.blocks.append(convs)
        self.lins = nn.ParameterList([nn.Parameter(lins[f"lin{k}.model.1.weight"].clone()) for k in range(5)])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_folder(cls, folder: Union[str, Path], key: str = "system.perceptual_model_path") -> "LPIPS":
        folder = Path(folder)
        files = [folder / VGG_FILE, folder / LIN_FILE]
        if not all(f.is_file() for f in files):
            raise ConfigError(f"{key}='{folder}' must hold {VGG_FILE} (torchvision's VGG-16 weights, "
                              f"vgg16-397923af.pth) and {LIN_FILE} (LPIPS v0.1's linear heads); "
                              f"for tests: python -m lift3d.models.tiny_factory --kind lpips --out DIR.")
        try:
            features = torch.load(files[0], map_location="cpu", weights_only=True)
            lins = torch.load(files[1], map_location="cpu", weights_only=True)
            return cls(features, lins)
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise ConfigError(f"{key}='{folder}': cannot read the LPIPS weights ({type(exc).__name__}: {exc}). "
                              f"Download them again.") from None

    def features(self, x: Tensor) -> list[Tensor]:
        """The five channel-normalised ReLU feature maps of (x - shift) / scale."""
        h = (x - self.shift) / self.scale
        out = []
        for k, convs in enumerate(self.blocks):
            if k > 0:
                h = F.max_pool2d(h, 2)
            for conv in convs:
                h = F.relu(conv(h))
            out.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        total = 0.0
        for fx, fy, w in zip(self.features(x), self.features(y), self.lins):
            total = total + F.conv2d((fx - fy) ** 2, w).mean(dim=(2, 3), keepdim=True)  # [B,1,1,1]
        return total


__all__ = ["LPIPS", "LIN_FILE", "VGG16_CONV_BLOCKS", "VGG_FILE"]
