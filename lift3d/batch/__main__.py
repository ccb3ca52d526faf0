"""python -m lift3d.batch: run a manifest (or a prompts file through one config) on Ray; --report, --serve."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lift3d.errors import Lift3DError

USAGE = """
  python -m lift3d.batch MANIFEST.yaml [--address HOST:PORT] [--local-cpus N] [--local-gpus N]
  python -m lift3d.batch --prompts FILE --config X.yaml [--override key=value ...] [--seed S]
  python -m lift3d.batch --report outputs/<batch>       # rebuild index.html
  python -m lift3d.batch --serve outputs/<batch> [--port 8000]
"""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m lift3d.batch", usage=USAGE,
                                description="Run many lift3d jobs on Ray (docs/batch.md).")
    p.add_argument("manifest", nargs="?", help="batch manifest YAML")
    p.add_argument("--prompts", help="text file, one prompt per line: one job each (with --config)")
    p.add_argument("--config", help="experiment config of every --prompts job")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of every --prompts job (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="--prompts: seed of every job")
    p.add_argument("--job-cpus", type=float, default=None, help="--prompts: CPUs per job (default 1)")
    p.add_argument("--job-gpus", default=None, help="--prompts: GPUs per job: a number or auto (default auto)")
    p.add_argument("--retries", type=int, default=None, help="--prompts: attempts after a failure (default 1)")
    p.add_argument("--export", default=None, help="--prompts: exporter format (glb, obj, obj-mtl, ply) or false")
    p.add_argument("--scorer", default=None, help="--prompts: module:function scoring each result")
    p.add_argument("--name", help="batch name (folder under --out); default the manifest's or the file's stem")
    p.add_argument("--out", help="folder of batch folders (default the manifest's out_dir, else outputs)")
    p.add_argument("--address", help="join this Ray cluster (ray start --head's address); default: a local one")
    p.add_argument("--local-cpus", type=float, default=None, help="CPUs of the local cluster (default: all)")
    p.add_argument("--local-gpus", type=float, default=None, help="GPUs of the local cluster (default: detected)")
    p.add_argument("--ray-temp-dir", default=None, help="temp/log folder of the local Ray cluster")
    p.add_argument("--check", action="store_true", help="validate the manifest, list the jobs, run nothing")
    p.add_argument("--report", metavar="BATCH_DIR", help="rebuild BATCH_DIR/index.html and exit")
    p.add_argument("--serve", metavar="BATCH_DIR", help="serve BATCH_DIR on http://127.0.0.1:PORT/")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args(argv)
    modes = [bool(args.manifest), bool(args.prompts), bool(args.report), bool(args.serve)]
    if sum(modes) != 1:
        p.error("give exactly one of: MANIFEST.yaml, --prompts FILE --config X, --report DIR, --serve DIR")
    if args.prompts and not args.config:
        p.error("--prompts needs --config X.yaml (the experiment every prompt runs through)")
    if args.config and not args.prompts:
        p.error("--config goes with --prompts; a manifest names its configs itself")
    return args


def load(args):
    from lift3d.batch.manifest import REPO, load_manifest, parse_manifest, prompts_manifest

    if args.manifest:
        return load_manifest(args.manifest, out_dir=args.out, name=args.name)
    gpus = args.job_gpus
    if gpus not in (None, "auto"):
        try:
            gpus = float(gpus)
        except ValueError:
            gpus = gpus  # parse_manifest names the bad value
    data = prompts_manifest(args.prompts, args.config, args.override, seed=args.seed, num_cpus=args.job_cpus,
                            num_gpus=gpus, retries=args.retries, scorer=args.scorer,
                            export=(False if args.export in ("false", "none") else args.export))
    return parse_manifest(data, args.prompts, Path.cwd(), out_dir=args.out, name=args.name)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.report:
            from lift3d.batch.report import build_report

            print(build_report(Path(args.report)))
            return 0
        if args.serve:
            from lift3d.batch.serve import serve

            serve(Path(args.serve), port=args.port)
            return 0
        manifest = load(args)
        if args.check:
            for job in manifest.jobs:
                print(f"{job.id}: {job.config} {' '.join(job.overrides)}" + (f" (after {job.parent})" if job.parent else ""))
            print(f"{len(manifest.jobs)} job(s) valid; outputs in {manifest.batch_dir}")
            return 0
        from lift3d.batch.runner import run_batch

        return run_batch(manifest, address=args.address, local_cpus=args.local_cpus, local_gpus=args.local_gpus,
                         temp_dir=args.ray_temp_dir)
    except (Lift3DError, FileNotFoundError) as exc:
        print(f"lift3d.batch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
