"""Renderer base. A renderer holds references to the system's geometry, material and background
(they are the system's modules, not the renderer's, so they appear once in the state dict).

`forward(rays_o [B,H,W,3], rays_d [B,H,W,3], light_positions [B,3], bg_color=None, **batch)`
returns a dict of [B,H,W,C] images: comp_rgb, comp_rgb_fg, comp_rgb_bg, opacity, depth,
comp_normal (in [0,1]), z_variance (conventions file, "Renderer outputs").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lift3d.background.base import BaseBackground
from lift3d.geometry.base import BaseGeometry
from lift3d.materials.base import BaseMaterial
from lift3d.utils.base import BaseModule


class _Components:
    """Plain holder so the components are not registered as this renderer's submodules."""

    def __init__(self, geometry: BaseGeometry, material: BaseMaterial, background: BaseBackground):
        self.geometry, self.material, self.background = geometry, material, background


class BaseRenderer(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0

    def configure(self, geometry: BaseGeometry, material: BaseMaterial, background: BaseBackground) -> None:
        self._components = _Components(geometry, material, background)

    @property
    def geometry(self) -> BaseGeometry:
        return self._components.geometry

    @property
    def material(self) -> BaseMaterial:
        return self._components.material

    @property
    def background(self) -> BaseBackground:
        return self._components.background

    def set_geometry(self, geometry: BaseGeometry) -> None:
        self._components.geometry = geometry

    def forward(self, *args: Any, **kwargs: Any) -> dict:
        raise NotImplementedError
