"""Prompt processor base: `__call__() -> prompt_utils` (whatever its guidance consumes)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lift3d.utils.base import BaseObject


class BasePromptProcessor(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        prompt: str = ""

    def __call__(self) -> Any:
        raise NotImplementedError
