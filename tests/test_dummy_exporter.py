"""dummy-exporter (#16): threestudio's no-op exporter of its gradio configs writes nothing (the --export run
of those configs end to end: tests/test_threestudio_configs.py::test_issue16_configs_verbatim)."""
from __future__ import annotations

from lift3d.compat.missing import MISSING_COMPONENTS
from lift3d.export.base import BaseExporter
from lift3d.registry import find


def test_dummy_exporter_writes_nothing(tmp_path, capsys):
    cls = find("dummy-exporter")
    assert issubclass(cls, BaseExporter) and "dummy-exporter" not in MISSING_COMPONENTS
    folder = tmp_path / "it2-export"
    assert cls({}, geometry=None, material=None, background=None).export(folder) == []
    assert not folder.exists() and list(tmp_path.iterdir()) == []
    assert "writes no files" in capsys.readouterr().out
