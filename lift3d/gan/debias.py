"""PODIA-3D's text-guided debiasing (docs/methods/podia3d.md §"Step 4"): one target prompt gives near-identical
instances (instance bias), so the target prompt is replaced by a list of subclass prompts (superclass +
attribute, e.g. "a photo of a <breed> dog") and the generated set is their union.

`prompts_per_image(prompts, n)` assigns them by cycling: image i gets prompts[i mod K], so every subclass
gets ⌊n/K⌋ or ⌈n/K⌉ images and the first K images cover all of them (a filter that drops images keeps
the mix close to uniform). `subclass_prompts(template, attributes)` fills a template per attribute.
"""
from __future__ import annotations

from typing import Sequence


def prompts_per_image(prompts: Sequence[str], n: int) -> list[str]:
    """[prompts[i % K] for i in range(n)]; a single prompt (K = 1) is the undebiased baseline."""
    prompts = [str(p) for p in prompts]
    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError(f"debiasing needs a non-empty list of non-empty prompts, got {prompts}")
    return [prompts[i % len(prompts)] for i in range(int(n))]


def subclass_prompts(template: str, attributes: Sequence[str]) -> list[str]:
    """template with '{}' filled by each attribute: ('a {} sphere', ['red', 'blue']) -> ['a red sphere', 'a blue sphere']."""
    if "{}" not in template:
        raise ValueError(f"subclass prompt template '{template}' has no '{{}}' for the attribute")
    return [template.format(a) for a in attributes]


__all__ = ["prompts_per_image", "subclass_prompts"]
