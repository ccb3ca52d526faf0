"""The GPU check's rehearsal (issue 20): `bash benchmarks/gpu_check.sh --dry-run` runs every step of the
GPU check on the CPU with tiny models and writes a results file with every expected row, each ok.

So the script that a lent GPU runs first (benchmarks/gpu_check.sh) cannot rot between GPU sessions.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402

pytestmark = pytest.mark.slow  # end-to-end rehearsal of benchmarks/gpu_check.sh (minutes); run with -m slow

pytest.importorskip("triton", reason="the dry run's triton-tests and kernels steps run Triton's interpreter")


def _summary(md: str) -> dict[str, list[str]]:
    """Summary table rows of the results file: name -> [status, seconds, figures] (the first table only:
    the steps' own tables follow it)."""
    rows = {}
    lines = md.splitlines()
    start = lines.index("| row | status | seconds | figures |") + 2
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_expected_rows_cover_the_issue() -> None:
    rows = gpu_check.expected_rows()
    for name in ("triton-tests", "kernels", "stage text-nerf", "stage dmtet-geometry", "stage texture",
                 "stage image-nerf", "variant bf16", "variant channels-last", "variant compile-unet", "nerf"):
        assert name in rows
    assert len(rows) == len(set(rows))


def test_summary_parser_reads_a_failed_row() -> None:
    md = ("| row | status | seconds | figures |\n|---|---|---|---|\n| kernels | FAIL (exit 1) | 3 |  |\n\n"
          "```\n| resolution | s/iteration | it/s | peak GPU GiB |\n```\n")
    assert _summary(md) == {"kernels": ["FAIL (exit 1)", "3", ""]}


def test_dry_run_writes_every_row(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    md_files = sorted(tmp_path.glob("gpu_check_*_dry-run.md"))
    summary = [ln for ln in (md_files[0].read_text() if md_files else "").splitlines() if ln.startswith("| ")]
    assert proc.returncode == 0, "\n".join(summary) + "\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(md_files) == 1, sorted(p.name for p in tmp_path.iterdir())
    # results, log and JSON only: the device tool returns at most 8 files from $OUT
    assert {p.suffix for p in tmp_path.iterdir()} == {".md", ".log", ".json"}
    md = md_files[0].read_text()
    assert "DRY RUN" in md
    rows = _summary(md)
    assert list(rows) == gpu_check.expected_rows()
    for name, (status, _, _) in rows.items():
        assert status == "ok", (name, status)
    assert rows["environment"][2] == "device: CPU"
    assert " passed" in rows["triton-tests"][2] and "failed" not in rows["triton-tests"][2]
    assert "hash grid fwd+bwd (table):" in rows["kernels"][2]
    for name in [r for r in rows if r.startswith(("stage ", "variant "))]:
        figures = rows[name][2]
        assert " it/s, " in figures and "x floor" in figures and "split ms [render" in figures, (name, figures)
        assert float(figures.split(" it/s")[0]) > 0
    assert rows["nerf"][2].startswith("16² ") and rows["nerf"][2].endswith(" s/it")
    # every step's table is in the file, the full log beside it
    assert "### kernels" in md and "hashgrid fwd" in md and "### stage image-nerf" in md
    log = md_files[0].with_suffix(".log").read_text()
    assert "===== variant compile-unet (ok" in log and "--compile-unet off" in log
    saved = json.loads(md_files[0].with_suffix(".json").read_text())
    assert [r["name"] for r in saved] == gpu_check.expected_rows()
