"""Exporter base: writes files that users open (meshes, textures) into a folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lift3d.utils.base import BaseObject


class BaseExporter(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        pass

    def configure(self, geometry, material, background) -> None:
        self.geometry, self.material, self.background = geometry, material, background

    def export(self, folder: Path) -> list[Path]:
        raise NotImplementedError
