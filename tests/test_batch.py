"""lift3d.batch (issue #19): manifest checks, markers, progress, and the Ray runner's scheduling —
concurrency, retries, a failing job, stage chains, pretend GPUs, Ctrl-C and rerun — on a local Ray
cluster (2 CPUs, 2 pretend GPUs) with tests/batch_fake_launch.py standing in for launch.py (same
command line and trial layout, no torch). The real launch.py end to end: tests/test_batch_e2e.py."""
from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

from lift3d.batch.layout import JobPaths, final_losses, latest_export, latest_video, write_json_atomic  # noqa: E402
from lift3d.batch.manifest import ManifestError, load_manifest, parse_manifest, prompts_manifest  # noqa: E402
from lift3d.batch.progress import bar, eta_seconds  # noqa: E402
from lift3d.batch.runner import BatchRunner  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAKE = str(REPO / "tests" / "batch_fake_launch.py")
CONFIG = "configs/demo/text-to-3d.yaml"


def manifest(tmp_path, jobs, name="b", **defaults):
    data = {"name": name, "out_dir": str(tmp_path / "out"), "launcher": FAKE,
            "defaults": {"config": CONFIG, "num_gpus": 0, **defaults}, "jobs": jobs}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_manifest(str(path))


def runs(m, job_id):
    path = JobPaths(m.batch_dir, job_id).trial / "runs.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def max_overlap(intervals):
    events = sorted([(s, 1) for s, e in intervals] + [(e, -1) for s, e in intervals])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


# ---------------------------------------------------------------- manifest checks (no Ray)
@pytest.mark.parametrize("data, message", [
    ({"jobs": [{"name": "a", "config": CONFIG, "promt": "x"}]}, "unknown key 'promt'. Did you mean: prompt?"),
    ({"jobs": [{"name": "a", "config": "configs/nope.yaml"}]}, "config 'configs/nope.yaml' does not exist"),
    ({"jobs": [{"name": "a", "config": CONFIG, "overrides": ["--trainer.max_steps=3"]}]}, "is not key=value"),
    ({"jobs": [{"name": "a", "config": CONFIG, "overrides": ["exp_root_dir=/x"]}]}, "set by the batch runner"),
    ({"jobs": [{"name": "a", "config": CONFIG}, {"name": "a", "config": CONFIG}]}, "'a' is used twice"),
    ({"jobs": [{"name": "a b", "config": CONFIG}]}, "name must be letters, digits"),
    ({"jobs": [{"name": "a", "config": CONFIG, "num_gpus": -1}]}, "num_gpus must be a number >= 0 or 'auto'"),
    ({"jobs": [{"name": "a", "config": CONFIG, "export": "fbx"}]}, "export must be one of glb"),
    ({"jobs": [{"name": "a", "config": CONFIG, "stages": [{"name": "s", "config": CONFIG}]}]}, "not both"),
    ({"jobs": [{"name": "a"}]}, "no config"),
    ({"jobs": []}, "jobs must be a non-empty list"),
])
def test_manifest_errors_name_the_problem(tmp_path, data, message):
    with pytest.raises(ManifestError) as err:
        parse_manifest(data, "m.yaml", REPO)
    assert message in str(err.value)
    assert str(err.value).startswith("m.yaml")


def test_manifest_expands_chains_defaults_and_prompts():
    m = parse_manifest({"name": "x", "defaults": {"config": CONFIG, "overrides": ["trainer.max_steps=3"], "seed": 4},
                        "jobs": [{"name": "cube", "prompt": "a red cube", "overrides": ["data.n_val_views=1"]},
                                 {"name": "recon", "stages": [
                                     {"name": "nerf", "config": "configs/reconstruct-nerf.yaml"},
                                     {"name": "dmtet", "config": "configs/reconstruct-dmtet.yaml", "seed": 1}]}]},
                       "m.yaml", REPO, out_dir="/tmp/o")
    assert [j.id for j in m.jobs] == ["cube", "recon.nerf", "recon.dmtet"]
    cube, nerf, dmtet = m.jobs
    assert cube.overrides == ("trainer.max_steps=3", "data.n_val_views=1", "system.prompt_processor.prompt=a red cube")
    assert cube.seed == 4 and cube.export == "glb" and cube.num_gpus == "auto"
    assert nerf.parent is None and dmtet.parent == "recon.nerf"
    assert nerf.export is None and dmtet.export == "glb"  # only the last stage exports
    assert dmtet.seed == 1 and dmtet.config.endswith("configs/reconstruct-dmtet.yaml")
    assert m.batch_dir == Path("/tmp/o/x")
    assert cube.fingerprint() != parse_manifest(
        {"jobs": [{"name": "cube", "config": CONFIG, "prompt": "a red cube", "seed": 5}]}, "m.yaml", REPO
    ).jobs[0].fingerprint()


def test_prompts_shortcut_one_job_per_line(tmp_path):
    f = tmp_path / "toy.txt"
    f.write_text("a red cube\n# a comment\n\na red cube\na blue sphere!\n")
    data = prompts_manifest(str(f), CONFIG, ["trainer.max_steps=5"], seed=3, num_cpus=None)
    m = parse_manifest(data, str(f), tmp_path)
    assert m.name == "toy"
    assert [j.id for j in m.jobs] == ["a_red_cube", "a_red_cube_2", "a_blue_sphere"]
    assert m.jobs[2].prompt == "a blue sphere!" and m.jobs[2].seed == 3
    assert m.jobs[0].overrides[0] == "trainer.max_steps=5"
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ManifestError, match="has no prompts"):
        prompts_manifest(str(tmp_path / "empty.txt"), CONFIG, [])


def test_cli_errors_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs:\n  - {name: a, config: configs/missing.yaml}\n")
    proc = subprocess.run([sys.executable, "-m", "lift3d.batch", str(bad)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "config 'configs/missing.yaml' does not exist" in proc.stderr
    assert not (REPO / "outputs" / "bad").exists()
    proc = subprocess.run([sys.executable, "-m", "lift3d.batch", "--prompts", "x.txt"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--prompts needs --config" in proc.stderr


# ---------------------------------------------------------------- markers and progress (no Ray)
def test_atomic_marker_and_trial_readers(tmp_path):
    target = tmp_path / "j" / "done.json"
    write_json_atomic(target, {"state": "done"})
    write_json_atomic(target, {"state": "done", "n": 2})
    assert json.loads(target.read_text()) == {"state": "done", "n": 2}
    assert [p.name for p in target.parent.iterdir()] == ["done.json"]  # no temporary left
    trial = tmp_path / "trial"
    for rel in ["save/it100-test.mp4", "save/it900-test.mp4", "save/it1000-test.mp4",
                "save/it50-export/model.glb", "save/it700-export/model.glb"]:
        (trial / rel).parent.mkdir(parents=True, exist_ok=True)
        (trial / rel).write_bytes(b"x")
    assert latest_video(trial).name == "it1000-test.mp4"  # numeric, not lexical, order
    assert latest_export(trial).parent.name == "it700-export"
    (trial / "csv_logs").mkdir()
    (trial / "csv_logs/metrics.csv").write_text("step,train/loss,lr\n1,2.0,0.1\n2,,0.1\n3,0.5,\n")
    assert final_losses(trial) == {"train/loss": 0.5}


def test_progress_bar_and_eta():
    text = bar(2, 1, 1, 4, 90)
    assert text.startswith("[#####xx>>-----------] ") and text.endswith("2/8 done, 1 running, 1 failed, 4 left, ETA 1m30s")
    assert bar(0, 0, 0, 3, None).endswith("ETA ?")
    assert eta_seconds([10.0, 30.0], running=2, left=3, slots=2) == pytest.approx((3 + 1) * 20 / 2)
    assert eta_seconds([], running=1, left=1, slots=2) is None
    assert eta_seconds([5.0], running=0, left=0, slots=1) == 0.0


# ---------------------------------------------------------------- the runner on a local Ray cluster
@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, _temp_dir="/tmp/ray-l3batch", log_to_driver=False,
             configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def run(m):
    out = io.StringIO()
    code = BatchRunner(m, stream=out, poll_s=0.2).run()
    return code, out.getvalue()


def test_four_jobs_two_at_once_failures_reported_others_finish(cluster, tmp_path):
    m = manifest(tmp_path, [{"name": f"j{i}", "prompt": f"a red cube {i}"} for i in range(4)]
                 + [{"name": "crash", "overrides": ["fake_exit=1"]},
                    {"name": "badcfg", "overrides": ["fake_exit=2"]},
                    {"name": "flaky", "overrides": ["fake_fail_attempts=1"]}],
                 overrides=["fake_seconds=1.5"], retries=1)
    code, out = run(m)
    assert code == 1  # some failed
    for i in range(4):
        done = JobPaths(m.batch_dir, f"j{i}").done()
        assert done["state"] == "done" and done["attempt"] == 1
        assert done["video"] == f"j{i}/trial/save/it4-test.mp4" and done["export"] == f"j{i}/trial/save/it4-export/model.glb"
        assert done["losses"] == {"train/loss": 0.25, "train/loss_sds": 0.125} and done["peak_rss_mb"] > 5
        assert f"system.prompt_processor.prompt=a red cube {i}" in runs(m, f"j{i}")[0]["argv"]
    intervals = [(r["start"], r["end"]) for j in [f"j{i}" for i in range(4)] + ["flaky"] for r in runs(m, j)]
    assert max_overlap(intervals) == 2  # two at once on 2 CPUs, never three
    # a crash is retried once, then reported with its log tail; a config error (exit 2) is not retried
    assert len(runs(m, "crash")) == 2 and len(runs(m, "badcfg")) == 1
    assert JobPaths(m.batch_dir, "crash").done() is None
    assert JobPaths(m.batch_dir, "crash").status()["state"] == "failed"
    assert "crash: FAILED after 2 attempt(s): train exited with 1" in out
    assert "Traceback: fake failure of b (exit 1)" in out  # the log tail
    assert "badcfg: FAILED after 1 attempt(s)" in out and "not retried" in out
    # a job that fails once succeeds on its retry, resuming from the checkpoint the first attempt left
    flaky = runs(m, "flaky")
    assert len(flaky) == 2 and not flaky[0]["resumed"] and flaky[1]["resumed"]
    assert JobPaths(m.batch_dir, "flaky").done()["attempt"] == 2
    assert "[####" in out and "done, 0 running, 2 failed, 0 left" in out
    html = (m.batch_dir / "index.html").read_text()
    assert html.count('class="job"') == 7 and html.count('data-status="done"') == 5
    assert html.count("<model-viewer") == 5 and (m.batch_dir / "static/model-viewer.min.js").is_file()


def test_stage_chain_runs_in_order_from_the_parent_checkpoint(cluster, tmp_path):
    m = manifest(tmp_path, [{"name": "c", "stages": [{"name": "nerf", "config": "configs/reconstruct-nerf.yaml"},
                                                     {"name": "dmtet", "config": "configs/reconstruct-dmtet.yaml"},
                                                     {"name": "tex", "config": "configs/reconstruct-texture.yaml"}]},
                            {"name": "other"}], overrides=["fake_seconds=0.6"])
    code, out = run(m)
    assert code == 0
    nerf, dmtet, tex = (runs(m, f"c.{s}")[0] for s in ("nerf", "dmtet", "tex"))
    assert nerf["end"] <= dmtet["start"] and dmtet["end"] <= tex["start"]
    assert not any(a.startswith("system.geometry_convert_from") for a in nerf["argv"])
    parent_ckpt = str(JobPaths(m.batch_dir, "c.nerf").last_ckpt)
    assert f"system.geometry_convert_from={parent_ckpt}" in dmtet["argv"]
    assert JobPaths(m.batch_dir, "c.nerf").done()["export"] is None  # only the last stage exports
    assert JobPaths(m.batch_dir, "c.tex").done()["export"].endswith("model.glb")


def test_a_failed_parent_fails_its_chain_without_running_it(cluster, tmp_path):
    m = manifest(tmp_path, [{"name": "c", "stages": [{"name": "a", "config": CONFIG, "overrides": ["fake_exit=2"]},
                                                     {"name": "b", "config": CONFIG}]}])
    code, out = run(m)
    assert code == 1 and "c.b: FAILED after 0 attempt(s): parent 'c.a' failed" in out
    assert not JobPaths(m.batch_dir, "c.b").trial.exists()


def test_pretend_gpus_give_concurrent_jobs_different_devices(cluster, tmp_path):
    m = manifest(tmp_path, [{"name": f"g{i}"} for i in range(4)] + [{"name": "cpu", "num_gpus": 0}],
                 overrides=["fake_seconds=1.5"], num_gpus="auto", num_cpus=0.5)
    code, out = run(m)
    assert code == 0
    recs = {f"g{i}": runs(m, f"g{i}")[0] for i in range(4)}
    assert all(r["cuda"] in ("0", "1") for r in recs.values())  # auto = one GPU per job on a GPU cluster
    for a in recs:
        for b in recs:
            if a < b and max_overlap([(recs[a]["start"], recs[a]["end"]), (recs[b]["start"], recs[b]["end"])]) == 2:
                assert recs[a]["cuda"] != recs[b]["cuda"], (a, b, recs)
    assert max_overlap([(r["start"], r["end"]) for r in recs.values()]) == 2  # 2 GPUs: two at once
    assert runs(m, "cpu")[0]["cuda"] == ""  # a CPU job sees no GPU
    frac = manifest(tmp_path, [{"name": f"h{i}"} for i in range(2)], name="frac",
                    overrides=["fake_seconds=1.5"], num_gpus=0.5, num_cpus=0.5)
    assert run(frac)[0] == 0
    h = [runs(frac, f"h{i}")[0] for i in range(2)]
    assert max_overlap([(r["start"], r["end"]) for r in h]) == 2 and all(r["cuda"] in ("0", "1") for r in h)


def test_resources_the_cluster_cannot_give_fail_before_any_work(cluster, tmp_path):
    m = manifest(tmp_path, [{"name": "big", "num_gpus": 3}])
    with pytest.raises(ManifestError, match="asks for num_gpus=3.0 but the cluster has 2 GPU"):
        BatchRunner(m, stream=io.StringIO()).run()
    assert not JobPaths(m.batch_dir, "big").root.exists()


def test_ctrl_c_taken_inside_the_ray_wait_still_stops_the_batch(cluster, tmp_path, monkeypatch):
    """A SIGINT whose KeyboardInterrupt is swallowed inside `ray.wait` (seen once under load) still stops the
    batch: the runner's handler also sets a flag that it checks after every wait (exit 130)."""
    import os

    m = manifest(tmp_path, [{"name": "slow", "overrides": ["fake_seconds=20"]}], retries=0)
    job = JobPaths(m.batch_dir, "slow")
    real_wait, swallowed = ray.wait, []

    def wait_that_swallows(refs, **kwargs):
        if job.last_ckpt.is_file() and not swallowed:  # the job runs: Ctrl-C arrives while waiting on it
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1.0)
            except KeyboardInterrupt:
                swallowed.append(True)
            return [], list(refs)
        return real_wait(refs, **kwargs)

    monkeypatch.setattr(ray, "wait", wait_that_swallows)
    out = io.StringIO()
    code = BatchRunner(m, stream=out, poll_s=0.2).run()
    # the runner stopped at the flag instead of waiting the job out (stopping the job itself: the test below)
    assert swallowed and code == 130, out.getvalue()
    assert "interrupted: stopping 1 running job(s)" in out.getvalue()


def test_ctrl_c_then_rerun_finishes_the_rest_without_redoing_done_jobs(cluster, tmp_path):
    m = manifest(tmp_path, [{"name": "quick1", "overrides": ["fake_seconds=0.5"]},
                            {"name": "quick2", "overrides": ["fake_seconds=0.5"]},
                            {"name": "slow1", "overrides": ["fake_seconds=60"]},
                            {"name": "slow2", "overrides": ["fake_seconds=60"]}], retries=0)
    path = tmp_path / "b.yaml"
    driver = subprocess.Popen([sys.executable, "-m", "lift3d.batch", str(path), "--address", cluster], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 90
    slow = [JobPaths(m.batch_dir, j) for j in ("slow1", "slow2")]
    while time.time() < deadline and not all(p.last_ckpt.is_file() for p in slow):
        time.sleep(0.3)
    assert all(p.last_ckpt.is_file() for p in slow), "the slow jobs never started"
    done_before = {j: JobPaths(m.batch_dir, j).done() for j in ("quick1", "quick2")}
    assert all(d and d["state"] == "done" for d in done_before.values())
    files = {p: p.stat().st_mtime_ns for j in ("quick1", "quick2")
             for p in JobPaths(m.batch_dir, j).root.rglob("*") if p.is_file()}
    driver.send_signal(signal.SIGINT)
    out, _ = driver.communicate(timeout=60)
    assert driver.returncode == 130, out
    assert "interrupted: stopping 2 running job(s)" in out
    for p in slow:
        assert p.done() is None and p.status()["state"] == "interrupted"
        assert len(runs(m, p.job_id)) == 0, out  # killed mid-run: launch.py never got to its end
    # no launch.py left behind
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(m.batch_dir) not in ps
    m2 = manifest(tmp_path, [{"name": "quick1", "overrides": ["fake_seconds=0.5"]},
                             {"name": "quick2", "overrides": ["fake_seconds=0.5"]},
                             {"name": "slow1", "overrides": ["fake_seconds=60"]},
                             {"name": "slow2", "overrides": ["fake_seconds=60"]}], retries=0)
    # the rerun of the same manifest; the slow jobs' spec (fingerprint) stays, the fake reads a shorter sleep
    # from <batch>/fake_seconds.txt
    (m.batch_dir / "fake_seconds.txt").write_text("0.5")
    code, out2 = run(m2)
    assert code == 0, out2
    assert "4 job(s), 2 already done" in out2
    for p, mtime in files.items():
        assert p.stat().st_mtime_ns == mtime, f"{p} of a done job was touched"
    for j in ("slow1", "slow2"):
        (r,) = runs(m, j)
        assert r["resumed"], "the interrupted job resumed from its last checkpoint"
        assert JobPaths(m.batch_dir, j).done()["resumed_from_checkpoint"] is True
