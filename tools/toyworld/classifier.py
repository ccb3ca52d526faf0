"""A toy shape/colour classifier (#17 point 4's "target match" and feature space for diversity and KID):
a small CNN trained on toy-world renders (tools.toyworld.dataset) with two heads, shape (5 classes) and
colour (6 classes). Its penultimate features (64-D) stand in for Inception features on the toy world.

    clf = train_toy_classifier()                    # a few minutes on 2 CPU cores
    shape, colour = clf.predict(images)             # images [N,3,32,32] in [0,1] -> names
    feats = clf.features(images)                    # [N,64]
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from tools.toyworld.shapes import COLOURS, SHAPES


class ToyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),  # 16²
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),  # 8²
            nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(64, 64), nn.SiLU(),
        )
        self.shape_head = nn.Linear(64, len(SHAPES))
        self.colour_head = nn.Linear(64, len(COLOURS))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images [N,3,S,S] in [0,1] (resized to 32²) -> [N,64]."""
        x = images.float()
        if x.shape[-1] != 32:
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        return self.body(x * 2 - 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(images)
        return self.shape_head(f), self.colour_head(f)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[list[str], list[str]]:
        shape_logits, colour_logits = self.eval()(images)
        colours = list(COLOURS)
        return [SHAPES[i] for i in shape_logits.argmax(1)], [colours[i] for i in colour_logits.argmax(1)]


def train_toy_classifier(steps: int = 1200, views_per_object: int = 32, batch_size: int = 64, seed: int = 0,
                         cache: Optional[Path] = None) -> ToyClassifier:
    """Trains on renders at the toy world's cameras (+ random 0-2 px shifts and brightness jitter, so that
    generated images, which are less clean than renders, are still classified by shape and colour)."""
    if cache is not None and Path(cache).is_file():
        model = ToyClassifier()
        model.load_state_dict(torch.load(cache, map_location="cpu"))
        return model.eval()
    from tools.toyworld import dataset as toy_dataset

    data = toy_dataset.generate(views_per_object, 32, seed)
    images = data.images.permute(0, 3, 1, 2).contiguous()  # [N,3,32,32]
    shape_of = torch.tensor([SHAPES.index(s) for s, _ in data.objects])[data.object_index]
    colour_of = torch.tensor([list(COLOURS).index(c) for _, c in data.objects])[data.object_index]
    torch.manual_seed(seed)
    model = ToyClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=g)
        x = images[idx]
        dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        x = (x * (0.85 + 0.3 * torch.rand(batch_size, 1, 1, 1, generator=g))).clamp(0, 1)
        shape_logits, colour_logits = model(x)
        loss = F.cross_entropy(shape_logits, shape_of[idx]) + F.cross_entropy(colour_logits, colour_of[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    model.eval()
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cache)
    return model
