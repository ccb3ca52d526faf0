"""PODIA-3D plugin (docs/methods/podia3d.md; Kim et al., ICCV 2023): domain adaptation of a 3D generator over a
large gap with pose-preserved text-to-image diffusion, and DATID-3D's SDEdit baseline. Registers:

- `podia3d-toy-source-datamodule` and `podia3d-source-render-datamodule` (data.py);
- `podia3d-data-system` (data_system.py): fine-tuning of the pose-preserved model + generation of the
  pose-labelled target set in EG3D's format.

The GAN stages use lift3d's own `gan-system` (lift3d/gan; adaptation: `system.init_from`). The chain
(custom/podia3d/configs/, README "PODIA-3D"): podia3d-source.yaml -> podia3d-data.yaml (or
podia3d-data-sdedit.yaml) -> podia3d-adapt.yaml.
"""
from . import data, data_system  # noqa: F401  (registration)
