"""Tooling around the lift3d framework that the framework itself never imports (run from the
repository root, e.g. ``python -m tools.toyworld.dataset``).

    toyworld/   the toy priors' procedural dataset, their training scripts, and the scoring of a
                result against the true shape (load/priors/README.md, benchmarks/toyworld.py)
"""
