"""Zero-1-to-3 adapter: diffusers pipeline, camera embeddings, original .ckpt converter.

Names are imported lazily so that `import extern.zero123` does not import diffusers.
"""

from importlib import import_module

_EXPORTS = {
    "Zero123Pipeline": "pipeline",
    "CCProjection": "pipeline",
    "CLIPCameraProjection": "pipeline",
    "zero123_camera_embedding": "camera",
    "stable_zero123_camera_embedding": "camera",
    "relative_camera_embedding": "camera",
    "convert_original_checkpoint": "convert_original_ckpt",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
