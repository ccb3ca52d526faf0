"""Renders of existing 3D models at StyleAvatar3D's poses and the ControlNet conditions made from them
(arXiv 2305.19012 data generation; docs/methods/styleavatar3d.md §"Pose-guided data generation").

Source meshes: any file lift3d reads (lift3d.ops.mesh_io: OBJ / PLY / GLB / GLTF / OFF / STL, centred and
scaled to `radius`, `up_axis` y or z turned to lift3d's z up), a folder of them, or a toy-world shape
`toy:<shape>` (tools/toyworld/shapes.py). Cameras: lift3d's spherical convention (z up, azimuth 0 on +x,
docs/methods/threestudio-conventions.md) with azimuth = yaw and elevation = pitch, looking at the origin;
so the front of a model is its +x side and yaw 0 / pitch 0 is the frontal view
(custom/styleavatar3d/pose_bins.py reads the same yaw / pitch back from the EG3D label).

`render_conditions(mesh, yaw, pitch, ...)` -> per view: a shaded preview `image` [B,3,S,S] on white,
`mask` [B,1,S,S], `depth` [B,1,S,S] (ray distance, `far` on the background, as lift3d.gan's renders),
`normal` [B,3,S,S] (camera-space normal coloured as the normal ControlNets take it: red = left, green =
up, blue = towards the camera, (n + 1) / 2; the flat facing colour (0.5, 0.5, 1) on the background), `edge` [B,1,S,S] (silhouette, depth jumps and creases), `landmarks` [B,3,S,S] when the mesh has marked
landmarks (custom/styleavatar3d/landmarks.py) and `label` [B,25] (EG3D camera label, OpenCV).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.data.cameras import get_mvp_matrix, get_projection_matrix, look_at_c2w, spherical_to_cartesian
from lift3d.errors import ConfigError
from lift3d.gan.camera_label import make_label, normalized_intrinsics, opengl_to_opencv_c2w
from lift3d.guidance.control_conditions import normal_colours

TOY_PREFIX = "toy:"
AMBIENT, DIFFUSE = 0.45, 0.55
_Y_UP_TO_Z_UP = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # (x, y, z) -> (x, -z, y)


@dataclass
class SourceMesh:
    name: str
    vertices: Tensor  # [V,3] float32, z up, centred, inside a sphere of `radius`
    faces: Tensor  # [F,3] long
    normals: Tensor  # [V,3] unit vertex normals
    colours: Tensor  # [V,3] albedo in [0,1]
    landmarks: dict[str, Tensor] = field(default_factory=dict)  # name -> [3], same frame as vertices
    limbs: list[tuple[str, str]] = field(default_factory=list)  # OpenPose-style connections


def vertex_normals(v: Tensor, f: Tensor) -> Tensor:
    """[V,3] area-weighted unit vertex normals."""
    face_n = torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1)  # [F,3], |n| = 2·area
    n = torch.zeros_like(v).index_add_(0, f.reshape(-1), face_n.repeat_interleave(3, 0))
    return F.normalize(n, dim=-1)


def mesh_files(spec: str) -> list[str]:
    """One entry (`toy:<shape>`, a mesh file, or a folder of mesh files) -> the sources it names."""
    from lift3d.ops.mesh_io import MESH_EXTENSIONS

    if spec.startswith(TOY_PREFIX):
        return [spec]
    path = Path(spec)
    if path.is_dir():
        found = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in MESH_EXTENSIONS)
        if not found:
            raise ConfigError(f"mesh folder '{spec}' holds no {'/'.join(MESH_EXTENSIONS)} file: add meshes or name files.")
        return found
    if not path.is_file():
        raise ConfigError(f"mesh '{spec}' not found: give a mesh file, a folder of meshes or toy:<shape> "
                          f"(toy:cube, toy:sphere, toy:cone, toy:cylinder, toy:torus).")
    return [spec]


def load_source_mesh(spec: str, radius: float = 0.45, up_axis: str = "z", albedo: tuple = (0.7, 0.7, 0.7),
                     landmarks_file: str = "") -> SourceMesh:
    """A source model in lift3d's frame. Landmarks file (JSON): {"landmarks": {name: [x, y, z] in the mesh
    file's coordinates}, "limbs": [[name, name], ...]}; they are moved with the mesh."""
    if spec.startswith(TOY_PREFIX):
        from tools.toyworld.shapes import SHAPES, shape_mesh

        shape = spec[len(TOY_PREFIX):]
        if shape not in SHAPES:
            raise ConfigError(f"mesh '{spec}': the toy world has {', '.join(TOY_PREFIX + s for s in SHAPES)}.")
        v, f, n = shape_mesh(shape)
        v, f, n = v.clone(), f.clone(), n.clone()
        colours = torch.tensor(albedo, dtype=torch.float32).expand(len(v), 3).clone()
        centre, scale, rotate = torch.zeros(3), 1.0, torch.eye(3)
    else:
        from lift3d.ops.mesh_io import load_mesh

        try:
            v_np, f_np, c_np = load_mesh(spec)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(str(exc).splitlines()[0]) from None
        rotate = _Y_UP_TO_Z_UP if up_axis == "y" else torch.eye(3)
        v = torch.from_numpy(v_np) @ rotate.T
        centre = (v.amin(0) + v.amax(0)) / 2
        scale = radius / float((v - centre).norm(dim=-1).max().clamp_min(1e-8))
        v = (v - centre) * scale
        f = torch.from_numpy(f_np)
        n = vertex_normals(v, f)
        colours = (torch.from_numpy(c_np) if c_np is not None
                   else torch.tensor(albedo, dtype=torch.float32).expand(len(v), 3).clone())
    marks, limbs = {}, []
    if landmarks_file:
        data = json.loads(Path(landmarks_file).read_text())
        for name, xyz in data.get("landmarks", {}).items():
            marks[name] = ((torch.tensor(xyz, dtype=torch.float32) @ rotate.T) - centre) * scale
        limbs = [tuple(pair) for pair in data.get("limbs", [])]
        unknown = sorted({a for pair in limbs for a in pair} - set(marks))
        if unknown:
            raise ConfigError(f"landmarks file '{landmarks_file}': limbs name unmarked landmarks {unknown}: mark them.")
    return SourceMesh(Path(spec).stem if not spec.startswith(TOY_PREFIX) else spec, v.float(), f.long(), n.float(),
                      colours.float(), marks, limbs)


def camera_matrices(yaw: Tensor, pitch: Tensor, distance: float, fovy_deg: float) -> tuple[Tensor, Tensor]:
    """(OpenGL c2w [B,4,4], mvp [B,4,4]) of cameras at (yaw = azimuth, pitch = elevation) looking at the origin."""
    c2w = look_at_c2w(spherical_to_cartesian(pitch, yaw, torch.full_like(yaw, float(distance))))
    proj = get_projection_matrix(torch.deg2rad(torch.full_like(yaw, float(fovy_deg))), 1.0, 0.01, 100.0)
    return c2w, get_mvp_matrix(c2w, proj)


def edge_map(depth: Tensor, normal: Tensor, covered: Tensor, depth_jump: float = 0.05, crease_deg: float = 35.0) -> Tensor:
    """[B,1,H,W] in {0,1}: silhouette, relative depth jumps > depth_jump and normal creases > crease_deg
    between 4-neighbours (depth [B,1,H,W], normal [B,3,H,W] unit, covered [B,1,H,W])."""
    edges = torch.zeros_like(depth, dtype=torch.bool)
    cos_crease = float(np.cos(np.deg2rad(crease_deg)))
    for dim in (2, 3):
        n = depth.shape[dim] - 1
        a = [t.narrow(dim, 0, n) for t in (depth, normal, covered)]
        b = [t.narrow(dim, 1, n) for t in (depth, normal, covered)]
        jump = (a[0] - b[0]).abs() / torch.minimum(a[0], b[0]).clamp_min(1e-6) > depth_jump
        crease = (a[1] * b[1]).sum(1, keepdim=True) < cos_crease
        sil = a[2] != b[2]
        both = (a[2] > 0) & (b[2] > 0)
        e = sil | (both & (jump | crease))
        pad = [0, 0, 0, 0]
        pad[(3 - dim) * 2 + 1] = 1  # one more row / column at the end
        edges |= F.pad(e, pad)
    return edges.float()


@torch.no_grad()
def render_conditions(mesh: SourceMesh, yaw: Tensor, pitch: Tensor, distance: float = 2.0, fovy_deg: float = 40.0,
                      size: int = 32, supersample: int = 2, far: float = 2.9) -> dict[str, Tensor]:
    """Every condition of the views (yaw [B], pitch [B], degrees); see the module docstring."""
    from lift3d.ops.rasterize import render_mesh_attributes

    c2w, mvp = camera_matrices(yaw.float(), pitch.float(), distance, fovy_deg)
    hi = size * supersample
    out = render_mesh_attributes(mesh.vertices, mesh.faces, mvp, hi, hi,
                                 attrs={"position": mesh.vertices, "normal": mesh.normals, "colour": mesh.colours})
    covered = (out["face_id"] >= 0).float().permute(0, 3, 1, 2)  # [B,1,hi,hi]
    ray = (out["position"] - c2w[:, None, None, :3, 3]).norm(dim=-1, keepdim=True).permute(0, 3, 1, 2)
    depth = ray * covered + far * (1 - covered)
    normal = F.normalize(out["normal"], dim=-1)  # [B,hi,hi,3] world
    normal_cam = torch.einsum("bhwi,bij->bhwj", normal, c2w[:, :3, :3])  # [B,hi,hi,3] OpenGL camera axes
    light = F.normalize(c2w[:, :3, 2] + torch.tensor([0.0, 0.0, 0.6]), dim=-1)  # towards the camera, tilted up
    shade = AMBIENT + DIFFUSE * (normal * light[:, None, None]).sum(-1, keepdim=True).clamp_min(0.0)
    image = ((out["colour"] * shade).clamp(0, 1).permute(0, 3, 1, 2)) * covered + (1 - covered)
    edges = edge_map(depth, normal.permute(0, 3, 1, 2), covered)

    def down(x: Tensor) -> Tensor:
        return F.avg_pool2d(x, supersample)

    result = {"image": down(image), "mask": down(covered), "depth": down(depth),
              # as the normal ControlNets take it (lift3d.guidance.control_conditions): red = left, flat where empty
              "normal": down(normal_colours(normal_cam, covered.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)),
              "edge": (down(edges) > 0).float(),
              "label": make_label(opengl_to_opencv_c2w(c2w), normalized_intrinsics(fovy_deg, yaw.shape[0])),
              "yaw": yaw.float(), "pitch": pitch.float()}
    if mesh.landmarks:
        from .landmarks import draw_landmarks

        result["landmarks"] = draw_landmarks(mesh, mvp, out["depth"].permute(0, 3, 1, 2), size, supersample)
    return result


def sample_poses(n: int, seed: int, yaw_range=(-180.0, 180.0), pitch_range=(-30.0, 30.0)) -> tuple[Tensor, Tensor]:
    """(yaw [n], pitch [n]) uniform in the ranges (degrees), seeded."""
    g = torch.Generator().manual_seed(seed)
    yaw = yaw_range[0] + (yaw_range[1] - yaw_range[0]) * torch.rand(n, generator=g)
    pitch = pitch_range[0] + (pitch_range[1] - pitch_range[0]) * torch.rand(n, generator=g)
    return yaw, pitch


def condition_image(views: dict[str, Tensor], kind: str) -> Tensor:
    """A ControlNet control image [B,3,S,S] in [0,1] of one condition kind: depth (inverse depth, near = 1),
    normal, edge, landmarks."""
    from lift3d.gan.depth_generation import inverse_depth_image

    if kind == "depth":
        return inverse_depth_image(views["depth"]).expand(-1, 3, -1, -1)
    if kind == "edge":
        return views["edge"].expand(-1, 3, -1, -1)
    if kind in ("normal", "landmarks"):
        if kind not in views:
            raise ConfigError("condition 'landmarks' needs marked landmarks: set data.landmarks_file (docs/methods/styleavatar3d.md).")
        return views[kind]
    raise ConfigError(f"unknown condition '{kind}': use depth, normal, edge or landmarks.")


CONDITION_KINDS = ("depth", "normal", "edge", "landmarks")
__all__ = ["SourceMesh", "load_source_mesh", "mesh_files", "render_conditions", "sample_poses", "condition_image",
           "CONDITION_KINDS"]
