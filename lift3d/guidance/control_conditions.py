"""Control images for ControlNet guidance, computed in PyTorch from what lift3d renders or loads
(docs/methods/control4d.md §"Conditions"). Every function returns [B,3,H,W] in [0,1], the layout
ControlNet's `controlnet_cond` takes.

- `canny_control(image)`: Canny's edge detector (Canny 1986) as OpenCV's `cv2.Canny` runs it on a
  colour image: 8-bit values, 5×5 box blur first (threestudio blurs before detecting), 3×3 Sobel gradients per
  channel, the channel of largest L1 magnitude |gx| + |gy| per pixel, non-maximum suppression along
  the gradient direction quantised to 4 sectors, then double thresholds (low / high on the 0..255
  scale) with hysteresis: a weak pixel (> low) is an edge when it is 8-connected to a strong one
  (> high) through weak pixels. White edges on black, three equal channels.
- `normal_control(comp_normal, opacity, c2w)`: the render's normals turned into the camera's frame and
  coloured as ControlNet's normal models take them — red = left, green = up, blue = towards the viewer,
  (n + 1) / 2 — with the flat "facing the viewer" colour (0.5, 0.5, 1) where the render is empty.
- `depth_control(depth, opacity)`: relative inverse depth in [0,1] (near = 1) as the depth ControlNets
  take it (lift3d.gan.depth_generation.inverse_depth_image), 0 where the render is empty.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.gan.depth_generation import inverse_depth_image

CONTROL_TYPES = ("normal", "canny", "depth")
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_TAN_22_5 = math.tan(math.radians(22.5))
_TAN_67_5 = math.tan(math.radians(67.5))


def box_blur(image: Tensor, size: int) -> Tensor:
    """Mean over a size×size window, borders reflected (cv2.blur's default): [B,C,H,W] -> [B,C,H,W]."""
    if size <= 1:
        return image
    lo, hi = (size - 1) // 2, size // 2
    padded = F.pad(image, (lo, hi, lo, hi), mode="reflect")
    return F.avg_pool2d(padded, size, stride=1)


def sobel(image: Tensor) -> tuple[Tensor, Tensor]:
    """3×3 Sobel derivatives along x (columns) and y (rows), borders replicated: [B,C,H,W] -> 2 × [B,C,H,W]."""
    c = image.shape[1]
    kx = _SOBEL_X.to(image).expand(c, 1, 3, 3)
    ky = _SOBEL_X.t().to(image).expand(c, 1, 3, 3)
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kx, groups=c), F.conv2d(padded, ky, groups=c)


def _neighbour(x: Tensor, dy: int, dx: int) -> Tensor:
    """x shifted so that out[..., i, j] = x[..., i + dy, j + dx] (0 outside): [B,1,H,W]."""
    padded = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    return padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]


def non_maximum_suppression(magnitude: Tensor, gx: Tensor, gy: Tensor) -> Tensor:
    """Keep a pixel whose magnitude is a maximum along its gradient direction (4 sectors): [B,1,H,W] -> bool.
    Ties keep the first pixel of a plateau (> one neighbour, >= the other), so a step edge stays one pixel thick."""
    ax, ay = gx.abs(), gy.abs()
    horizontal = ay <= _TAN_22_5 * ax  # gradient along x: compare left / right
    vertical = ay > _TAN_67_5 * ax  # gradient along y: compare up / down
    same_sign = (gx * gy) > 0  # gradient along the main diagonal (rows grow downwards)
    m = magnitude
    keep_h = (m > _neighbour(m, 0, -1)) & (m >= _neighbour(m, 0, 1))
    keep_v = (m > _neighbour(m, -1, 0)) & (m >= _neighbour(m, 1, 0))
    keep_d = (m > _neighbour(m, -1, -1)) & (m >= _neighbour(m, 1, 1))
    keep_a = (m > _neighbour(m, -1, 1)) & (m >= _neighbour(m, 1, -1))
    diagonal = torch.where(same_sign, keep_d, keep_a)
    return torch.where(horizontal, keep_h, torch.where(vertical, keep_v, diagonal))


def hysteresis(strong: Tensor, weak: Tensor) -> Tensor:
    """Grow `strong` [B,1,H,W] bool through 8-connected `weak` pixels until nothing changes."""
    edges = strong & weak
    while True:
        grown = (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0) & weak
        if torch.equal(grown, edges):
            return edges
        edges = grown


def canny_edges(image: Tensor, low: float = 50.0, high: float = 100.0, blur: int = 5) -> Tensor:
    """image [B,C,H,W] in [0,1] -> edges [B,1,H,W] in {0,1} (see the module docstring); thresholds on 0..255."""
    # 8-bit values as OpenCV sees them (threestudio's uint8 conversion, cv2.blur's rounding): integer
    # gradients, so the equal magnitudes along a blurred ramp tie exactly in the suppression
    x = torch.floor(image.float().clamp(0.0, 1.0) * 255.0)
    x = torch.round(box_blur(x, blur))
    gx, gy = sobel(x)  # [B,C,H,W]
    magnitude = gx.abs() + gy.abs()
    best = magnitude.argmax(dim=1, keepdim=True)  # the strongest channel per pixel
    magnitude, gx, gy = (t.gather(1, best) for t in (magnitude, gx, gy))
    thin = non_maximum_suppression(magnitude, gx, gy)
    edges = hysteresis(thin & (magnitude > high), thin & (magnitude > low))
    return edges.to(image.dtype)


def canny_control(image: Tensor, low: float = 50.0, high: float = 100.0, blur: int = 5) -> Tensor:
    """A photo or render [B,H,W,3] in [0,1] -> the canny control image [B,3,H,W] in {0,1}."""
    return canny_edges(image[..., :3].permute(0, 3, 1, 2), low, high, blur).expand(-1, 3, -1, -1).contiguous()


def normal_colours(n_cam: Tensor, covered: Tensor) -> Tensor:
    """Camera-space unit normals n_cam [B,H,W,3] (OpenGL camera: x right, y up, z towards the viewer) and
    coverage [B,H,W,1] in [0,1] -> the normal ControlNets' colours [B,H,W,3]: red = left, green = up,
    blue = front, (n + 1) / 2, blended to the flat facing colour (0.5, 0.5, 1) where uncovered."""
    colour = (n_cam * torch.tensor([-1.0, 1.0, 1.0]).to(n_cam) + 1.0) * 0.5
    flat = torch.tensor([0.5, 0.5, 1.0]).to(colour)
    return colour * covered + flat * (1.0 - covered)


def normal_control(comp_normal: Tensor, opacity: Tensor, c2w: Tensor) -> Tensor:
    """comp_normal [B,H,W,3] (the renderer's world normals, (n + 1) / 2 × opacity), opacity [B,H,W,1],
    c2w [B,4,4] (OpenGL camera: x right, y up, z towards the viewer) -> [B,3,H,W] (module docstring)."""
    n_world = F.normalize(comp_normal * 2.0 - opacity, dim=-1)  # undo the renderer's (n+1)/2 × opacity
    rotation = c2w[:, :3, :3].to(n_world)  # columns: the camera's axes in world coordinates
    n_cam = torch.einsum("bhwi,bij->bhwj", n_world, rotation)  # R^T n, per pixel
    return normal_colours(n_cam, opacity.clamp(0.0, 1.0)).permute(0, 3, 1, 2).contiguous()


def depth_control(depth: Tensor, opacity: Tensor) -> Tensor:
    """depth [B,H,W,1] (ray distance), opacity [B,H,W,1] -> [B,3,H,W]: near = 1, far and empty = 0."""
    covered = (opacity > 0.5).permute(0, 3, 1, 2)
    d = depth.permute(0, 3, 1, 2).float()
    far = d.masked_fill(~covered, 0.0).amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    disparity = inverse_depth_image(torch.where(covered, d, far * 2.0))  # empty pixels: farther than all
    return (disparity * covered).expand(-1, 3, -1, -1).to(depth.dtype).contiguous()


__all__ = ["CONTROL_TYPES", "box_blur", "canny_control", "canny_edges", "depth_control", "hysteresis",
           "non_maximum_suppression", "normal_control", "sobel"]
