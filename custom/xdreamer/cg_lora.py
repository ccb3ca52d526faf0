"""CG-LoRA: camera-guided low-rank adaptation of the UNet's cross-attention (docs/methods/xdreamer.md §1).

For a frozen linear W0: R^d_in -> R^d_out (a cross-attention to_q / to_k / to_v / to_out):

    y = W0 x + s · (x A) B,   A = reshape(concat(H_text(e), H_cam(f)), d_in × r)   generated per sample,
                              B in R^{r × d_out}                                     learned, zero-initialised

H_text, H_cam: Linear(text_dim -> bottleneck) -> Linear(bottleneck -> d_in·r/2), no bias, Xavier
init (the row-major reshape puts text in the first d_in/2 rows of A, camera in the second).
e is the text encoder's hidden state at the first EOS token of the (direction-aware) prompt,
f = CameraEncoder(camera). With B = 0 the adapted UNet is exactly the frozen one.

All sizes come from the model: d_in / d_out from the wrapped linears, text_dim from the UNet's
`cross_attention_dim` (1024 for SD 2.1: ~1.65 M adapter parameters with r = 4, bottleneck 4),
the camera feature width defaults to text_dim. Parameters are fp32 whatever the UNet's dtype;
the adapter math runs in fp32 and is cast to the UNet's activations' dtype.

`CGLoRA` is an nn.Module holding the camera encoder and one `LowRankAdapter` per wrapped linear.
It never holds the UNet: the UNet calls it through attention processors
(`attention_capture.AdapterAttnProcessor`), so the adapters can be saved in checkpoints and
optimised while the UNet stays frozen and out of the module tree.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn as nn
from torch import Tensor

from .camera_encoder import CameraEncoder

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")


def _generator(in_dim: int, bottleneck: int, out_dim: int) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(in_dim, bottleneck, bias=False), nn.Linear(bottleneck, out_dim, bias=False))
    for layer in net:
        nn.init.xavier_uniform_(layer.weight)
    return net


class LowRankAdapter(nn.Module):
    """s · (x A) B for one frozen linear, with A generated from (e, f) per sample."""

    def __init__(self, d_in: int, d_out: int, text_dim: int, camera_dim: int, rank: int = 4,
                 bottleneck: int = 4, scale: float = 1.0) -> None:
        super().__init__()
        if (d_in * rank) % 2:
            raise ValueError(f"CG-LoRA needs d_in * rank even (half of A from text, half from camera), got {d_in} x {rank}")
        self.d_in, self.d_out, self.rank, self.scale = d_in, d_out, rank, scale
        self.h_text = _generator(text_dim, bottleneck, d_in * rank // 2)
        self.h_cam = _generator(camera_dim, bottleneck, d_in * rank // 2)
        self.B = nn.Parameter(torch.zeros(rank, d_out))

    def generate_a(self, e: Tensor, f: Tensor) -> Tensor:
        """e [N, text_dim], f [N, camera_dim] -> A [N, d_in, r]."""
        a = torch.cat([self.h_text(e.float()), self.h_cam(f.float())], dim=-1)  # [N, d_in*r]
        return a.reshape(-1, self.d_in, self.rank)

    def forward(self, x: Tensor, e: Tensor, f: Tensor) -> Tensor:
        """x [N, L, d_in] -> the low-rank update [N, L, d_out] in x's dtype."""
        a = self.generate_a(e, f)
        if a.shape[0] != x.shape[0]:
            raise ValueError(f"CG-LoRA condition has {a.shape[0]} samples, the UNet batch {x.shape[0]}")
        delta = torch.bmm(x.float(), a) @ self.B  # [N, L, r] @ [r, d_out]
        return (self.scale * delta).to(x.dtype)


def layer_key(name: str) -> str:
    """ModuleDict key of an attention module name ('.' is not allowed in keys)."""
    return name.replace(".", "__")


def cross_attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """{module name: Attention} of every cross-attention (attn2) of the UNet's transformer blocks."""
    return {name: m for name, m in unet.named_modules() if name.endswith("attn2") and hasattr(m, "to_q")}


class CGLoRA(nn.Module):
    """The trainable state of CG-LoRA: the camera encoder and the adapters of every wrapped linear.

    `condition(e, f)` sets the per-sample inputs for the UNet calls made inside the `with` block;
    `delta(layer, projection, x)` is what an attention processor adds to W0 x.
    """

    def __init__(self, layers: dict[str, dict[str, tuple[int, int]]], text_dim: int, camera_dim: Optional[int] = None,
                 camera_hidden_dim: int = 512, rank: int = 4, bottleneck: int = 4, scale: float = 1.0) -> None:
        super().__init__()
        camera_dim = int(camera_dim or text_dim)
        self.text_dim, self.camera_dim = int(text_dim), camera_dim
        self.camera_encoder = CameraEncoder(camera_dim, camera_hidden_dim)
        self.adapters = nn.ModuleDict({
            layer_key(name): nn.ModuleDict({
                proj: LowRankAdapter(d_in, d_out, text_dim, camera_dim, rank, bottleneck, scale)
                for proj, (d_in, d_out) in projections.items()
            })
            for name, projections in layers.items()
        })
        self._e: Optional[Tensor] = None
        self._f: Optional[Tensor] = None

    @classmethod
    def for_unet(cls, unet: nn.Module, **kwargs) -> "CGLoRA":
        """Adapters for every attn2 to_q / to_k / to_v / to_out[0] of `unet`, sized from its layers."""
        layers = {}
        for name, attn in cross_attention_layers(unet).items():
            out = attn.to_out[0]
            layers[name] = {
                "to_q": (attn.to_q.in_features, attn.to_q.out_features),
                "to_k": (attn.to_k.in_features, attn.to_k.out_features),
                "to_v": (attn.to_v.in_features, attn.to_v.out_features),
                "to_out": (out.in_features, out.out_features),
            }
        if not layers:
            raise ValueError("CG-LoRA: the UNet has no cross-attention (attn2) layers to adapt")
        text_dim = int(next(iter(layers.values()))["to_k"][0])
        return cls(layers, text_dim=text_dim, **kwargs)

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        """The generators' and B's parameters (without the camera encoder)."""
        return self.adapters.parameters()

    @contextlib.contextmanager
    def condition(self, e: Tensor, f: Tensor):
        """e [N, text_dim] (EOS embeddings), f [N, camera_dim] (camera features), N = the UNet batch."""
        previous = (self._e, self._f)
        self._e, self._f = e, f
        try:
            yield self
        finally:
            self._e, self._f = previous

    def delta(self, layer: str, projection: str, x: Tensor) -> Optional[Tensor]:
        """The update of `projection` of attention `layer` for input x [N, L, d_in]; None when no
        condition is set (the UNet then runs unadapted)."""
        if self._e is None:
            return None
        return self.adapters[layer_key(layer)][projection](x, self._e, self._f)


__all__ = ["CGLoRA", "LowRankAdapter", "PROJECTIONS", "cross_attention_layers", "layer_key"]
