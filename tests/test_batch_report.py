"""The batch report (issue #19 point 4): index.html from a batch folder's markers, and the page in
headless Chromium (Debian package `chromium`): every turntable video and GLB view loads from the
files shipped in lift3d/batch/static (no network), no console errors, and the screenshot shows the
meshes in their colours."""
from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest
import trimesh

from lift3d.batch.browser_check import check_report, find_chromium
from lift3d.batch.layout import JobPaths, write_json_atomic
from lift3d.batch.report import build_report

COLOURS = {"red": (230, 20, 20), "blue": (20, 20, 230), "green": (20, 200, 20)}  # green's GLB is missing


def make_batch(root):
    """A batch folder as the runner leaves it: three done jobs (real MP4s; GLBs but green's, deleted after
    the run) and one failed job."""
    batch = root / "toy"
    jobs = []
    for name, rgb in COLOURS.items():
        paths = JobPaths(batch, name)
        save = paths.trial / "save"
        (save / "it4-export").mkdir(parents=True)
        frames = [np.full((64, 192, 3), 40 + 20 * t, np.uint8) for t in range(8)]  # [H, 3W, 3] turntable frames
        imageio.mimwrite(save / "it4-test.mp4", frames, fps=8)
        if name != "green":
            box = trimesh.creation.box(extents=(1, 1, 1))
            box.visual.vertex_colors = np.tile([*rgb, 255], (len(box.vertices), 1))
            box.export(save / "it4-export/model.glb")
        paths.logs.mkdir(parents=True)
        paths.log(1).write_text("fit\n")
        write_json_atomic(paths.done_json, {
            "state": "done", "attempt": 1, "wall_s": 75.0, "peak_rss_mb": 812.4,
            "losses": {"train/loss": 0.125, "train/loss_sds": 0.0625}, "scores": {"iou": 0.912, "colour": name},
            "video": f"{name}/trial/save/it4-test.mp4", "export": f"{name}/trial/save/it4-export/model.glb",
            "log": f"{name}/logs/attempt-1.log", "cuda_visible_devices": "1"})
        jobs.append({"id": name, "config": "/nowhere/text-to-3d.yaml", "prompt": f"a {name} cube",
                     "overrides": ["trainer.max_steps=4"], "seed": 0})
    bad = JobPaths(batch, "bad")
    bad.logs.mkdir(parents=True)
    bad.log(1).write_text("lift3d: error: system.guidance.usd_lambdaa: unknown key <&>\n")
    write_json_atomic(bad.status_json, {"state": "failed", "attempt": 1, "error": "train exited with 2",
                                        "log": "bad/logs/attempt-1.log"})
    jobs.append({"id": "bad", "config": "/nowhere/x.yaml", "prompt": None, "overrides": [], "seed": 0})
    write_json_atomic(batch / "batch.json", {"name": "toy", "jobs": jobs})
    return batch


def test_report_lists_every_job_with_its_figures(tmp_path):
    batch = make_batch(tmp_path)
    page = build_report(batch).read_text()
    assert page.count('class="job"') == 4
    assert 'data-status="done"' in page and 'data-status="failed"' in page
    assert '<video src="red/trial/save/it4-test.mp4"' in page
    assert '<model-viewer src="blue/trial/save/it4-export/model.glb"' in page
    assert '<script src="static/model-viewer.min.js"></script>' in page and "http" not in page.split("<body>")[0]
    assert (batch / "static/model-viewer.min.js").stat().st_size > 500_000
    assert (batch / "static/LICENSE.model-viewer").is_file()
    for text in ["1m15s", "812 MB", "0.125", "loss_sds", "0.912", "a red cube", "trainer.max_steps=4",
                 "train exited with 2", "usd_lambdaa: unknown key &lt;&amp;&gt;"]:  # the failed job's log tail, escaped
        assert text in page, text
    assert "http-equiv" not in page  # finished batch: no auto-refresh


@pytest.mark.skipif(find_chromium() is None, reason="needs Chromium (Debian: apt-get install chromium)")
def test_report_opens_in_headless_chromium_with_videos_and_3d_views(tmp_path):
    batch = make_batch(tmp_path)
    build_report(batch)
    shot = tmp_path / "report.png"
    check = check_report(batch, screenshot=shot)
    assert check.videos == ["loaded", "loaded", "loaded"], check
    assert check.viewers == ["loaded", "loaded", "error"], check  # green's GLB is missing: shown as an error
    assert all("green" in line for line in check.errors.splitlines()), check.errors  # no other error on the page
    img = imageio.imread(shot)[..., :3].astype(int)  # [H, W, 3]
    # the red and the blue box are drawn (lit, so not the exact vertex colour): count strongly coloured pixels
    red = (img[..., 0] > 150) & (img[..., 1] < 90) & (img[..., 2] < 90)
    blue = (img[..., 2] > 150) & (img[..., 0] < 90) & (img[..., 1] < 90)
    assert red.sum() > 2000 and blue.sum() > 2000, (red.sum(), blue.sum())
