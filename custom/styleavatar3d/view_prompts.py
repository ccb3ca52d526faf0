"""StyleAvatar3D's prompts per generated image (arXiv 2305.19012 data generation; docs/methods/styleavatar3d.md):

- a style prompt (image i gets style_prompts[i mod S], so every style sees every pose range);
- k attribute phrases sampled without replacement from a list (seeded per image), appended with commas;
- a view-specific phrase from the render's yaw / pitch, lift3d's view directions (lift3d/prompt/directions.py:
  front |yaw| < front_deg, back |yaw| > 180 - back_deg, overhead pitch > overhead_deg, else side), the same
  suffix the toy prior was trained with ("a red cube, front view");
- a negative prompt per view: the base one plus the parts that must stay invisible from that side
  (`back_negative_prompt`, e.g. "face, eyes, nose" for heads seen from behind; `side_negative_prompt`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from torch import Tensor

from lift3d.prompt.directions import DIRECTION_NAMES, direction_indices, make_directions, view_prompt


@dataclass
class PromptRecipe:
    style_prompts: List[str] = field(default_factory=lambda: ["a red cube"])
    attributes: List[str] = field(default_factory=list)
    n_attributes: int = 0  # k attributes per image
    view_prompts: bool = True
    front_deg: float = 45.0
    back_deg: float = 45.0
    overhead_deg: float = 60.0
    negative_prompt: str = ""
    back_negative_prompt: str = ""
    side_negative_prompt: str = ""


def join(*parts: str) -> str:
    return ", ".join(p.strip() for p in parts if p and p.strip())


def view_names(yaw: Tensor, pitch: Tensor, recipe: PromptRecipe) -> list[str]:
    """[B] -> 'front' / 'side' / 'back' / 'overhead' per view."""
    dirs = make_directions(recipe.front_deg, recipe.back_deg, recipe.overhead_deg)
    return [DIRECTION_NAMES[i] for i in direction_indices(dirs, pitch, yaw).tolist()]


def image_prompts(indices: list[int], yaw: Tensor, pitch: Tensor, recipe: PromptRecipe, seed: int = 0
                  ) -> tuple[list[str], list[str]]:
    """(prompts, negative prompts) of images `indices` with poses yaw / pitch [B] (degrees)."""
    views = view_names(yaw, pitch, recipe)
    prompts, negatives = [], []
    for i, view in zip(indices, views):
        style = recipe.style_prompts[i % len(recipe.style_prompts)]
        attrs: list[str] = []
        if recipe.n_attributes > 0 and recipe.attributes:
            g = torch.Generator().manual_seed(seed * 1_000_003 + int(i))
            picked = torch.randperm(len(recipe.attributes), generator=g)[:recipe.n_attributes]
            attrs = [recipe.attributes[int(j)] for j in picked]
        text = join(style, *attrs)
        prompts.append(view_prompt(text, view) if recipe.view_prompts else text)
        extra = recipe.back_negative_prompt if view == "back" else recipe.side_negative_prompt if view == "side" else ""
        negatives.append(join(recipe.negative_prompt, extra))
    return prompts, negatives
