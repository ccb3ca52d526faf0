"""Encodings and MLPs (pure PyTorch, tcnn/threestudio-compatible)."""
