"""Discovery of plugins under `custom/` (threestudio convention: `custom/<name>/__init__.py`).

The repository's `custom/` folder is searched, plus any folders in the LIFT3D_PLUGIN_PATH
environment variable (os.pathsep-separated). Each plugin package is imported, which registers
its components. The core never imports a plugin by name.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_loaded = False


def plugin_dirs() -> list[Path]:
    dirs = [REPO_ROOT / "custom"]
    for extra in os.environ.get("LIFT3D_PLUGIN_PATH", "").split(os.pathsep):
        if extra:
            dirs.append(Path(extra))
    return dirs


def load_plugins() -> list[str]:
    """Import every plugin package once; return their module names."""
    global _loaded
    names: list[str] = []
    if _loaded:
        return names
    _loaded = True
    for root in plugin_dirs():
        if not root.is_dir():
            continue
        parent = str(root.parent)
        if parent not in sys.path:
            sys.path.insert(0, parent)
        for pkg in sorted(root.iterdir()):
            if (pkg / "__init__.py").is_file():
                module = f"{root.name}.{pkg.name}"
                importlib.import_module(module)
                names.append(module)
    return names
