"""Cross-attention processors for X-Dreamer, through diffusers' attention-processor interface
(`UNet2DConditionModel.set_attn_processor`; no patched copies of diffusers files).

`AdapterAttnProcessor` computes exactly what diffusers' `AttnProcessor2_0` computes (the same
operations in the same order, PyTorch's scaled-dot-product attention), plus:
- an optional low-rank update of each projection, y = W0 x + delta(layer, proj, x), for to_q,
  to_k, to_v (on the encoder states) and to_out[0] (CG-LoRA, `cg_lora.CGLoRA.delta`); a None
  update leaves the projection untouched, so with B = 0 the output is bit-identical;
- optional recording (`AttentionMapStore`) of the attention map the AMA loss reads: the softmax
  probabilities of the conditional branch (the first `n_cond` samples of the batch), averaged over
  heads, at each sample's EOS column -> [n_cond, h, w]. The probabilities are recomputed from the
  same query and key, softmax(q kᵀ · scale) in fp32, differentiable; the layer's output still
  comes from the fused attention.

Which layers are recorded: the last transformer's cross-attention of every UNet block that has
attention (`last_cross_attention_per_block`): 7 for SD 2.1 (64, 32, 16, 8, 16, 32, 64 for a 64²
latent), 3 for lift3d's tiny SD.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# delta(layer name, projection name, input [N, L, d_in]) -> update [N, L, d_out] or None
DeltaFn = Callable[[str, str, Tensor], Optional[Tensor]]


def last_cross_attention_per_block(unet: torch.nn.Module) -> list[str]:
    """Names of the attn2 module of the last transformer of each UNet block with attention, in
    forward order (down blocks, mid block, up blocks)."""
    blocks = [(f"down_blocks.{i}", b) for i, b in enumerate(unet.down_blocks)]
    if getattr(unet, "mid_block", None) is not None:
        blocks.append(("mid_block", unet.mid_block))
    blocks += [(f"up_blocks.{i}", b) for i, b in enumerate(unet.up_blocks)]
    names = []
    for prefix, block in blocks:
        attentions = getattr(block, "attentions", None)
        if not attentions:
            continue
        a = len(attentions) - 1
        t = len(attentions[a].transformer_blocks) - 1
        if getattr(attentions[a].transformer_blocks[t], "attn2", None) is not None:
            names.append(f"{prefix}.attentions.{a}.transformer_blocks.{t}.attn2")
    return names


class AttentionMapStore:
    """EOS-column attention maps of the conditional branch, recorded during `record()`."""

    def __init__(self, layers: list[str]) -> None:
        self.layers = list(layers)
        self._wanted = set(layers)
        self.active = False
        self.eos_index: Optional[Tensor] = None
        self.n_cond = 0
        self.maps: dict[str, Tensor] = {}

    @contextlib.contextmanager
    def record(self, eos_index: Tensor, n_cond: Optional[int] = None):
        """Record maps in the UNet calls of the block; eos_index [n_cond] long (EOS column of each
        conditional sample, the first n_cond rows of the UNet batch)."""
        self.active, self.eos_index = True, eos_index.long()
        self.n_cond = int(eos_index.shape[0] if n_cond is None else n_cond)
        self.maps = {}
        try:
            yield self
        finally:
            self.active = False

    def wants(self, layer: str) -> bool:
        return self.active and layer in self._wanted

    def add(self, layer: str, query: Tensor, key: Tensor, scale: float, attention_mask: Optional[Tensor]) -> None:
        """query [N, heads, Lq, d], key [N, heads, Lk, d] (after the head split) -> map [n_cond, h, w]."""
        n = self.n_cond
        scores = (query[:n].float() @ key[:n].float().transpose(-1, -2)) * scale  # [n, heads, Lq, Lk]
        if attention_mask is not None:
            scores = scores + attention_mask[:n].float()
        probs = scores.softmax(dim=-1)
        eos = self.eos_index.to(probs.device).view(n, 1, 1, 1).expand(n, probs.shape[1], probs.shape[2], 1)
        column = probs.gather(-1, eos)[..., 0].mean(dim=1)  # [n, Lq]
        side = math.isqrt(column.shape[-1])
        if side * side != column.shape[-1]:
            raise ValueError(f"attention map of {layer} has {column.shape[-1]} queries: not a square latent")
        self.maps[layer] = column.reshape(n, side, side)

    def ordered_maps(self) -> list[Tensor]:
        """The recorded maps [n_cond, h, w] in forward order."""
        return [self.maps[name] for name in self.layers if name in self.maps]


class AdapterAttnProcessor:
    """`AttnProcessor2_0` with optional low-rank projection updates and attention-map recording.

    A plain object (not an nn.Module), so it adds no weights to the UNet and is never cast by it.
    """

    def __init__(self, layer: str, delta: Optional[DeltaFn] = None, store: Optional[AttentionMapStore] = None) -> None:
        self.layer, self.delta, self.store = layer, delta, store

    def _update(self, y: Tensor, projection: str, x: Tensor) -> Tensor:
        if self.delta is None:
            return y
        d = self.delta(self.layer, projection, x)
        return y if d is None else y + d

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        temb: Optional[Tensor] = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = self._update(attn.to_q(hidden_states), "to_q", hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = self._update(attn.to_k(encoder_hidden_states), "to_k", encoder_hidden_states)
        value = self._update(attn.to_v(encoder_hidden_states), "to_v", encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if self.store is not None and self.store.wants(self.layer):
            self.store.add(self.layer, query, key, attn.scale, attention_mask)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        projected = self._update(attn.to_out[0](hidden_states), "to_out", hidden_states)
        hidden_states = attn.to_out[1](projected)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_processors(unet: torch.nn.Module, layers: list[str], delta: Optional[DeltaFn],
                       store: Optional[AttentionMapStore]) -> None:
    """Give each attention module named in `layers` an `AdapterAttnProcessor`; others keep theirs."""
    processors = dict(unet.attn_processors)
    for name in layers:
        key = f"{name}.processor"
        if key not in processors:
            raise KeyError(f"the UNet has no attention processor '{key}'")
        processors[key] = AdapterAttnProcessor(name, delta, store)
    unet.set_attn_processor(processors)


__all__ = ["AdapterAttnProcessor", "AttentionMapStore", "install_processors", "last_cross_attention_per_block"]
