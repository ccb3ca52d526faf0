"""lift3d.batch end to end with the real launch.py (issue #19 acceptance): four toy jobs on a local
Ray cluster with 2 CPUs — three prompts on the shipped toy prior (a few steps, GLB export) and one
with a bad config key — two at a time; the bad one is reported failed with its log tail, the others
finish with a turntable video and a GLB, and the report opens in headless Chromium with every video
and 3D view loaded. Minutes on 2 cores: marked slow (the scheduling itself is covered quickly by
tests/test_batch.py with a stand-in launcher)."""
from __future__ import annotations

import io

import pytest

ray = pytest.importorskip("ray")

from lift3d.batch.browser_check import check_report, find_chromium  # noqa: E402
from lift3d.batch.layout import JobPaths  # noqa: E402
from lift3d.batch.manifest import parse_manifest  # noqa: E402
from lift3d.batch.runner import BatchRunner  # noqa: E402
from tests.helpers import REPO  # noqa: E402

TINY = ["trainer.max_steps=4", "trainer.val_check_interval=4", "checkpoint.every_n_train_steps=2",
        "data.n_val_views=1", "data.n_test_views=4", "system.geometry.isosurface_threshold=0.5",
        "system.geometry.isosurface_resolution=32", "trainer.log_every_n_steps=1"]


@pytest.mark.slow
def test_four_toy_jobs_on_two_cpus_with_a_bad_config_and_the_report(tmp_path):
    manifest = parse_manifest({
        "name": "toy", "defaults": {"config": "configs/demo/text-to-3d.yaml", "overrides": TINY, "num_cpus": 1,
                                    "num_gpus": 0, "retries": 1, "export": "glb"},
        "jobs": [{"name": "red_cube", "prompt": "a red cube"}, {"name": "blue_sphere", "prompt": "a blue sphere"},
                 {"name": "green_cone", "prompt": "a green cone"},
                 {"name": "bad", "prompt": "a yellow torus", "overrides": ["system.guidance.usd_lambdaa=0.5"]}]},
        "toy.yaml", REPO, out_dir=str(tmp_path))
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir="/tmp/ray-l3e2e", log_to_driver=False,
             configure_logging=False)
    try:
        out = io.StringIO()
        code = BatchRunner(manifest, stream=out, poll_s=0.5).run()
    finally:
        ray.shutdown()
    text = out.getvalue()
    assert code == 1, text
    good = ["red_cube", "blue_sphere", "green_cone"]
    spans = []
    for job in good:
        paths = JobPaths(manifest.batch_dir, job)
        done = paths.done()
        assert done is not None and done["state"] == "done", text
        assert (paths.trial / "save/it4-test.mp4").stat().st_size > 0
        assert (manifest.batch_dir / done["export"]).read_bytes()[:4] == b"glTF"
        assert done["losses"].get("train/loss_usd") is not None and done["peak_rss_mb"] > 200
        spans.append((done["started"], done["ended"]))
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = [sum(d for _, d in events[: i + 1]) for i in range(len(events))]
    assert max(running) == 2  # two at once on 2 CPUs
    bad = JobPaths(manifest.batch_dir, "bad")
    assert bad.done() is None and bad.status()["state"] == "failed"
    assert "bad: FAILED after 1 attempt(s)" in text  # a config error is not retried
    assert "unknown config key 'system.guidance.usd_lambdaa'" in text  # the log tail names the mistake
    if find_chromium() is not None:
        check = check_report(manifest.batch_dir, screenshot=tmp_path / "report.png")
        assert check.videos == ["loaded"] * 3 and check.viewers == ["loaded"] * 3, check
        assert check.errors == "", check.errors
