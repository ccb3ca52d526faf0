"""`dummy-exporter`: an exporter that writes nothing (threestudio's name, used by its gradio demo configs
of Latent-NeRF and SJC, whose 4-channel latent fields have no colour a mesh could carry).

`--export` with it succeeds, prints that nothing was exported, and leaves no file behind; use
`system.exporter_type=mesh-exporter` for a mesh.
"""
from __future__ import annotations

from pathlib import Path

from lift3d.export.base import BaseExporter
from lift3d.registry import register


@register("dummy-exporter")
class DummyExporter(BaseExporter):
    def export(self, folder: Path) -> list[Path]:
        print("lift3d: dummy-exporter writes no files (set system.exporter_type=mesh-exporter for a mesh)")
        return []


__all__ = ["DummyExporter"]
