"""Toy-world scores for the batch runner (lift3d.batch): `scorer: tools.toyworld.batch_scorer:score`
in a manifest (or `--scorer` with --prompts) scores every finished job whose prompt names a toy
object ("a <colour> <shape>") against the true shape — silhouette IoU and colour on the test
turntable (tools/toyworld/scoring.py) — and puts the figures in done.json and the batch report.
Jobs whose prompt is not a toy prompt get no scores."""
from __future__ import annotations

from pathlib import Path

from tools.toyworld.scoring import score_trial
from tools.toyworld.shapes import parse_caption


def score(trial: Path, job) -> dict:
    try:
        shape, colour = parse_caption(job.prompt or "")
    except ValueError:
        return {}
    s = score_trial(trial, shape, colour)
    return {"toy_iou": round(s.iou, 4), "toy_colour_error": round(s.colour_error, 4),
            "toy_colour_seen": s.predicted_colour, "toy_pass": bool(s.passed())}
