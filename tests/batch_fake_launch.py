#!/usr/bin/env python
"""A stand-in for launch.py in the batch runner's scheduling tests (tests/test_batch.py): the same
command line and trial layout, no torch, so a job costs a fraction of a second plus its sleep.

Behaviour from extra key=value arguments: fake_seconds=S (training time), fake_exit=N (exit code of
--train; 2 = a config error), fake_fail_attempts=K (fail the first K --train runs of this trial); <batch>/fake_seconds.txt
replaces fake_seconds.
Every --train run appends {start, end, cuda, resumed, pid, argv} to <trial>/runs.jsonl.
"""
import json
import os
import sys
import time
from pathlib import Path


def main(argv):
    mode = "--train" if "--train" in argv else "--export" if "--export" in argv else None
    kv = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("--"))
    if kv.get("resume"):
        trial = Path(kv["resume"]).parent.parent
    else:
        trial = Path(kv["exp_root_dir"]) / kv["name"] / kv.get("tag", "run")
    if mode == "--export":
        if not (trial / "ckpts/last.ckpt").is_file():
            print("no checkpoint", file=sys.stderr)
            return 1
        out = trial / "save/it4-export"
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.glb").write_bytes(b"glTF fake")
        print(f"exported {out}")
        return 0
    trial.mkdir(parents=True, exist_ok=True)
    runs = trial / "runs.jsonl"
    n_before = len(runs.read_text().splitlines()) if runs.exists() else 0
    record = {"start": time.time(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "resumed": "resume" in kv,
              "pid": os.getpid(), "argv": argv}
    print(f"fake launch: {trial} cuda={record['cuda']}", flush=True)
    seconds = float(kv.get("fake_seconds", 0.2))
    override = trial.parent.parent / "fake_seconds.txt"  # <batch>/fake_seconds.txt: a rerun's shorter sleep
    if override.is_file():
        seconds = float(override.read_text())
    (trial / "configs").mkdir(exist_ok=True)
    (trial / "configs/parsed.yaml").write_text(json.dumps(kv))
    first = min(seconds / 2, 0.5)
    time.sleep(first)
    (trial / "ckpts").mkdir(exist_ok=True)
    (trial / "ckpts/last.ckpt").write_text("step 2")
    time.sleep(seconds - first)
    code = int(kv.get("fake_exit", 0))
    if n_before < int(kv.get("fake_fail_attempts", 0)):
        code = 1
    record["end"] = time.time()
    with open(runs, "a") as fp:
        fp.write(json.dumps(record) + "\n")
    if code:
        print(f"Traceback: fake failure of {trial.parent.parent.name} (exit {code})", file=sys.stderr)
        return code
    (trial / "csv_logs").mkdir(exist_ok=True)
    (trial / "csv_logs/metrics.csv").write_text("step,train/loss,train/loss_sds\n0,1.0,0.5\n4,0.25,0.125\n")
    (trial / "save").mkdir(exist_ok=True)
    (trial / "save/it4-test.mp4").write_bytes(b"fake mp4")
    (trial / "save/it2-test.mp4").write_bytes(b"older")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
