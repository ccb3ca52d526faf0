"""A run killed with SIGKILL resumes at its saved step, in the same trial folder, and its logged
loss continues (kill -9 during training, then `resume=<trial>/ckpts/last.ckpt`)."""
import csv
import os
import signal
import time

import torch

from tests.helpers import only_trial, run_launch, start_launch

TINY = [
    "data.width=24", "data.height=24", "data.eval_width=24", "data.eval_height=24",
    "data.n_val_views=1", "data.n_test_views=2", "system.renderer.num_samples_per_ray=32",
    "system.geometry.isosurface_resolution=32", "trainer.val_check_interval=1000",
    "trainer.log_every_n_steps=1", "checkpoint.every_n_train_steps=5", "trainer.enable_progress_bar=false",
]


def logged_steps(trial):
    with open(trial / "csv_logs" / "metrics.csv") as fp:
        return [int(r["step"]) for r in csv.DictReader(fp) if r.get("train/loss")]


def test_kill_minus_nine_then_resume(tmp_path):
    args = ["--config", "configs/reconstruct-nerf.yaml", "--train", f"exp_root_dir={tmp_path}",
            "trainer.max_steps=100000", *TINY]
    proc = start_launch(args)  # its own process group, like Popen(start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            ckpts = list(tmp_path.glob("reconstruct-nerf/*/ckpts/epoch=0-step=10.ckpt"))
            if ckpts:
                break
            assert proc.poll() is None, "training exited early"
            time.sleep(0.2)
        assert ckpts, "no checkpoint within the time limit"
        time.sleep(1.0)  # let it run past the checkpoint, into unsaved steps
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    trial = only_trial(tmp_path, "reconstruct-nerf")
    last = trial / "ckpts" / "last.ckpt"
    saved_step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert saved_step >= 10 and saved_step % 5 == 0
    # no half-written checkpoint or temporary file is left behind as a checkpoint
    assert all(p.suffix == ".ckpt" for p in (trial / "ckpts").iterdir() if not p.name.startswith("."))

    final = saved_step + 10
    run_launch(["--config", str(trial / "configs" / "parsed.yaml"), "--train", f"resume={last}",
                f"trainer.max_steps={final}", *TINY])
    # same trial folder, no new one
    assert only_trial(tmp_path, "reconstruct-nerf") == trial
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == final
    steps = logged_steps(trial)
    # the log holds every step once, from 0 to the end: the resumed run continued the counter
    assert steps == list(range(final)), steps
    assert len((trial / "cmd.txt").read_text().strip().splitlines()) == 2
