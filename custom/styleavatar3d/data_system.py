"""`styleavatar3d-data-system`: StyleAvatar3D's pose-guided data generation (arXiv 2305.19012 data generation;
docs/methods/styleavatar3d.md), run by launch.py with `styleavatar3d-mesh-render-datamodule` (renders of
existing 3D models with their conditions and camera labels). Nothing is trained (trainer.max_steps: 0); the
test pass makes one image per render:

- ControlNet(s) on the render's conditions (`conditions`: depth, normal, edge, landmarks; several = the
  "hybrid" multi-ControlNet, `controlnet_names_or_paths` / `conditioning_scales` in the same order), from
  pure noise, DDIM + CFG (custom/styleavatar3d/controlnet_generation.py), image i seeded by seed + i;
- prompts per image: style, k sampled attributes, view phrase and per-view negative prompt
  (custom/styleavatar3d/view_prompts.py);
- optional pose filter (silhouette IoU of the generated image vs the render, lift3d.gan.generated_set_filters);
- horizontal-flip augmentation: each kept image also written flipped with its mirrored label
  (custom/styleavatar3d/flip_augmentation.py).

Written in EG3D's format to `<trial>/save/dataset/` (the GAN stage's data.dataroot), every image with the
camera label of its render; `dataset_scores.json` (prompt, negative prompt, yaw, pitch, pose IoU per image)
and a sheet `renders-conditions-generated.png` (rows: renders, first condition, generated, flipped).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch

from lift3d.config import parse_structured
from lift3d.errors import ConfigError
from lift3d.gan.generated_set_filters import pose_scores
from lift3d.gan.source_renders import write_eg3d_dataset
from lift3d.registry import register
from lift3d.utils.base import Updateable
from lift3d.utils.saving import TrialSaveDir, image_row, save_image

from .controlnet_generation import generate_controlled
from .flip_augmentation import mirror_labels
from .mesh_conditions import CONDITION_KINDS, condition_image
from .view_prompts import PromptRecipe, image_prompts


def load_character_lora(model: Any, folder: str) -> None:
    """Loads a DreamBooth-LoRA (diffusers format, custom/usd/view_distillation/dreambooth_lora.py) into model.unet."""
    from custom.usd.view_distillation.dreambooth_lora import load_lora

    load_lora(model.unet, Path(folder))


@register("styleavatar3d-data-system")
class StyleAvatar3DDataSystem(TrialSaveDir, pl.LightningModule, Updateable):
    @dataclass
    class Config:
        # real models by default (SD 1.5 + lllyasviel's v1.1 ControlNets); the toy configs name load/priors/*
        pretrained_model_name_or_path: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
        conditions: List[str] = field(default_factory=lambda: ["depth"])
        controlnet_names_or_paths: List[str] = field(default_factory=lambda: ["lllyasviel/control_v11f1p_sd15_depth"])
        conditioning_scales: List[float] = field(default_factory=lambda: [1.0])
        style_prompts: List[str] = field(default_factory=lambda: ["a 3D avatar in the style of a Pixar character"])
        attributes: List[str] = field(default_factory=list)
        n_attributes: int = 0
        view_prompts: bool = True
        front_deg: float = 45.0
        back_deg: float = 45.0
        overhead_deg: float = 60.0
        negative_prompt: str = ""
        back_negative_prompt: str = ""  # e.g. "face, eyes, nose, mouth" for heads seen from behind
        side_negative_prompt: str = ""
        num_steps: int = 30
        guidance_scale: float = 7.5
        seed: int = 0  # image i uses seed + i
        flip: bool = True  # also write each image flipped, with the mirrored label
        up: List[float] = field(default_factory=lambda: [0.0, 0.0, 1.0])  # scene frame of the mirror (pose_bins.py)
        front: List[float] = field(default_factory=lambda: [1.0, 0.0, 0.0])
        pose_filter: bool = False
        pose_threshold: float = 0.5
        background: float = 1.0
        # LoRA characters (#18 point 4): a folder with a DreamBooth-LoRA of the image model
        # (pytorch_lora_weights.safetensors, e.g. trained by custom/usd's view distillation, dreambooth_lora.py),
        # loaded into this run's own copy of the UNet; name the character's token in style_prompts
        lora_path: str = ""

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True,
                        exp_root_dir: str = "outputs") -> Any:
        c = parse_structured(cls.Config, cfg, path, "system 'styleavatar3d-data-system'")
        bad = [k for k in c.conditions if k not in CONDITION_KINDS]
        if not c.conditions or bad:
            raise ConfigError(f"{path}.conditions = {list(c.conditions)}: use some of {', '.join(CONDITION_KINDS)}.")
        if len(c.controlnet_names_or_paths) != len(c.conditions) or len(c.conditioning_scales) != len(c.conditions):
            raise ConfigError(f"{path}: give one ControlNet and one conditioning scale per condition "
                              f"({len(c.conditions)} conditions, {len(c.controlnet_names_or_paths)} ControlNets, "
                              f"{len(c.conditioning_scales)} scales).")
        if not c.style_prompts or any(not str(p).strip() for p in c.style_prompts):
            raise ConfigError(f"{path}.style_prompts = {list(c.style_prompts)}: give at least one non-empty prompt.")
        if not 0 <= c.n_attributes <= len(c.attributes):
            raise ConfigError(f"{path}.n_attributes = {c.n_attributes} must lie in [0, {len(c.attributes)}] "
                              f"(the number of {path}.attributes).")
        if c.num_steps < 1 or c.guidance_scale < 0 or not 0 <= c.pose_threshold <= 1:
            raise ConfigError(f"{path}: num_steps >= 1, guidance_scale >= 0 and pose_threshold in [0, 1] are required.")
        cls.model_class(len(c.conditions)).resolve(c.pretrained_model_name_or_path, f"{path}.pretrained_model_name_or_path")
        if c.lora_path and not (Path(c.lora_path) / "pytorch_lora_weights.safetensors").is_file():
            raise ConfigError(f"{path}.lora_path = '{c.lora_path}' holds no pytorch_lora_weights.safetensors: give the "
                              f"folder of a DreamBooth-LoRA of the image model (or leave it empty).")
        return c

    @staticmethod
    def model_class(n_conditions: int):
        from lift3d.models.stable_diffusion_controlnet import StableDiffusionControlNet

        from .multi_controlnet import StableDiffusionMultiControlNet

        return StableDiffusionControlNet if n_conditions == 1 else StableDiffusionMultiControlNet

    def __init__(self, cfg: Any, resumed: bool = False, exp_root_dir: str = "outputs") -> None:
        super().__init__()
        self.cfg = self.validate_config(cfg, "system")
        c = self.cfg
        paths = list(c.controlnet_names_or_paths)
        extra = ({"controlnet_name_or_path": paths[0], "controlnet_what": "system.controlnet_names_or_paths[0]"}
                 if len(paths) == 1 else {"controlnet_names_or_paths": tuple(paths),
                                          "controlnet_what": "system.controlnet_names_or_paths"})
        self.model = self.model_class(len(paths)).load(c.pretrained_model_name_or_path,
                                                       "system.pretrained_model_name_or_path",
                                                       shared=not c.lora_path, **extra)  # a LoRA: an own copy
        if c.lora_path:
            load_character_lora(self.model, c.lora_path)
        self.recipe = PromptRecipe(list(c.style_prompts), list(c.attributes), c.n_attributes, c.view_prompts,
                                   c.front_deg, c.back_deg, c.overhead_deg, c.negative_prompt,
                                   c.back_negative_prompt, c.side_negative_prompt)
        self._generated: list[dict[str, Any]] = []
        self._dummy = torch.nn.Parameter(torch.zeros(1))  # Lightning wants a parameter; nothing is trained

    def embeddings(self, prompts: list[str]) -> torch.Tensor:
        """[N,77,D] text embeddings (each distinct prompt encoded once, cached by lift3d.prompt)."""
        from lift3d.prompt.stable_diffusion import encode_prompts

        distinct = sorted(set(prompts))
        table = encode_prompts(self.cfg.pretrained_model_name_or_path, distinct)
        return table[torch.tensor([distinct.index(p) for p in prompts])]

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([self._dummy], lr=0.0)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Optional[torch.Tensor]:
        raise ConfigError("styleavatar3d-data-system trains nothing: set trainer.max_steps=0 (generation is the test pass).")

    # ------------------------------------------------------------------ generation (test pass)
    def on_test_epoch_start(self) -> None:
        self._generated = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        c = self.cfg
        index = [int(i) for i in batch["index"]]
        prompts, negatives = image_prompts(index, batch["yaw"].cpu(), batch["pitch"].cpu(), self.recipe, c.seed)
        controls = [condition_image(batch, kind).float() for kind in c.conditions]
        images = generate_controlled(self.model, self.embeddings(prompts), self.embeddings(negatives), controls,
                                     list(c.conditioning_scales), [c.seed + i for i in index], c.num_steps,
                                     c.guidance_scale)
        self._generated.append({"index": torch.tensor(index), "image": images.cpu(), "render": batch["image"].cpu(),
                                "control": controls[0].cpu(), "label": batch["label"].cpu(), "mask": batch["mask"].cpu(),
                                "yaw": batch["yaw"].cpu(), "pitch": batch["pitch"].cpu(), "prompt": prompts,
                                "negative": negatives})

    def on_test_epoch_end(self) -> None:
        got = {k: (torch.cat([g[k] for g in self._generated]) if torch.is_tensor(self._generated[0][k])
                   else [p for g in self._generated for p in g[k]]) for k in self._generated[0]}
        summary = self.write_generated_set(got)
        print(f"lift3d: StyleAvatar3D data: {summary['written']} images ({summary['kept']} generated and kept of "
              f"{summary['generated']}, mean pose IoU {summary['mean_pose_iou']:.3f}{', + flips' if self.cfg.flip else ''})"
              f" -> {summary['dataset']}")

    def write_generated_set(self, got: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        pose = pose_scores(got["image"], got["mask"], c.background)  # [N]
        keep = pose >= c.pose_threshold if c.pose_filter else torch.ones(len(pose), dtype=torch.bool)
        if not keep.any():
            raise ConfigError(f"the pose filter kept none of {len(keep)} images: lower system.pose_threshold "
                              f"or set system.pose_filter=false.")
        images, labels = got["image"][keep], got["label"][keep]
        flipped = mirrored = None
        if c.flip:
            flipped, mirrored = images.flip(-1), mirror_labels(labels, c.up, c.front)
            images, labels = torch.cat([images, flipped]), torch.cat([labels, mirrored])
        folder = self.save_path("dataset/dataset.json").parent
        for old in folder.glob("img*.png"):  # a rerun replaces the set
            old.unlink()
        write_eg3d_dataset(folder, images, labels)
        per_image = [{"render_index": int(i), "prompt": p, "negative_prompt": n, "yaw": float(y), "pitch": float(q),
                      "pose_iou": float(s), "kept": bool(k)}
                     for i, p, n, y, q, s, k in zip(got["index"], got["prompt"], got["negative"], got["yaw"],
                                                    got["pitch"], pose, keep)]
        summary = {"generated": len(keep), "kept": int(keep.sum()), "written": int(images.shape[0]),
                   "flip": bool(c.flip), "conditions": list(c.conditions), "mean_pose_iou": float(pose.mean()),
                   "dataset": str(folder)}
        self.save_path("dataset_scores.json").write_text(json.dumps({**summary, "images": per_image}, indent=1))
        k = min(8, len(keep))
        rows = [got["render"][:k], got["control"][:k], got["image"][:k]] + ([got["image"][:k].flip(-1)] if c.flip else [])
        sheet = np.concatenate([image_row([im.permute(1, 2, 0) for im in row]) for row in rows], 0)
        save_image(self.save_path("renders-conditions-generated.png"), sheet)
        for logger in self.loggers:
            if hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image("renders_conditions_generated", sheet, self.global_step, dataformats="HWC")
        return summary

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        return None
