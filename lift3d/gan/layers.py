"""StyleGAN2 building blocks (arXiv 1912.04958): equalised-learning-rate layers and the modulated
convolution with weight demodulation.

Parameter names follow StyleGAN2-ADA / EG3D's `networks_stylegan2.py` so that a published
checkpoint maps onto them key for key where the layer exists here: `FullyConnectedLayer.weight/bias`,
`ModulatedConv.affine.*`, `.weight`, `.bias`. Not reproduced: the FIR up/down-sampling filters
(bilinear resampling instead), per-pixel noise inputs (`noise_strength`, `noise_const`) and conv
clamping — a converter must drop or bake those keys.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

LRELU_GAIN = math.sqrt(2.0)  # keeps the activations' second moment through leaky-ReLU (StyleGAN2 `bias_act`)


def lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


class FullyConnectedLayer(nn.Module):
    """y = x · (W · lr_mul / sqrt(fan_in))ᵀ + b · lr_mul, W ~ N(0, 1/lr_mul²): equalised learning
    rate (StyleGAN, ProGAN §4.1); `lr_mul` < 1 slows a layer (StyleGAN2's mapping network uses 0.01)."""

    def __init__(self, in_features: int, out_features: int, activation: bool = False, lr_mul: float = 1.0,
                 bias_init: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)  # [out, in]
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))  # [out]
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:  # x [..., in] -> [..., out]
        y = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return lrelu(y) if self.activation else y


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool = True, eps: float = 1e-8) -> Tensor:
    """StyleGAN2's modulated convolution (arXiv 1912.04958, §2.2, eqs. 1–3).

    x [B, I, H, W]; weight [O, I, k, k]; styles [B, I] -> [B, O, H, W] ('same' padding).
    w'_ijk = s_i · w_ijk (eq. 1); with `demodulate`, w''_ijk = w'_ijk / sqrt(Σ_{i,k} w'_ijk² + ε)
    (eq. 3), so for inputs of unit variance (i.i.d.) every output map has unit variance (eq. 2).
    Implemented as one grouped convolution (one group per sample).
    """
    b, i, h, w = x.shape
    o, _, kh, kw = weight.shape
    wts = weight[None] * styles[:, None, :, None, None]  # [B, O, I, k, k]
    if demodulate:
        wts = wts * torch.rsqrt(wts.square().sum(dim=(2, 3, 4), keepdim=True) + eps)
    out = F.conv2d(x.reshape(1, b * i, h, w), wts.reshape(b * o, i, kh, kw), padding=kh // 2, groups=b)
    return out.reshape(b, o, h, w)


class ModulatedConv(nn.Module):
    """A style-modulated conv layer: style s = affine(w) (bias init 1), modulated conv (optionally
    after 2× bilinear upsampling), bias, leaky-ReLU. `demodulate=False` + `activation=False` is
    StyleGAN2's ToRGB layer (here: the tri-plane output layer `torgb`)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 3, up: bool = False,
                 demodulate: bool = True, activation: bool = True) -> None:
        super().__init__()
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))  # [O,I,k,k]
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.up, self.demodulate, self.activation = up, demodulate, activation
        # ToRGB's equalised-lr gain folded into the style when not demodulating (StyleGAN2 ToRGBLayer)
        self.style_gain = 1.0 if demodulate else 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:  # x [B,I,H,W], w [B,w_dim] -> [B,O,H',W']
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        styles = self.affine(w) * self.style_gain  # [B, I]
        y = modulated_conv2d(x, self.weight, styles, demodulate=self.demodulate) + self.bias[None, :, None, None]
        return lrelu(y) if self.activation else y


class Conv2dLayer(nn.Module):
    """An equalised-learning-rate conv (the discriminator's layers), optional 2× average-pool down."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, down: bool = False,
                 activation: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.down, self.activation = down, activation

    def forward(self, x: Tensor) -> Tensor:  # [B,I,H,W] -> [B,O,H/(1|2),W/(1|2)]
        y = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.weight.shape[-1] // 2)
        if self.down:
            y = F.avg_pool2d(y, 2)
        return lrelu(y) if self.activation else y
