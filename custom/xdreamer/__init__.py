"""X-Dreamer plugin (docs/methods/xdreamer.md): camera-guided LoRA (CG-LoRA) and the
attention-mask alignment (AMA) loss on top of Stable Diffusion score distillation, with a DMTet
geometry stage and a PBR appearance stage.

Registers `xdreamer-guidance` and `xdreamer-vsd-guidance` (vsd_base.py: the appearance stage with VSD's
score in place of SDS, CG-LoRA and AMA kept; docs/methods/prolificdreamer.md §5). The stages use core components: `tetrahedra-sdf-grid`,
`mesh-rasterizer`, `pbr-material`, `pbr-mesh-exporter`, `lift3d-system`. Configs:
custom/xdreamer/configs/xdreamer-geometry.yaml and xdreamer-texture.yaml (README, "X-Dreamer").

Modules: camera_encoder (camera -> f), cg_lora (adapters), attention_capture (attention
processors: adapters + EOS attention maps), ama_loss, guidance.
"""
from .guidance import XDreamerGuidance
from .vsd_base import XDreamerVSDGuidance

__all__ = ["XDreamerGuidance", "XDreamerVSDGuidance"]
