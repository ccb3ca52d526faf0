"""Many assets at once: a manifest of launch.py jobs run as Ray tasks, with a gallery of results.

    python -m lift3d.batch MANIFEST.yaml [--address ray://head:10001]
    python -m lift3d.batch --prompts prompts.txt --config configs/demo/text-to-3d.yaml
    python -m lift3d.batch --serve outputs/<batch>

Modules: manifest (parsing and checks), layout (a job's folder and markers), job (one attempt, in
a worker), runner (Ray scheduling, retries, chains, Ctrl-C), progress (lines and the bar), report
(the HTML page), serve (a local HTTP server of it). docs/batch.md is the user guide.
"""
from lift3d.batch.manifest import Job, Manifest, ManifestError, load_manifest, parse_manifest

__all__ = ["Job", "Manifest", "ManifestError", "load_manifest", "parse_manifest"]
