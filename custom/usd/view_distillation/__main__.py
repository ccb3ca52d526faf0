"""python -m custom.usd.view_distillation [--config custom/usd/configs/usd-view-distillation.yaml] run=<USD trial> [key=value ...]

USD view distillation after an image-to-3D run (docs/methods/usd.md §4): rectified Zero-1-to-3
novel views -> SD class images -> DreamBooth-LoRA (a) -> (b) -> SDEdit of the turntable renders
-> NeuS reconstruction + mesh export. Resumable: rerun the same command to continue; finished
steps are skipped. Exit codes: 0 done, 2 bad config / inputs (nothing was run), 1 a step failed.
"""
from __future__ import annotations

import argparse
import sys

from lift3d.utils.paths import REPO_ROOT


def main(argv: list[str] | None = None) -> int:
    from .config import DEFAULT_CONFIG

    parser = argparse.ArgumentParser(prog="python -m custom.usd.view_distillation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG.relative_to(REPO_ROOT)),
                        help="pipeline YAML (default: %(default)s)")
    args, overrides = parser.parse_known_args(argv)
    flags = [o for o in overrides if o.startswith("-")]
    if flags:
        parser.error(f"unknown option(s) {flags}; config values are written key=value, e.g. run=outputs/usd-patch/<trial>")

    from lift3d.errors import Lift3DError

    from .config import load_config
    from .pipeline import StepFailed, run_pipeline

    try:
        cfg = load_config(args.config, overrides)
        run_pipeline(cfg)
    except StepFailed as exc:
        print(f"lift3d view-distillation: step failed: {exc}", file=sys.stderr)
        return 1
    except Lift3DError as exc:
        print(f"lift3d view-distillation: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
