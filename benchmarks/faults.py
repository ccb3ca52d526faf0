"""Faults and bad input (#21): every case of the corpus (tests/faults/cases.yaml) and the faults
during a run, each in a real `python launch.py` process; prints a table (case, expected, observed)
and the counts of tracebacks and silent runs (exit 0 where a failure was expected, or a
non-finite last.ckpt after exit 0). Both must be zero.

    python benchmarks/faults.py [--only-corpus | --only-runs] [--out table.md]

CPU only; about a minute per training case on an idle 2-core machine.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.faults.corpus import RUN_CONFIG, TINY_RUN, launch_args, load_cases, make_checkpoints, written_trials  # noqa: E402

CONFIG, TINY = RUN_CONFIG, TINY_RUN
SAFETY_S = 1800


def launch(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=SAFETY_S, env=dict(os.environ, **(env or {})))


def message(output: str) -> str:
    lines = [l for l in output.splitlines() if l.startswith("lift3d:")]
    return lines[0] if lines else (output.strip().splitlines() or [""])[-1]


def finite_last(root: Path) -> bool | None:
    import torch

    lasts = sorted(root.glob("*/*/ckpts/last.ckpt"))
    if not lasts:
        return None
    state = torch.load(lasts[-1], map_location="cpu", weights_only=False)["state_dict"]
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def corpus_rows(tmp: Path) -> list[dict]:
    ckpts = make_checkpoints(tmp / "ckpts")
    rows = []
    for i, case in enumerate(load_cases()):
        root = tmp / f"case{i}"
        proc = launch(launch_args(case, root, ckpts))
        out = proc.stdout + proc.stderr
        msg = message(proc.stderr)
        ok = (proc.returncode == case.get("code", 2) and all(p in msg for p in case["expect"])
              and not written_trials(root, ckpts))
        rows.append({"case": case["id"], "expected": f"exit {case.get('code', 2)}, one line, nothing written",
                     "observed": f"exit {proc.returncode}: {msg[:110]}", "ok": ok,
                     "traceback": "Traceback" in out, "silent": proc.returncode == 0})
    return rows


def _signal_case(tmp: Path, sig: signal.Signals, code: int) -> dict:
    root = tmp / f"sig-{sig.name}"
    proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), "--config", CONFIG, "--train",
                             f"exp_root_dir={root}", "trainer.max_steps=100000", *TINY], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + SAFETY_S
    while time.time() < deadline and proc.poll() is None and not list(root.glob("*/*/ckpts/epoch=*.ckpt")):
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=SAFETY_S)
    return {"case": f"{sig.name} during training", "expected": f"exit {code}, last.ckpt saved, resume command",
            "observed": f"exit {proc.returncode}: {message(err)[:110]}",
            "ok": proc.returncode == code and "Resume with:" in err, "traceback": "Traceback" in err,
            "silent": proc.returncode == 0}


MODEL_CONFIG = "custom/usd/configs/usd-text-to-3D-patch.yaml"


def _model_args(root: Path, model: str) -> list[str]:
    return ["--config", MODEL_CONFIG, "--train", f"exp_root_dir={root}", "system.prompt_processor.prompt=a red car",
            f"system.prompt_processor.cache_dir={root.parent / (root.name + '-prompts')}",
            f"system.prompt_processor.pretrained_model_name_or_path={model}",
            f"system.guidance.pretrained_model_name_or_path={model}", "memory_check=false"]


def model_rows(tmp: Path) -> list[dict]:
    """Broken model downloads (#21): a Hub that stalls mid-download (tests/faults/fake_hub.py on
    127.0.0.1, no network) and a model folder whose UNet weights were cut short."""
    import shutil

    from lift3d.models.tiny_factory import make_tiny_sd
    from tests.faults.fake_hub import FakeHub

    tiny = make_tiny_sd(tmp / "tiny-sd", seed=0)
    rows = []
    root = tmp / "hub-stall"
    with FakeHub(tiny, "tiny-org/tiny-sd", stall_suffix="unet/diffusion_pytorch_model.safetensors") as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp / "hf-cache"), "HF_HUB_DOWNLOAD_TIMEOUT": "2",
               "NO_PROXY": "127.0.0.1", "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "DIFFUSERS_OFFLINE": "0",
               "HF_HUB_DISABLE_XET": "1"}
        proc = launch(_model_args(root, "tiny-org/tiny-sd"), env)
        stalled = hub.stalled_gets
    lines = [l for l in proc.stderr.splitlines() if l.startswith("lift3d:") and "memory estimate" not in l]
    rows.append({"case": "Hub stalls mid-download (UNet weights, HF_HUB_DOWNLOAD_TIMEOUT=2)",
                 "expected": "exit 2, one line naming the stall and the fix, no folder",
                 "observed": f"exit {proc.returncode} ({stalled} stalled GETs): {message(proc.stderr)[:110]}",
                 "ok": proc.returncode == 2 and len(lines) == 1 and "stalled" in lines[0] and stalled >= 2
                 and not root.exists(), "traceback": "Traceback" in proc.stderr, "silent": proc.returncode == 0})
    broken = tmp / "tiny-sd-truncated"
    shutil.copytree(tiny, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    root = tmp / "truncated-weights"
    proc = launch(_model_args(root, str(broken)))
    rows.append({"case": "model folder with truncated UNet weights", "expected": "exit 2, one line naming the file, no folder",
                 "observed": f"exit {proc.returncode}: {message(proc.stderr)[:110]}",
                 "ok": proc.returncode == 2 and str(weights) in proc.stderr and not root.exists(),
                 "traceback": "Traceback" in proc.stderr, "silent": proc.returncode == 0})
    return rows


def run_rows(tmp: Path) -> list[dict]:
    rows = model_rows(tmp)
    # a NaN appearing mid-run
    root = tmp / "nan"
    proc = launch(["--config", CONFIG, "--train", f"exp_root_dir={root}", "trainer.max_steps=20", *TINY],
                  {"LIFT3D_FAULT_INJECT": "nan-loss:7:mesh_rgb"})
    rows.append({"case": "NaN in loss_mesh_rgb at step 7", "expected": "exit 3 naming the term, last.ckpt = step 5",
                 "observed": f"exit {proc.returncode}: {message(proc.stderr)[:110]}",
                 "ok": proc.returncode == 3 and "loss_mesh_rgb" in proc.stderr and finite_last(root) is True,
                 "traceback": "Traceback" in proc.stderr, "silent": proc.returncode == 0})
    # a learning rate that diverges
    root = tmp / "lr"
    proc = launch(["--config", CONFIG, "--train", f"exp_root_dir={root}", "trainer.max_steps=20", *TINY,
                   *[f"system.optimizer.params.geometry.{g}.lr=1e30" for g in ("encoding", "density_network", "feature_network")]])
    finite = finite_last(root)
    rows.append({"case": "every group lr=1e30", "expected": "exit 3 naming what went non-finite, or a finite run",
                 "observed": f"exit {proc.returncode}: {message(proc.stderr)[:110]}",
                 "ok": (proc.returncode == 3) or (proc.returncode == 0 and finite is not False),
                 "traceback": "Traceback" in proc.stderr, "silent": proc.returncode == 0 and finite is False})
    rows.append(_signal_case(tmp, signal.SIGTERM, 143))
    rows.append(_signal_case(tmp, signal.SIGINT, 130))
    # a 300-character non-ASCII prompt as the tag, and two runs with the same trial name at once
    root = tmp / "names"
    tag = "tag=" + "a photo of a très long ananas 🍍, " * 10
    same = ["--config", CONFIG, "--train", f"exp_root_dir={root}", "use_timestamp=false", "trainer.max_steps=2", *TINY]
    procs = [subprocess.Popen([sys.executable, str(REPO / "launch.py"), *same, tag], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = [p.wait(timeout=SAFETY_S) for p in procs]
    errs = "".join(p.stderr.read() for p in procs)
    trials = sorted(p.name for p in (root / "reconstruct-nerf").iterdir()) if (root / "reconstruct-nerf").is_dir() else []
    rows.append({"case": "two runs at once, same 300-char prompt tag", "expected": "exit 0 twice, two bounded folders",
                 "observed": f"exits {codes}; folders {[len(t.encode()) for t in trials]} bytes, {len(trials)} of them",
                 "ok": codes == [0, 0] and len(trials) == 2 and all(len(t.encode()) < 120 for t in trials),
                 "traceback": "Traceback" in errs, "silent": False})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only-corpus", action="store_true")
    parser.add_argument("--only-runs", action="store_true")
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lift3d-faults-") as tmp:
        rows = [] if args.only_runs else corpus_rows(Path(tmp))
        rows += [] if args.only_corpus else run_rows(Path(tmp))
    table = ["| case | expected | observed | ok |", "|---|---|---|---|"]
    for r in rows:
        observed = r["observed"].replace("|", "\\|")
        table.append(f"| {r['case']} | {r['expected']} | {observed} | {'yes' if r['ok'] else 'NO'} |")
    tracebacks = sum(r["traceback"] for r in rows)
    silent = sum(r["silent"] for r in rows)
    bad = sum(not r["ok"] for r in rows)
    table.append("")
    table.append(f"{len(rows)} cases: {tracebacks} tracebacks, {silent} silent runs, {bad} not as expected.")
    text = "\n".join(table)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if tracebacks == silent == bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
