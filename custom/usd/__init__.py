"""USD plugin (docs/methods/usd.md): unbiased score distillation for image-to-3D (Zero-1-to-3
against Stable Diffusion's unconditional prediction, plus a reference-view delta term) and for
three-stage text-to-3D. Registers:

- guidances `usd-image-guidance` (image_guidance.py) and `usd-text-guidance` (text_guidance.py);
- data module `usd-image-datamodule` (data.py): single-image-datamodule + USD's test turntable;
- systems `usd-system` and `usd-text-system` (systems.py): lift3d-system with USD defaults.

Configs: custom/usd/configs/ (usd-patch.yaml; usd-text-to-3D-{patch,geometry,texture}.yaml;
usd-view-distillation.yaml); commands: custom/usd/README.md. View distillation after an
image-to-3D run (§4: novel views, DreamBooth-LoRA, SDEdit, NeuS) is a command, not a registered
component: `python -m custom.usd.view_distillation run=<trial>` (view_distillation/, not imported here).
"""
from . import data, image_guidance, systems, text_guidance  # noqa: F401  (registration)
from . import aliases  # noqa: F401,E402  (the USD repository's names: usd-random-camera-datamodule, usd-guidance, ...)
