#!/usr/bin/env python
"""The GPU check (issue 20): every GPU figure lift3d needs, in one run of under 9 minutes.

    bash benchmarks/gpu_check.sh              # on a machine with one CUDA GPU (H100): the real figures
    bash benchmarks/gpu_check.sh --dry-run    # on CPU: the same steps with tiny models (about a minute)

Steps, in order (each one a subprocess with its own time limit, under one overall budget; a step
that fails or times out is recorded and the next one runs):

  environment     GPU name, driver, torch / Triton / Python versions, the fast-path policy
  triton-tests    pytest tests/test_triton_kernels.py (CUDA tensors, compiled kernels)
  kernels         benchmarks/bench_kernels.py: Triton vs the PyTorch reference, full sizes
  stage <name>    benchmarks/bench_full_size.py, one process for USD's four stages (text-nerf,
                  dmtet-geometry, texture, image-nerf) with full-size random-weight models:
                  it/s, peak GB, time split, x floor
  variant <name>  text-nerf again with bf16 / channels-last / torch.compile(UNet) / fused Adam,
                  reusing the written models; run in that order while the budget allows
  nerf            benchmarks/bench_nerf.py on the GPU at 64² and 128² (reconstruct-nerf s/it)

The results file (markdown, to merge into benchmarks/RESULTS.md) has one summary row per step with
its status (ok / FAIL / timeout / skipped) and figures, then each step's table as printed; the
whole log goes beside it. Where: --out DIR, else $OUT when set (the device tool's return folder),
else benchmarks/gpu_results/. --dry-run swaps in the CPU settings of every step (Triton's
interpreter, tiny models, one or two iterations) so the script itself is tested on any machine
(tests/test_gpu_check_dryrun.py).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

REPO = Path(__file__).resolve().parents[1]
STAGES = ("text-nerf", "dmtet-geometry", "texture", "image-nerf")
# text-nerf variants, most informative first: (row name, bench_full_size flags, GPU seconds it may take)
VARIANTS = (
    ("bf16", ["--dtype", "bf16"], 70),
    ("channels-last", ["--channels-last"], 70),
    ("compile-unet", ["--compile-unet", "default"], 150),
    ("fused-adam", ["--fused-adam"], 60),
)


# dry run: a step's limit (CPU, tiny models: ~10 s each on a quiet 2-core machine, mostly imports;
# generous so that a machine shared by several jobs does not fail the rehearsal)
DRY_LIMIT_S = 300.0


def expected_rows() -> List[str]:
    """Every summary row a complete run writes (the dry-run test checks them all)."""
    return (["environment", "triton-tests", "kernels"] + [f"stage {s}" for s in STAGES]
            + [f"variant {v[0]}" for v in VARIANTS] + ["nerf"])


@dataclass
class Row:
    name: str
    status: str  # ok | FAIL (rc) | timeout | skipped (reason)
    seconds: float
    figures: str = ""
    detail: str = ""  # the step's own table, verbatim


@dataclass
class Check:
    dry_run: bool
    budget_s: float
    out_dir: Path
    scratch: Path  # model folders and the benchmarks' JSON (not results: $OUT returns at most 8 files)
    python: str = sys.executable
    start: float = field(default_factory=time.perf_counter)
    rows: List[Row] = field(default_factory=list)
    log: List[str] = field(default_factory=list)
    header: List[str] = field(default_factory=list)

    def remaining(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def run(self, name: str, argv: List[str], limit_s: float, env: Optional[dict] = None,
            reserve_s: float = 0.0) -> tuple[Optional[subprocess.CompletedProcess], Row]:
        """Runs one step in a subprocess under min(limit_s, what the budget leaves after reserve_s)."""
        allowed = min(limit_s, self.remaining() - reserve_s)
        if allowed < min(20.0, limit_s):
            row = Row(name, "skipped (time budget)", 0.0)
            self.rows.append(row)
            return None, row
        cmd = " ".join(shlex.quote(a) for a in argv)
        print(f"[gpu_check {self.elapsed():5.0f} s] {name}: {cmd} (limit {allowed:.0f} s)", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(argv, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True,
                                  text=True, timeout=allowed)
            status = "ok" if proc.returncode == 0 else f"FAIL (exit {proc.returncode})"
            out = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            proc, status = None, f"timeout ({allowed:.0f} s)"
            out = _text(exc.stdout) + _text(exc.stderr)
        seconds = time.perf_counter() - t0
        self.log.append(f"===== {name} ({status}, {seconds:.0f} s)\n$ {cmd}\n{out}")
        row = Row(name, status, seconds)
        self.rows.append(row)
        print(f"[gpu_check {self.elapsed():5.0f} s] {name}: {status} in {seconds:.0f} s", flush=True)
        self.write()
        return proc, row

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    # ------------------------------------------------------------------ results file
    def paths(self) -> tuple[Path, Path, Path]:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
        kind = "dry-run" if self.dry_run else "gpu"
        base = self.out_dir / f"gpu_check_{stamp}_{kind}"
        return base.with_suffix(".md"), base.with_suffix(".log"), base.with_suffix(".json")

    def write(self) -> Path:
        md, log, js = self.paths()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"## GPU check ({'DRY RUN on CPU, tiny models: the figures mean nothing' if self.dry_run else 'GPU'}), "
                 f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}", ""]
        lines += self.header + ["", f"Command: `bash benchmarks/gpu_check.sh{' --dry-run' if self.dry_run else ''}`; "
                                    f"total {self.elapsed():.0f} s{'' if self.dry_run else f' of a {self.budget_s:.0f} s budget'}.", ""]
        lines += ["| row | status | seconds | figures |", "|---|---|---|---|"]
        lines += [f"| {r.name} | {r.status} | {r.seconds:.0f} | {r.figures} |" for r in self.rows]
        for r in self.rows:
            if r.detail:
                lines += ["", f"### {r.name}", "", "```", r.detail.rstrip(), "```"]
        md.write_text("\n".join(lines) + "\n")
        log.write_text("\n".join(self.log) + "\n")
        js.write_text(json.dumps([r.__dict__ for r in self.rows], indent=1))
        return md


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _after_blank_line(text: str, marker: str) -> str:
    """The table a benchmark prints at its end: from the first line containing ``marker``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if marker in line:
            return "\n".join(lines[i:])
    return ""


# ---------------------------------------------------------------------- steps
def step_environment(check: Check, device: str) -> None:
    t0 = time.perf_counter()
    code = ("import torch, platform; from lift3d.ops.fast_path import describe; "
            "print('python', platform.python_version(), '| torch', torch.__version__, '| cuda', torch.version.cuda); "
            "print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'); "
            "print('fast path:', describe())")
    info = subprocess.run([check.python, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    smi = ""
    if not check.dry_run:
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            smi = f"nvidia-smi: {exc}"
    text = (info.stdout + info.stderr).strip()
    ok = info.returncode == 0 and (check.dry_run or "device: CPU" not in text)
    check.header += [f"- {line}" for line in text.splitlines()] + ([f"- nvidia-smi: {smi}"] if smi else [])
    check.header.append(f"- host: {platform.node()}, {os.cpu_count()} CPUs; requested device {device}")
    check.rows.append(Row("environment", "ok" if ok else "FAIL (no CUDA device seen)", time.perf_counter() - t0,
                          text.splitlines()[1] if len(text.splitlines()) > 1 else text))
    check.write()


def step_triton_tests(check: Check) -> None:
    argv = [check.python, "-m", "pytest", "tests/test_triton_kernels.py", "-q", "-x", "-p", "no:cacheprovider"]
    env = {}
    if check.dry_run:
        # the interpreter runs every program in NumPy: a representative subset keeps it to seconds
        argv += ["-k", "hashgrid_forward or weights"]
        env = {"TRITON_INTERPRET": "1", "LIFT3D_TRITON_ON_CPU": "1"}
    proc, row = check.run("triton-tests", argv, DRY_LIMIT_S if check.dry_run else 150, env)
    if proc is not None:
        tail = [ln for ln in (proc.stdout + proc.stderr).splitlines() if " passed" in ln or " failed" in ln]
        row.figures = tail[-1].strip() if tail else ""
        if proc.returncode == 0 and " passed" not in row.figures:
            row.status = "FAIL (no test passed)"


def step_kernels(check: Check) -> None:
    argv = [check.python, "benchmarks/bench_kernels.py"]
    if check.dry_run:
        argv += ["--smoke", "--device", "cpu", "--only", "hashgrid,composite"]
    proc, row = check.run("kernels", argv, DRY_LIMIT_S if check.dry_run else 90)
    if proc is not None:
        row.detail = _after_blank_line(proc.stdout, "operation")
        hg = [ln for ln in row.detail.splitlines() if ln.startswith("hashgrid fwd+bwd (table) ")]
        if hg:
            row.figures = "hash grid fwd+bwd (table): " + hg[0].split()[-3] + " (target >= 10x)"
        if proc.returncode == 0 and not row.detail:
            row.status = "FAIL (no table printed)"


def _full_size_argv(check: Check, models_dir: Path, extra: List[str], stage: str, json_path: Path) -> List[str]:
    argv = [check.python, "benchmarks/bench_full_size.py", "--stage", stage, "--json", str(json_path),
            "--models-dir", str(models_dir)]
    if check.dry_run:
        argv += ["--tiny", "--device", "cpu", "--iters", "1", "--warmup", "0"]
    else:
        argv += ["--device", "cuda", "--iters", "20", "--warmup", "10"]
    return argv + extra


def _stage_figures(r: dict) -> str:
    if "error" in r:
        return r["error"]
    split = ", ".join(f"{k} {v:.1f}" for k, v in r.get("split_ms", {}).items())
    peak = r.get("peak_gb")
    peak_s = f"{peak:.2f} GB" if isinstance(peak, (int, float)) and peak == peak else "-"
    return (f"{r['it_s']:.2f} it/s, {r['ms_per_it']:.1f} ms/it, peak {peak_s}, split ms [{split}], "
            f"{r['x_floor']:.1f}x floor ({r['floor_ms']:.2f} ms)")


def _add_stage_rows(check: Check, names: List[str], proc, row: Row, json_path: Path) -> None:
    """Replaces the process row by one row per stage, from the benchmark's JSON."""
    check.rows.remove(row)
    results = {}
    if json_path.exists():
        results = {r["stage"]: r for r in json.loads(json_path.read_text())["results"]}
    for name in names:
        label = f"stage {name}" if row.name == "stages" else row.name
        r = results.get(name)
        if r is None:
            check.rows.append(Row(label, row.status if row.status != "ok" else "FAIL (no result)", row.seconds))
        else:
            status = "ok" if "error" not in r else "FAIL (stage error)"
            check.rows.append(Row(label, status, row.seconds / max(1, len(names)), _stage_figures(r)))
    if proc is not None:
        table = _after_blank_line(proc.stdout, "full-size stage benchmark on")
        if table:
            check.rows[-1].detail = table
    check.write()


def step_stages(check: Check, models_dir: Path) -> None:
    js = check.scratch / "full_size_stages.json"
    argv = _full_size_argv(check, models_dir, [], ",".join(STAGES), js)
    # GPU: models written once (~4 GB of fp16 safetensors), then 10 warm-up + 20 timed iterations per stage
    proc, row = check.run("stages", argv, 2 * DRY_LIMIT_S if check.dry_run else 240, reserve_s=0 if check.dry_run else 30)
    _add_stage_rows(check, list(STAGES), proc, row, js)


def step_variants(check: Check, models_dir: Path) -> None:
    for name, flags, gpu_s in VARIANTS:
        flags = list(flags)
        if check.dry_run and name == "compile-unet":
            flags = ["--compile-unet", "off"]  # inductor on a CPU takes minutes: the dry run checks the plumbing
        js = check.scratch / f"full_size_{name}.json"
        argv = _full_size_argv(check, models_dir, flags, "text-nerf", js)
        limit = DRY_LIMIT_S if check.dry_run else gpu_s
        if not check.dry_run and check.remaining() - 45 < gpu_s:  # keep the NeRF row's time
            check.rows.append(Row(f"variant {name}", "skipped (time budget)", 0.0))
            continue
        proc, row = check.run(f"variant {name}", argv, limit, reserve_s=0 if check.dry_run else 40)
        if proc is not None or row.status.startswith("timeout"):
            _add_stage_rows(check, ["text-nerf"], proc, row, js)
            check.rows[-1].name = f"variant {name}"


def step_nerf(check: Check) -> None:
    argv = [check.python, "benchmarks/bench_nerf.py"]
    argv += (["--device", "cpu", "--resolutions", "16", "--warmup", "1", "--iters", "1"] if check.dry_run
             else ["--device", "cuda", "--resolutions", "64", "128", "--warmup", "20", "--iters", "20"])
    proc, row = check.run("nerf", argv, DRY_LIMIT_S if check.dry_run else 90)
    if proc is not None:
        row.detail = _after_blank_line(proc.stdout, "| resolution")
        cells = [ln.split("|")[1:3] for ln in row.detail.splitlines() if "²" in ln]
        row.figures = "; ".join(f"{a.strip()} {b.strip()} s/it" for a, b in cells)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny models, one iteration per step")
    p.add_argument("--out", default=None, help="folder of the results file (default: $OUT, else benchmarks/gpu_results)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole check (default 510 on the GPU; dry run: no overall limit)")
    args = p.parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or REPO / "benchmarks" / "gpu_results")
    scratch = Path(tempfile.mkdtemp(prefix="lift3d-gpu-check-"))
    check = Check(args.dry_run, args.budget or (1e9 if args.dry_run else 500.0), out, scratch)
    check.out_dir.mkdir(parents=True, exist_ok=True)
    models_dir = scratch / "models"
    device = "cpu" if args.dry_run else "cuda"
    steps: List[Callable[[], None]] = [
        lambda: step_environment(check, device),
        lambda: step_triton_tests(check),
        lambda: step_kernels(check),
        lambda: step_stages(check, models_dir),
        lambda: step_variants(check, models_dir),
        lambda: step_nerf(check),
    ]
    for step in steps:
        step()
    md = check.write()
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nresults: {md}\n" + md.read_text())
    missing = [r for r in expected_rows() if r not in {row.name for row in check.rows}]
    if missing:
        print(f"gpu_check: rows missing from the results: {missing}")
        return 1
    return 0 if all(r.status == "ok" for r in check.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
