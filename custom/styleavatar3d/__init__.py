"""StyleAvatar3D plugin (docs/methods/styleavatar3d.md; Zhang et al., arXiv 2305.19012): a tri-plane GAN trained
from scratch on multi-view images that a ControlNet paints from renders of existing 3D models. Registers:

- `pose-aware-discriminator` (pose_aware_discriminator.py): the coarse-to-fine pose-aware discriminator, a
  drop-in `system.discriminator_type` of lift3d's gan-system (pose bins: pose_bins.py);
- `styleavatar3d-mesh-render-datamodule` (data.py): renders of existing meshes at yaw/pitch with depth, normal,
  edge and landmark conditions (mesh_conditions.py, landmarks.py);
- `styleavatar3d-data-system` (data_system.py): ControlNet / multi-ControlNet generation (controlnet_generation.py,
  multi_controlnet.py) with style / attribute / view prompts (view_prompts.py), flips, EG3D dataset output;
- `styleavatar3d-w-pairs-datamodule` and `styleavatar3d-prior-system` (prior_system.py): the image-guided W-space
  prior (diffusers' PriorTransformer, image_prior.py) trained on (w, frontal render) pairs of the GAN; --export
  makes the avatar of an input image (turntable video + mesh);

LoRA characters: character_lora.py (`python -m custom.styleavatar3d.character_lora`, lift3d's DreamBooth-LoRA of
custom/usd; stage 1 loads the result with `system.lora_path`). Horizontal flips with mirrored labels:
flip_augmentation.py. Configs: custom/styleavatar3d/configs/,
commands: README "StyleAvatar3D".
"""
from . import data, data_system, pose_aware_discriminator, prior_system  # noqa: F401  (registration)
