"""Pose-labelled renders of a source generator, with depth (PODIA-3D step 1, #17 point 2; docs/methods/
gan-adaptation.md): each render keeps its camera label, so images generated from it later (depth-
conditioned diffusion, SDEdit) inherit the label, and the set can be written in EG3D's format.

    renders = render_source_set(generator, labels, seed=0)      # images, depth, mask, labels, z
    write_eg3d_dataset(folder, renders["images"], renders["labels"], depth=renders["depth"])
        -> <folder>/img00000000.png ..., dataset.json, depth/img00000000.npy ([r,r] float32 ray distance)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch import Tensor


@torch.no_grad()
def render_source_set(generator, labels: Tensor, seed: int = 0, truncation_psi: float = 1.0,
                      batch_size: int = 16) -> dict[str, Tensor]:
    """One random latent per camera label [N,25], w conditioned on that camera (EG3D's sampling).

    Returns images [N,3,H,W] in [0,1], depth [N,1,r,r] (expected ray distance; `ray_end` where empty),
    mask [N,1,r,r] (opacity), labels [N,25], z [N,z_dim]."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(labels.shape[0], generator.z_dim, generator=g)
    out: dict[str, list] = {"images": [], "depth": [], "mask": []}
    for zb, cb in zip(z.split(batch_size), labels.split(batch_size)):
        rendered = generator(zb, cb, truncation_psi=truncation_psi)
        out["images"].append(((rendered["image"] + 1) / 2).clamp(0, 1))
        out["depth"].append(rendered["image_depth"])
        out["mask"].append(rendered["image_mask"])
    result = {k: torch.cat(v) for k, v in out.items()}
    result.update(labels=labels.clone(), z=z)
    return result


def write_eg3d_dataset(folder: str | Path, images: Tensor, labels: Tensor, depth: Optional[Tensor] = None) -> Path:
    """images [N,3,H,W] in [0,1], labels [N,25] (, depth [N,1,r,r]) -> an EG3D dataset folder
    (read back by `eg3d-image-datamodule`); depth maps go to depth/<image stem>.npy."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if depth is not None:
        (folder / "depth").mkdir(exist_ok=True)
    entries = []
    for i in range(images.shape[0]):
        name = f"img{i:08d}.png"
        pixels = (images[i].permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name)
        if depth is not None:
            np.save(folder / "depth" / f"img{i:08d}.npy", depth[i, 0].cpu().numpy().astype(np.float32))
        entries.append([name, [float(v) for v in labels[i]]])
    (folder / "dataset.json").write_text(json.dumps({"labels": entries}))
    return folder
