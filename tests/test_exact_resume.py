"""Exact resume (#21): a CPU run killed with SIGKILL at 3 random moments — one of them in the middle
of a checkpoint write — and resumed each time ends with parameters equal, bit for bit, to the
uninterrupted run's; no .tmp file stays in ckpts/; the CSV and TensorBoard logs hold every step once."""
import csv
import os
import random
import signal
import time

import torch

from tests.helpers import only_trial, run_launch, start_launch
import pytest

pytestmark = pytest.mark.slow  # end-to-end: SIGKILL and resume three times (minutes); run with -m slow

CONFIG = "configs/reconstruct-nerf.yaml"
MAX_STEPS = 40
TINY = [
    "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16",
    "data.n_val_views=1", "data.n_test_views=1", "system.renderer.num_samples_per_ray=16",
    "system.geometry.isosurface_resolution=16", "trainer.val_check_interval=1000",
    "trainer.log_every_n_steps=1", "checkpoint.every_n_train_steps=5", "trainer.enable_progress_bar=false",
    f"trainer.max_steps={MAX_STEPS}", "seed=7",
]
SAFETY_S = 900  # generous: only a hung process reaches it


def step_ckpts(root):
    return {int(p.stem.split("step=")[1]) for p in root.glob("reconstruct-nerf/*/ckpts/epoch=*-step=*.ckpt")}


def saved_step(path):
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def start(args, env_extra=None):
    """launch.py in the background, its own process group (forked by tests/launch_server.py)."""
    return start_launch(args, env_extra)


def kill_after_checkpoint(proc, root, beyond, delay_s):
    """SIGKILL `proc` `delay_s` after a step checkpoint beyond step `beyond` appears (a random
    moment of training). Returns the process's exit code (-9 when it was killed while running)."""
    deadline = time.time() + SAFETY_S

    def written():  # Lightning writes the step checkpoint, then last.ckpt: wait for both
        return any(s > beyond for s in step_ckpts(root)) and any(root.glob("reconstruct-nerf/*/ckpts/last.ckpt"))

    while time.time() < deadline and proc.poll() is None and not written():
        time.sleep(0.05)
    time.sleep(delay_s)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=60)


def logged_steps(trial):
    with open(trial / "csv_logs" / "metrics.csv") as fp:
        return [int(r["step"]) for r in csv.DictReader(fp) if r.get("train/loss")]


def tensorboard_steps(trial):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trial / "tb_logs"))
    acc.Reload()
    return [e.step for e in acc.Scalars("train/loss")]


def test_sigkill_three_times_then_resume_equals_uninterrupted(tmp_path):
    rng = random.Random(int(time.time()))
    moments = [rng.uniform(0.0, 1.0), rng.randint(1, 4), rng.uniform(0.0, 0.5)]
    note = f"kill moments: {moments}"

    straight = tmp_path / "straight"
    run_launch(["--config", CONFIG, "--train", f"exp_root_dir={straight}", *TINY], timeout=SAFETY_S)
    expected = torch.load(only_trial(straight, "reconstruct-nerf") / "ckpts" / "last.ckpt", map_location="cpu",
                          weights_only=False)
    assert expected["global_step"] == MAX_STEPS

    root = tmp_path / "killed"
    # 1: a random moment after the first checkpoint
    proc = start(["--config", CONFIG, "--train", f"exp_root_dir={root}", *TINY])
    assert kill_after_checkpoint(proc, root, 0, moments[0]) == -signal.SIGKILL, note
    trial = only_trial(root, "reconstruct-nerf")
    last = trial / "ckpts" / "last.ckpt"
    resume = ["--config", str(trial / "configs" / "parsed.yaml"), "--train", f"resume={last}", *TINY]
    # 2: in the middle of a checkpoint write (the n-th write after resuming: half a .tmp file, then SIGKILL)
    step_before = saved_step(last)
    proc = start(resume, {"LIFT3D_FAULT_INJECT": f"kill-in-checkpoint-write:{moments[1]}"})
    assert proc.wait(timeout=SAFETY_S) == -signal.SIGKILL, note
    assert any(p.name.endswith(".tmp") for p in (trial / "ckpts").iterdir()), "the killed write left no .tmp"
    assert saved_step(last) >= step_before  # last.ckpt is whole: the old one or the new one
    # 3: a random moment after the next checkpoint
    step_before = saved_step(last)
    proc = start(resume)
    assert kill_after_checkpoint(proc, root, step_before, moments[2]) == -signal.SIGKILL, note
    assert saved_step(last) < MAX_STEPS, note
    # resume to the end
    run_launch(resume, timeout=SAFETY_S)

    final = torch.load(last, map_location="cpu", weights_only=False)
    assert final["global_step"] == MAX_STEPS
    assert final["state_dict"].keys() == expected["state_dict"].keys()
    for name, value in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][name], value), f"{name} differs from the uninterrupted run ({note})"
    assert only_trial(root, "reconstruct-nerf") == trial
    assert not [p for p in (trial / "ckpts").iterdir() if p.name.endswith(".tmp")]
    assert logged_steps(trial) == list(range(MAX_STEPS))
    assert sorted(set(tensorboard_steps(trial))) == tensorboard_steps(trial)  # no step twice


def test_stream_state_is_the_first_batch_not_trained_on():
    """Lightning draws batch k+1 before step k; the saved state must redraw batch k+1 after k steps."""
    from lift3d.data.random_camera import RandomCameraDataModule

    cfg = {"height": 8, "width": 8, "eval_height": 8, "eval_width": 8, "seed": 3}
    a = RandomCameraDataModule(cfg)
    stream = iter(a.train_dataset)
    batches = [next(stream)]  # the prefetch
    for _ in range(3):  # three training steps, each taking a batch while the next one is drawn
        batches.append(next(stream))
        a.train_dataset.consumed()
    state = a.state_dict()
    b = RandomCameraDataModule(cfg)
    b.load_state_dict(state)
    assert torch.equal(next(iter(b.train_dataset))["c2w"], batches[3]["c2w"])  # batch 3, not batch 4
    assert not torch.equal(batches[3]["c2w"], batches[2]["c2w"])
