"""`podia3d-data-system`: PODIA-3D's pose-preserved data generation (docs/methods/podia3d.md), run by launch.py
with `podia3d-source-render-datamodule` (source renders with depth and camera labels).

- fit (`trainer.max_steps` steps): fine-tunes the pose-preserved diffusion model (PPD) on the source
  renders paired with their depth and `finetune_prompt` (lift3d.gan.pose_preserved_model: a trainable copy
  of the ControlNet / the SD-2-depth UNet, `finetune_trainable` name substrings, the rest frozen);
- test pass (launch.py runs it after fit; `--test resume=<trial>/ckpts/last.ckpt` reruns it): one target
  image per source render (lift3d.gan.depth_generation.generate_images), then optional pose / CLIP filters
  (lift3d.gan.generated_set_filters), written in EG3D's format to `<trial>/save/dataset/` (the next stage's
  `data.dataroot`), each image with the camera label of its source render, + `dataset_scores.json` and a
  sheet `sources-vs-generated.png` (row 1 sources, row 2 generated).

method `podia`: depth-conditioned, from noise of `strength` (1.0: pure noise, only depth carries the pose),
specialized-to-general sampling (the PPD for t >= `switch_timestep`, the general model after; 1000 = the
general model only, 0 = the PPD only). method `sdedit` (DATID-3D's baseline): plain SD img2img of each
source render at `strength` (0.7 in DATID-3D), no depth, no fine-tuning (set trainer.max_steps=0).
Text-guided debiasing: `debias_prompts` (a list of subclass prompts) replaces `prompt`, image i gets
debias_prompts[i mod K] (lift3d.gan.debias).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch

from lift3d.config import parse_structured
from lift3d.errors import ConfigError
from lift3d.gan.debias import prompts_per_image
from lift3d.gan.depth_generation import generate_images
from lift3d.gan.generated_set_filters import clip_scores, keep_mask, pose_scores
from lift3d.gan.pose_preserved_model import depth_finetune_loss, specialize
from lift3d.gan.source_renders import write_eg3d_dataset
from lift3d.models.ddim import NUM_TRAIN_TIMESTEPS
from lift3d.registry import register
from lift3d.utils.base import Updateable
from lift3d.utils.saving import TrialSaveDir, image_row, save_image

MODEL_TYPES = ("controlnet", "sd-depth", "sd")
METHODS = ("podia", "sdedit")


@register("podia3d-data-system")
class PODIA3DDataSystem(TrialSaveDir, pl.LightningModule, Updateable):
    @dataclass
    class Config:
        method: str = "podia"  # podia | sdedit (DATID-3D's baseline)
        model_type: str = "controlnet"  # controlnet | sd-depth | sd (sdedit)
        pretrained_model_name_or_path: str = "load/priors/toy-sd"
        controlnet_name_or_path: str = "load/priors/toy-controlnet-depth"
        prompt: str = "a blue cylinder"  # the target domain
        debias_prompts: List[str] = field(default_factory=list)  # subclass prompts replacing `prompt`
        negative_prompt: str = ""
        strength: float = 1.0
        num_steps: int = 50
        guidance_scale: float = 7.5
        switch_timestep: int = 500  # PPD for DDIM steps at t >= this, the general model below
        finetune_prompt: str = "a red cube"  # caption of the source renders while fine-tuning
        finetune_part: Optional[str] = None  # null: controlnet / unet by model_type
        finetune_trainable: List[str] = field(default_factory=list)  # parameter-name substrings; [] = all of the part
        finetune_uncond_prob: float = 0.1  # caption dropped to "" (keeps CFG's unconditional branch trained)
        lr: float = 1e-4
        pose_filter: bool = False
        pose_threshold: float = 0.5  # silhouette IoU vs the source render's mask
        clip_model: str = ""  # a CLIP folder / id: filter by CLIP(image, prompt) >= clip_threshold
        clip_threshold: float = 0.2
        background: float = 1.0  # the renders' background value (foreground = farther than tolerance)
        seed: int = 0  # sample i uses seed + i

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True,
                        exp_root_dir: str = "outputs") -> Any:
        c = parse_structured(cls.Config, cfg, path, "system 'podia3d-data-system'")
        if c.method not in METHODS:
            raise ConfigError(f"{path}.method = '{c.method}': use one of {', '.join(METHODS)}.")
        if c.model_type not in MODEL_TYPES:
            raise ConfigError(f"{path}.model_type = '{c.model_type}': use one of {', '.join(MODEL_TYPES)}.")
        if c.method == "podia" and c.model_type == "sd":
            raise ConfigError(f"{path}.method = podia needs depth: set {path}.model_type to controlnet or sd-depth.")
        if c.method == "sdedit" and c.model_type != "sd":
            raise ConfigError(f"{path}.method = sdedit (DATID-3D) is plain SD img2img: set {path}.model_type=sd.")
        if not 0.0 < c.strength <= 1.0:
            raise ConfigError(f"{path}.strength = {c.strength} must lie in (0, 1] (1: from pure noise).")
        if not 0 <= c.switch_timestep <= NUM_TRAIN_TIMESTEPS:
            raise ConfigError(f"{path}.switch_timestep = {c.switch_timestep} must lie in [0, {NUM_TRAIN_TIMESTEPS}].")
        if c.num_steps < 1 or c.lr < 0 or not 0 <= c.finetune_uncond_prob <= 1:
            raise ConfigError(f"{path}: num_steps >= 1, lr >= 0 and finetune_uncond_prob in [0, 1] are required.")
        if not c.prompt.strip() and not c.debias_prompts:
            raise ConfigError(f"{path}.prompt is empty: give the target domain's prompt (or {path}.debias_prompts).")
        if any(not str(p).strip() for p in c.debias_prompts):
            raise ConfigError(f"{path}.debias_prompts = {list(c.debias_prompts)} has an empty prompt: drop it.")
        if not 0.0 <= c.pose_threshold <= 1.0:
            raise ConfigError(f"{path}.pose_threshold = {c.pose_threshold} must lie in [0, 1].")
        cls.model_class(c.model_type).resolve(c.pretrained_model_name_or_path, f"{path}.pretrained_model_name_or_path")
        return c

    @staticmethod
    def model_class(model_type: str):
        from lift3d.models.stable_diffusion import StableDiffusion
        from lift3d.models.stable_diffusion_controlnet import StableDiffusionControlNet
        from lift3d.models.stable_diffusion_depth import StableDiffusionDepth

        return {"controlnet": StableDiffusionControlNet, "sd-depth": StableDiffusionDepth, "sd": StableDiffusion}[model_type]

    def __init__(self, cfg: Any, resumed: bool = False, exp_root_dir: str = "outputs") -> None:
        super().__init__()
        self.cfg = self.validate_config(cfg, "system")
        extra = {"controlnet_name_or_path": self.cfg.controlnet_name_or_path} if self.cfg.model_type == "controlnet" else {}
        self.general = self.model_class(self.cfg.model_type).load(
            self.cfg.pretrained_model_name_or_path, "system.pretrained_model_name_or_path", **extra)
        self.specialized = None
        if self.cfg.method == "podia":
            self.specialized, self.finetuned = specialize(self.general, self.cfg.finetune_part, self.cfg.finetune_trainable)
        self._generated: list[dict[str, torch.Tensor]] = []

    # ------------------------------------------------------------------ prompts
    def embeddings(self, prompts: list[str]) -> torch.Tensor:
        """[N,77,D] text embeddings of `prompts` (each distinct prompt encoded once)."""
        from lift3d.prompt.stable_diffusion import encode_prompts

        distinct = sorted(set(prompts))
        table = encode_prompts(self.cfg.pretrained_model_name_or_path, distinct)
        return table[torch.tensor([distinct.index(p) for p in prompts])]

    def target_prompts(self, n: int) -> list[str]:
        return prompts_per_image(list(self.cfg.debias_prompts) or [self.cfg.prompt], n)

    # ------------------------------------------------------------------ fine-tuning (fit)
    def configure_optimizers(self) -> Any:
        if self.specialized is None:
            return None
        return torch.optim.Adam([p for p in self.finetuned.parameters() if p.requires_grad], lr=self.cfg.lr)

    def on_fit_start(self) -> None:
        if self.specialized is not None:
            self._caption = self.embeddings([self.cfg.finetune_prompt, ""]).to(self.device)  # [2,77,D]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Optional[torch.Tensor]:
        if self.specialized is None:
            raise ConfigError("method sdedit has nothing to fine-tune: set trainer.max_steps=0.")
        b = batch["image"].shape[0]
        self.specialized.device = self.device
        drop = (torch.rand(b, device=self.device) < self.cfg.finetune_uncond_prob).long()  # 1: empty caption
        loss = depth_finetune_loss(self.specialized, batch["image"], batch["depth"], self._caption[drop])
        self.log("train/loss_ppd", loss.detach(), prog_bar=True, batch_size=b)
        return loss

    # ------------------------------------------------------------------ generation (test pass)
    def on_test_epoch_start(self) -> None:
        self._generated = []
        n = len(self.trainer.datamodule.labels) if getattr(self.trainer, "datamodule", None) is not None else 0
        self._prompts = self.target_prompts(n)
        self._text = self.embeddings(self._prompts)
        self._uncond = self.embeddings([self.cfg.negative_prompt])

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        index = batch["index"].cpu()
        sources = batch["image"].float()  # [B,3,R,R] in [0,1]
        podia = self.cfg.method == "podia"
        images = generate_images(
            self.general, self._text[index], self._uncond, images=sources, depth=batch["depth"] if podia else None,
            strength=self.cfg.strength, num_steps=self.cfg.num_steps, guidance_scale=self.cfg.guidance_scale,
            seeds=[self.cfg.seed + int(i) for i in index], image_size=tuple(sources.shape[-2:]),
            specialized=self.specialized if podia else None, switch_timestep=self.cfg.switch_timestep)
        self._generated.append({"index": index, "image": images.cpu(), "source": sources.cpu(),
                                "label": batch["label"].cpu(), "mask": batch["mask"].cpu()})

    def on_test_epoch_end(self) -> None:
        got = {k: torch.cat([g[k] for g in self._generated]) for k in self._generated[0]}
        result = self.write_generated_set(got)
        print(f"lift3d: PODIA-3D data ({self.cfg.method}): kept {result['kept']} of {result['generated']} images "
              f"(mean pose IoU {result['mean_pose_iou']:.3f}) -> {result['dataset']}")

    def write_generated_set(self, got: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Filters and writes `got` (image/source [N,3,R,R], label [N,25], mask [N,1,r,r], index [N])."""
        prompts = [self._prompts[int(i)] for i in got["index"]]
        pose = pose_scores(got["image"], got["mask"], self.cfg.background)  # [N]
        clip = clip_scores(got["image"], prompts, self.cfg.clip_model) if self.cfg.clip_model else None
        pose_used = pose if self.cfg.pose_filter else None
        keep = (torch.ones(len(pose), dtype=torch.bool) if pose_used is None and clip is None
                else keep_mask(pose_used, self.cfg.pose_threshold, clip, self.cfg.clip_threshold))
        if not keep.any():
            raise ConfigError(f"the filters kept none of {len(keep)} generated images: lower system.pose_threshold / "
                              f"system.clip_threshold or switch the filters off.")
        folder = self.save_path("dataset/dataset.json").parent
        for old in folder.glob("img*.png"):  # a rerun replaces the set
            old.unlink()
        write_eg3d_dataset(folder, got["image"][keep], got["label"][keep])
        scores = [{"source_index": int(i), "prompt": p, "pose_iou": float(s), "kept": bool(k),
                   **({"clip": float(clip[j])} if clip is not None else {})}
                  for j, (i, p, s, k) in enumerate(zip(got["index"], prompts, pose, keep))]
        summary = {"method": self.cfg.method, "generated": len(keep), "kept": int(keep.sum()),
                   "mean_pose_iou": float(pose.mean()), "dataset": str(folder)}
        self.save_path("dataset_scores.json").write_text(json.dumps({**summary, "images": scores}, indent=1))
        k = min(8, len(keep))
        sheet = np.concatenate([image_row([im.permute(1, 2, 0) for im in got[key][:k]]) for key in ("source", "image")], 0)
        save_image(self.save_path("sources-vs-generated.png"), sheet)
        for logger in self.loggers:
            if hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image("sources_vs_generated", sheet, self.global_step, dataformats="HWC")
        return summary

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        return None
