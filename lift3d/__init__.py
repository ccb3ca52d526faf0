"""lift3d: lifting 2D diffusion priors into 3D (score distillation), threestudio-style.

Importing the package is cheap: it imports torch and the registry only. Components register
themselves when their module is imported; `lift3d.find` imports the built-in modules lazily.
"""
from lift3d.registry import find, register

__version__ = "0.1.0"
__all__ = ["register", "find", "__version__"]
