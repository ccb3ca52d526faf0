"""One run on several processes (#19 point 3, #17 point 5): Lightning DDP on 2 CPU processes (gloo).

- the distributed plan, ranks, per-rank random streams and failure notes (lift3d/utils/distributed.py);
- FID/KID (lift3d/gan/fid_kid.py) and the GAN system's metric logging;
- slow: DDP with 2 processes × batch b makes the same update as 1 process × batch 2b, for the GAN
  (G and D steps, G_ema, ADA's input) and a lift3d NeRF system (tests/ddp_worker.py); launch.py with
  trainer.devices=2 writes one trial folder and, when one rank fails, every rank exits non-zero with
  the error shown once.
Subprocess timeouts are safety nets for a hung run on a loaded machine, never speed requirements.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lift3d.errors import ConfigError
from lift3d.utils import distributed
from tests.helpers import REPO

SAFETY_S = 900
WORKER = REPO / "tests" / "ddp_worker.py"


# ------------------------------------------------------------------ the plan
def test_plan_single_process_is_unchanged():
    args = {"max_steps": 3, "accelerator": "cpu"}
    assert distributed.plan(args, fitting=True) == args


def test_plan_two_cpu_processes_use_ddp_on_gloo():
    from pytorch_lightning.strategies import DDPStrategy

    args = distributed.plan({"accelerator": "cpu", "devices": 2}, fitting=True)
    assert isinstance(args["strategy"], DDPStrategy) and args["devices"] == 2
    assert args["strategy"]._process_group_backend == "gloo"
    assert args["strategy"]._ddp_kwargs["find_unused_parameters"] is True
    lean = distributed.plan({"accelerator": "cpu", "devices": 2, "strategy": "ddp_find_unused_parameters_false"}, True)
    assert lean["strategy"]._ddp_kwargs["find_unused_parameters"] is False
    assert distributed.process_count({"devices": 4, "num_nodes": 2}) == 8
    # evaluation passes run on one device
    assert distributed.plan({"accelerator": "cpu", "devices": 2}, fitting=False)["devices"] == 1


@pytest.mark.parametrize("trainer, message", [
    ({"devices": 2, "strategy": "fsdp"}, "trainer.strategy = 'fsdp' is not supported"),
    ({"devices": 0}, "trainer.devices = 0"),
    ({"devices": "two"}, "trainer.devices = 'two'"),
    ({"devices": 2, "num_nodes": 0}, "trainer.num_nodes = 0"),
])
def test_plan_errors_are_one_clear_line(trainer, message):
    with pytest.raises(ConfigError, match=message) as info:
        distributed.plan(dict(trainer, accelerator="cpu"), fitting=True)
    assert "\n" not in str(info.value)


def test_start_rank_from_each_launcher(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.start_rank(2) == 0  # plain `python launch.py`: rank 0, it starts the others
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.start_rank(2) == 3  # Lightning's child 1 on node 1, 2 devices per node
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    assert distributed.start_rank(2) == 2  # srun
    monkeypatch.setenv("RANK", "5")
    assert distributed.start_rank(2) == 5  # torchrun


# ------------------------------------------------------------------ per-rank random sequences
def test_ranks_draw_different_cameras_rank0_draws_what_one_process_draws():
    from lift3d.data.random_camera import RandomCameraIterableDataset

    def first_batch(rank):
        stream = RandomCameraIterableDataset({"batch_size": 2, "width": 8, "height": 8, "seed": 11})
        distributed.decorrelate_stream(stream, rank)
        return stream.sample()["c2w"]

    alone, rank0, rank1, rank1_again = first_batch(0), first_batch(0), first_batch(1), first_batch(1)
    assert torch.equal(alone, rank0)  # one process = rank 0: unchanged
    assert torch.equal(rank1, rank1_again)  # reproducible
    assert not torch.allclose(rank0, rank1)  # independent views per rank


def test_decorrelate_rng_moves_only_ranks_above_zero():
    torch.manual_seed(5)
    reference = torch.rand(3)
    torch.manual_seed(5)
    distributed.decorrelate_rng(0)
    assert torch.equal(torch.rand(3), reference)
    torch.manual_seed(5)
    distributed.decorrelate_rng(1)
    assert not torch.equal(torch.rand(3), reference)
    assert distributed.rank_seed(b"state", 1) != distributed.rank_seed(b"state", 2)


def test_peer_failure_note_only_for_a_peers_death(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    note = distributed.peer_failure_note(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer"))
    assert note is not None and "another process of this run failed" in note
    assert distributed.peer_failure_note(distributed.PeerFailed("x")) is not None
    assert distributed.peer_failure_note(ValueError("bad value in my own step")) is None
    monkeypatch.delenv("LOCAL_RANK")
    assert distributed.peer_failure_note(RuntimeError("Connection closed by peer")) is None  # one process


# ------------------------------------------------------------------ FID / KID
def test_frechet_distance_matches_the_closed_form():
    import numpy as np
    from scipy import linalg

    from lift3d.gan.fid_kid import frechet_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 5, generator=g, dtype=torch.float64)
    b = torch.randn(300, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64) + 0.7
    mu1, mu2 = a.mean(0).numpy(), b.mean(0).numpy()
    s1, s2 = np.cov(a.numpy().T), np.cov(b.numpy().T)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert abs(frechet_distance(a, a)) < 1e-8


def test_kid_is_zero_for_one_distribution_and_grows_with_the_gap():
    from lift3d.gan.fid_kid import kernel_inception_distance

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    same, _ = kernel_inception_distance(x, y, subsets=5, subset_size=200)
    near, _ = kernel_inception_distance(x, y + 0.3, subsets=5, subset_size=200)
    far, _ = kernel_inception_distance(x, y + 1.0, subsets=5, subset_size=200)
    assert abs(same) < 0.1 * near and 10 * near < far  # (unbiased: ~0 up to noise, may be below 0)


def test_toy_features_tell_colours_and_shapes_apart():
    from lift3d.gan.fid_kid import fid_kid

    g = torch.Generator().manual_seed(2)

    def images(colour, square):
        x = torch.ones(24, 3, 16, 16)  # white background, in [-1, 1]
        for i in range(24):
            lo, hi = 3 + int(torch.randint(0, 3, (1,), generator=g)), 11 + int(torch.randint(0, 3, (1,), generator=g))
            if square:
                x[i, :, lo:hi, lo:hi] = torch.tensor(colour)[:, None, None]
            else:  # a diamond
                yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
                inside = ((yy - (lo + hi) / 2).abs() + (xx - (lo + hi) / 2).abs()) < (hi - lo) / 2
                x[i][:, inside] = torch.tensor(colour)[:, None]
        return x + 0.02 * torch.randn(x.shape, generator=g)

    red, red2 = images([1.0, -1.0, -1.0], True), images([1.0, -1.0, -1.0], True)
    blue, red_diamond = images([-1.0, -1.0, 1.0], True), images([1.0, -1.0, -1.0], False)
    same = fid_kid(red, red2, kind="toy")
    assert same["features"] == "toy"
    for other in (blue, red_diamond):
        scores = fid_kid(red, other, kind="toy")
        assert scores["kid"] > same["kid"] + 1e-3 and scores["fid"] > 2 * same["fid"]


def test_inception_features_when_installed_with_weights():
    from lift3d.gan.fid_kid import FeaturesUnavailable, feature_extractor, inception_extractor

    try:
        name, extract = inception_extractor("cpu")
    except FeaturesUnavailable as exc:
        with pytest.raises(ConfigError, match="Inception features were asked for but are unavailable"):
            feature_extractor("inception")
        assert feature_extractor("auto")[0] == "toy"  # the fallback
        pytest.skip(f"no Inception features here: {exc}")
    features = extract(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert name.startswith("inception") and features.shape == (2, 2048)


def test_gan_system_logs_fid_kid_during_training(tmp_path):
    import pytorch_lightning as pl

    from lift3d.gan.eg3d_datamodule import EG3DImageDataModule
    from lift3d.gan.gan_system import GANSystem
    from tests.ddp_worker import GAN_SYSTEM
    from tools.toyworld.eg3d_dataset import write_toy_eg3d_dataset

    torch.manual_seed(0)
    data = write_toy_eg3d_dataset(tmp_path / "ds", "cube", "red", n_images=6, size=8)
    cfg = dict(GAN_SYSTEM, metrics_every_n_steps=1, metrics_n_images=6, metrics_features="toy")
    system = GANSystem(cfg)
    system.set_save_dir(tmp_path / "save")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(system, datamodule=EG3DImageDataModule({"dataroot": str(data), "batch_size": 2}))
    rows = (tmp_path / "save" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,features,fid,kid,kid_std" and rows[1].startswith("1,toy,")
    logged = trainer.callback_metrics
    assert float(logged["val/fid"]) > 0 and float(logged["val/fid"]) == pytest.approx(float(rows[1].split(",")[2]), rel=1e-4)
    with pytest.raises(ConfigError, match="metrics_features = 'clip'"):
        GANSystem(dict(GAN_SYSTEM, metrics_features="clip"))


# ------------------------------------------------------------------ 2 processes vs 1 (slow: subprocesses)
def _workers(kind: str, tmp_path: Path, runs: list[tuple[int, int]], extra: list[str] = ()) -> list[dict]:
    """Run tests/ddp_worker.py once per (devices, per-rank batch), side by side; their saved states."""
    procs = []
    for devices, batch in runs:
        out = tmp_path / f"{kind}-{devices}x{batch}" / "state.pt"
        out.parent.mkdir(parents=True)
        cmd = [sys.executable, str(WORKER), kind, "--devices", str(devices), "--batch", str(batch), "--out", str(out),
               *extra]
        procs.append((out, subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))))
    states = []
    for out, proc in procs:
        log, _ = proc.communicate(timeout=SAFETY_S)
        assert proc.returncode == 0, log[-3000:]
        states.append(torch.load(out, weights_only=False))
    return states


def _assert_same_update(one: dict, two: dict, rtol: float = 1e-4) -> None:
    assert one["world_size"] == 1 and two["world_size"] == 2
    per_rank = two["grad_per_rank"]  # [2, all gradients]: synchronised
    torch.testing.assert_close(per_rank[0], per_rank[1], rtol=0, atol=0)
    for key in ("grad", "param"):
        assert one[key].keys() == two[key].keys()
        checked = 0
        for name, value in one[key].items():
            if value is None:
                assert two[key][name] is None, name
                continue
            scale = float(value.abs().max()) + 1e-12
            assert float((value - two[key][name]).abs().max()) <= rtol * scale, f"{key} of {name}"
            checked += 1
        assert checked > 0


@pytest.mark.slow
def test_gan_two_processes_make_the_update_of_one_process_on_the_whole_batch(tmp_path):
    from tools.toyworld.eg3d_dataset import write_toy_eg3d_dataset

    torch.manual_seed(0)
    data = write_toy_eg3d_dataset(tmp_path / "ds", "cube", "red", n_images=4, size=8)
    meta = json.loads((data / "dataset.json").read_text())  # one camera for all: the label draws do not matter
    meta["labels"] = [[name, meta["labels"][0][1]] for name, _ in meta["labels"]]
    (data / "dataset.json").write_text(json.dumps(meta))
    one, two = _workers("gan", tmp_path, [(1, 4), (2, 2)], ["--data", str(data)])
    assert sorted(one["indices"].tolist()) == sorted(two["indices"].tolist()) == [0, 1, 2, 3]
    assert sorted(two["indices"][:2].tolist()) != sorted(two["indices"][2:].tolist())  # the ranks' shards differ
    _assert_same_update(one, two)  # G (its G step) and D (its D step, with R1)
    for name, value in one["g_ema"].items():  # EMA over the images of all ranks
        torch.testing.assert_close(value, two["g_ema"][name], rtol=1e-4, atol=1e-6)
    # ADA's controller sees every rank's logits: 4 of them with one mean sign on both ranks
    assert two["ada_input"].shape == (2, 2)
    torch.testing.assert_close(two["ada_input"][0], one["ada_input"][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(two["ada_input"][1], one["ada_input"][0], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_nerf_two_processes_make_the_update_of_one_process_on_the_whole_batch(tmp_path):
    one, two = _workers("nerf", tmp_path, [(1, 4), (2, 2)], ["--total-views", "4"])
    _assert_same_update(one, two)


# ------------------------------------------------------------------ launch.py on 2 processes (slow)
TINY_NERF = [
    "--config", "configs/reconstruct-nerf.yaml", "--train", "trainer.accelerator=cpu", "trainer.devices=2",
    "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16", "data.n_val_views=1",
    "data.n_test_views=2", "system.renderer.num_samples_per_ray=16", "system.geometry.isosurface_resolution=16",
    "trainer.val_check_interval=1000", "checkpoint.every_n_train_steps=5", "trainer.enable_progress_bar=false",
]


def _launch(tmp_path: Path, extra: list[str], fault: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", LIFT3D_FAULT_INJECT=fault)
    return subprocess.run([sys.executable, "launch.py", *TINY_NERF, f"exp_root_dir={tmp_path / 'out'}", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=SAFETY_S, env=env)


def _processes_of(tmp_path: Path) -> list[str]:
    """Command lines of processes still running with this test's folder in them (orphaned ranks)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(tmp_path / "out") in text:
            found.append(text)
    return found


@pytest.mark.slow
def test_launch_on_two_processes_one_trial_folder_sigterm_to_rank0_and_resume(tmp_path):
    """SIGTERM to rank 0 alone stops both ranks at one step with one checkpoint; the resumed 2-process run
    finishes in the same (only) trial folder and rank 0 alone writes the test video."""
    import signal
    import time

    env = dict(os.environ, PYTHONUNBUFFERED="1", LIFT3D_FAULT_INJECT="")
    proc = subprocess.Popen([sys.executable, "launch.py", *TINY_NERF, f"exp_root_dir={tmp_path / 'out'}",
                             "trainer.max_steps=100000"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        deadline = time.time() + SAFETY_S
        while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob("out/*/*/ckpts/epoch=*.ckpt")):
            time.sleep(0.2)
        assert proc.poll() is None, "training ended early"
        proc.send_signal(signal.SIGTERM)  # rank 0 only: Lightning's child does not get it
        out, err = proc.communicate(timeout=SAFETY_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert err.count("lift3d: interrupted by SIGTERM; saved") == 1, err[-3000:]
    trials = list((tmp_path / "out" / "reconstruct-nerf").iterdir())
    assert len(trials) == 1, trials  # rank 1 made no folder of its own
    trial = trials[0]
    step = torch.load(trial / "ckpts" / "last.ckpt", weights_only=False)["global_step"]
    assert step >= 5
    resumed = _launch(tmp_path, [f"resume={trial / 'ckpts' / 'last.ckpt'}", f"trainer.max_steps={step + 2}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list((tmp_path / "out" / "reconstruct-nerf").iterdir()) == [trial]
    assert torch.load(trial / "ckpts" / "last.ckpt", weights_only=False)["global_step"] == step + 2
    assert (trial / "configs" / "parsed.yaml").is_file() and (trial / "save" / f"it{step + 2}-test.mp4").is_file()
    assert (resumed.stdout + resumed.stderr).count("lift3d: done") == 1  # rank 0 reports
    assert _processes_of(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("fault, code, message", [
    ("rank-fault:1:1", None, "lift3d: internal error (rank 1): RuntimeError: injected failure on rank 1 at step 1"),
    ("rank-fault:0:1:config", 2, "lift3d: error (rank 0): injected configuration error on rank 0 at step 1"),
    ("rank-fault:1:1:nan", None, "lift3d: error (rank 1): training diverged at step 1: loss (the weighted sum) is not finite"),
])
def test_a_failing_rank_stops_every_rank_with_its_error_once(tmp_path, fault, code, message):
    proc = _launch(tmp_path, ["trainer.max_steps=4"], fault)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    if code is not None:  # rank 0 failed itself: its own exit code
        assert proc.returncode == code, output[-3000:]
    assert output.count(message) == 1, output[-3000:]
    assert output.count("lift3d: error") + output.count("lift3d: internal error") == 1, output[-3000:]
    assert "Traceback" not in output and "lift3d: done" not in output
    assert len(list((tmp_path / "out" / "reconstruct-nerf").iterdir())) == 1
    assert _processes_of(tmp_path) == []  # no rank left behind


@pytest.mark.slow
def test_a_nonfinite_loss_on_one_rank_is_skipped_by_every_rank(tmp_path):
    """system.nonfinite_skip_steps on 2 processes: rank 1's NaN at step 1 is one step skipped by both ranks
    (Lightning cannot skip a DDP step by returning None: a zero-gradient, learning-rate-0 step instead)."""
    proc = _launch(tmp_path, ["trainer.max_steps=3", "system.nonfinite_skip_steps=1"], "rank-fault:1:1:nan")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 1: loss (the weighted sum) is not finite; step skipped (1 of" in proc.stderr  # rank 1
    assert "step 1: the loss of another rank is not finite; step skipped (1 of" in proc.stderr  # rank 0
    trial = next((tmp_path / "out" / "reconstruct-nerf").iterdir())
    last = torch.load(trial / "ckpts" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3
    assert all(bool(torch.isfinite(v).all()) for v in last["state_dict"].values() if v.is_floating_point())
