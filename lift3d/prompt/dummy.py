"""`dummy-prompt-processor`: for guidances that need no text (reference-mesh, image-only)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lift3d.prompt.base import BasePromptProcessor
from lift3d.registry import register


@register("dummy-prompt-processor")
class DummyPromptProcessor(BasePromptProcessor):
    @dataclass
    class Config(BasePromptProcessor.Config):
        pass

    def __call__(self) -> Any:
        return None
