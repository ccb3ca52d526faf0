"""Global appearance code of Control4D's GAN renderer: a MobileNetV3-Small (Howard et al., arXiv 1905.02244
§5, Table 2) whose classifier outputs `code_dims` numbers instead of class logits
(docs/methods/control4d.md §"GAN renderer"). The image is resized to `input_size`² first.

Blocks: a stride-2 3×3 stem (16 channels, hard-swish), inverted residuals (1×1 expand, k×k depthwise,
optional squeeze-excitation with a hard sigmoid, 1×1 project; a skip when shape allows), a 1×1 conv to 576,
global average pooling, a 1×1 conv to 1280 with hard-swish, then a linear layer to the code.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

# (kernel, expansion width, output width, squeeze-excitation, hard-swish, stride): MobileNetV3-Small
SMALL_BLOCKS = (
    (3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
    (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
    (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
    (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1),
)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels, bias=False), nn.Hardsigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, kernel: int, expand: int, cout: int, se: bool, hswish: bool, stride: int) -> None:
        super().__init__()
        act = nn.Hardswish if hswish else nn.ReLU
        self.skip = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, expand, 1, bias=False), nn.BatchNorm2d(expand), act(inplace=True),
            nn.Conv2d(expand, expand, kernel, stride, kernel // 2, groups=expand, bias=False), nn.BatchNorm2d(expand),
            SqueezeExcite(expand) if se else nn.Identity(), act(inplace=True),
            nn.Conv2d(expand, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) if self.skip else self.body(x)


class GlobalEncoder(nn.Module):
    def __init__(self, code_dims: int = 64, input_size: int = 224) -> None:
        super().__init__()
        self.input_size = input_size
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(inplace=True)]
        width = 16
        for kernel, expand, cout, se, hswish, stride in SMALL_BLOCKS:
            layers.append(InvertedResidual(width, kernel, expand, cout, se, hswish, stride))
            width = cout
        layers += [nn.Conv2d(width, 576, 1, bias=False), nn.BatchNorm2d(576), nn.Hardswish(inplace=True),
                   nn.AdaptiveAvgPool2d(1), nn.Conv2d(576, 1280, 1), nn.Hardswish(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(1280, code_dims)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, image: Tensor) -> Tensor:
        """image [B,3,H,W] in [0,1] -> code [B,code_dims]."""
        x = F.interpolate(image, size=(self.input_size, self.input_size), mode="nearest")
        return self.head(self.features(x).flatten(1))


__all__ = ["GlobalEncoder", "SMALL_BLOCKS"]
