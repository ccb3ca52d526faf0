"""`dummy-prompt-processor` (alias `zero123-prompt-processor`): for guidances that need no text
(reference-mesh, image-only)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lift3d.prompt.base import BasePromptProcessor
from lift3d.registry import register


@register("dummy-prompt-processor")
class DummyPromptProcessor(BasePromptProcessor):
    @dataclass
    class Config(BasePromptProcessor.Config):
        # threestudio's image-only configs give their prompt processor an (empty) model path: accepted, unused
        pretrained_model_name_or_path: str = ""

    def __call__(self) -> Any:
        return None


@register("zero123-prompt-processor")
class Zero123PromptProcessor(DummyPromptProcessor):
    """threestudio's zero123.yaml name for the same thing: Zero-1-to-3 is conditioned on the image, not text."""
