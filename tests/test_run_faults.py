"""Faults during a run (#21): a non-finite loss stops the run naming the term (exit 3) and keeps the
last good checkpoint as last.ckpt; SIGTERM / SIGINT save a resumable checkpoint, exit 143 / 130 and
say how to resume; a full disk while writing a checkpoint is a one-line error that damages nothing."""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.faults.corpus import RUN_CONFIG, TINY_RUN
from tests.helpers import REPO, only_trial, run_launch

pytestmark = pytest.mark.slow  # end-to-end launch.py runs stopped by faults and signals; run with -m slow

CONFIG, TINY = RUN_CONFIG, TINY_RUN
SAFETY_S = 900  # generous: only a hung process reaches it


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_nan_loss_stops_naming_the_term_and_keeps_the_last_good_checkpoint(tmp_path):
    proc = subprocess.run(
        [sys.executable, "launch.py", "--config", CONFIG, "--train", f"exp_root_dir={tmp_path}",
         "trainer.max_steps=20", *TINY],
        cwd=REPO, capture_output=True, text=True, timeout=SAFETY_S,
        env=dict(os.environ, LIFT3D_FAULT_INJECT="nan-loss:7:mesh_rgb"),
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "training diverged at step 7: loss_mesh_rgb (weight system.loss.lambda_mesh_rgb) is not finite" in proc.stderr
    assert "lift3d: done" not in proc.stdout + proc.stderr
    trial = only_trial(tmp_path, "reconstruct-nerf")
    last = load(trial / "ckpts" / "last.ckpt")
    assert last["global_step"] == 5  # the step-5 checkpoint, not a later (bad) state
    assert all(bool(torch.isfinite(v).all()) for v in last["state_dict"].values() if v.is_floating_point())
    assert sorted(p.name for p in (trial / "ckpts").iterdir()) == ["epoch=0-step=5.ckpt", "last.ckpt"]


def test_nan_loss_skipped_up_to_the_limit(tmp_path):
    proc = subprocess.run(
        [sys.executable, "launch.py", "--config", CONFIG, "--train", f"exp_root_dir={tmp_path}",
         "trainer.max_steps=10", "system.nonfinite_skip_steps=1", *TINY],
        cwd=REPO, capture_output=True, text=True, timeout=SAFETY_S,
        env=dict(os.environ, LIFT3D_FAULT_INJECT="nan-loss:3:mesh_mask"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 3: loss_mesh_mask (weight system.loss.lambda_mesh_mask) is not finite; step skipped" in proc.stderr
    last = load(only_trial(tmp_path, "reconstruct-nerf") / "ckpts" / "last.ckpt")
    assert all(bool(torch.isfinite(v).all()) for v in last["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_exits_nonzero_and_says_how_to_resume(tmp_path, sig, code):
    proc = subprocess.Popen(
        [sys.executable, "launch.py", "--config", CONFIG, "--train", f"exp_root_dir={tmp_path}",
         "trainer.max_steps=100000", *TINY],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        deadline = time.time() + SAFETY_S
        while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob("*/*/ckpts/epoch=*.ckpt")):
            time.sleep(0.1)
        assert proc.poll() is None, "training ended early"
        time.sleep(0.3)  # into unsaved steps
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=SAFETY_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err
    trial = only_trial(tmp_path, "reconstruct-nerf")
    last = trial / "ckpts" / "last.ckpt"
    assert f"interrupted by {sig.name}; saved {last}" in err, err[-1500:]
    assert f"Resume with:\n  python launch.py --config {trial / 'configs' / 'parsed.yaml'} --train resume={last}" in err
    step = load(last)["global_step"]
    periodic = max(int(p.stem.split("step=")[1]) for p in (trial / "ckpts").glob("epoch=*.ckpt"))
    assert step >= periodic >= 5  # saved when it stopped, not an older state
    assert not (trial / "save" / f"it{step}-test.mp4").exists()  # no test pass after an interrupt
    # the resumed run continues from that step to the end
    run_launch(["--config", str(trial / "configs" / "parsed.yaml"), "--train", f"resume={last}",
                f"trainer.max_steps={step + 3}", *TINY, "checkpoint.every_n_train_steps=1"], timeout=SAFETY_S)
    assert load(last)["global_step"] == step + 3


def test_disk_full_while_writing_a_checkpoint_is_a_clear_fault(tmp_path, monkeypatch):
    from lift3d.errors import RunFault
    from lift3d.utils import checkpointing

    target = tmp_path / "last.ckpt"
    checkpointing.AtomicCheckpointIO().save_checkpoint({"global_step": 1}, target)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointing.torch, "save", full)
    with pytest.raises(RunFault) as err:
        checkpointing.AtomicCheckpointIO().save_checkpoint({"global_step": 2}, target)
    assert "disk full while writing checkpoint" in str(err.value) and "previous checkpoint is intact" in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no .tmp left
    assert load(target)["global_step"] == 1
