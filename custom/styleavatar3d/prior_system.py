"""StyleAvatar3D stage 3 (arXiv 2305.19012; docs/methods/styleavatar3d.md): the image-guided W-space prior.

- `styleavatar3d-w-pairs-datamodule`: (w, frontal render) pairs sampled from a trained generator (`generator_path`:
  a gan-system <trial>/ckpts/last.ckpt or a save_generator .pt): z ~ N(0, I), w = mapping(z, c_front),
  render = synthesis(w, c_front) in [0,1]; c_front = the camera at (elevation_deg, azimuth_deg = 0: yaw 0),
  `distance`, `fovy_deg`. Batches {"w" [B,w_dim], "image" [B,3,R,R], "index"}.
- `styleavatar3d-prior-system`: fits custom/styleavatar3d/image_prior.WSpacePrior on them (image embedding of the
  render -> w). Test pass: for the first `n_eval` pairs, w sampled from the render's embedding (CFG), the
  recovery (is the nearest training w the pair's own w; its rank) in `save/prior_recovery.json` and a sheet
  `save/it<N>-inputs-vs-avatars.png` (row 1 inputs, row 2 renders of the sampled w). `--export`: the avatar of
  `system.input_image` (a PNG; default: pair 0's render): a turntable `save/it<N>-export/avatar.mp4` (+ frames)
  and the mesh `avatar.{obj,glb}` (marching cubes of the tri-plane density, lift3d/gan/mesh_export.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from lift3d.config import parse_structured
from lift3d.errors import ConfigError
from lift3d.gan.camera_label import look_at_labels, orbit_labels
from lift3d.gan.mesh_export import EXPORT_FORMATS, export_triplane_mesh
from lift3d.gan.pretrained import load_any_generator
from lift3d.registry import register
from lift3d.utils.base import Updateable
from lift3d.utils.saving import TrialSaveDir, image_row, save_image, save_video_from_folder

from .image_prior import WSpacePrior, image_encoder


WORLD_UP = torch.tensor([0.0, 0.0, 1.0])  # lift3d's spherical camera convention (look_at_labels)


def frontal_label(elevation_deg: float, distance: float, fovy_deg: float) -> torch.Tensor:
    """[1,25] the camera at yaw 0 (azimuth 0, lift3d's +x front) and the given elevation."""
    return look_at_labels(torch.tensor([float(elevation_deg)]), torch.zeros(1), torch.tensor([float(distance)]), fovy_deg)


def check_generator_path(path: str, key: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"{key} = '{path}' not found: give the trained GAN, a gan-system <trial>/ckpts/last.ckpt "
                          f"(stage styleavatar3d-gan.yaml) or a save_generator file such as load/gan/toy-red-cube-triplane.pt.")


@dataclass
class WPairsDataModuleConfig:
    generator_path: str = "load/gan/toy-red-cube-triplane.pt"
    n_pairs: int = 256
    elevation_deg: float = 15.0
    distance: float = 2.0
    fovy_deg: float = 40.0
    truncation_psi: float = 1.0
    seed: int = 0
    batch_size: int = 32


class _Pairs(Dataset):
    def __init__(self, ws: torch.Tensor, images: torch.Tensor) -> None:
        self.ws, self.images = ws, images

    def __len__(self) -> int:
        return self.ws.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"index": i, "w": self.ws[i], "image": self.images[i]}


@register("styleavatar3d-w-pairs-datamodule")
class WPairsDataModule(pl.LightningDataModule):
    Config = WPairsDataModuleConfig

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = c = self.validate_config(cfg)
        generator = load_any_generator(c.generator_path).eval()
        label = frontal_label(c.elevation_deg, c.distance, c.fovy_deg)
        g = torch.Generator().manual_seed(c.seed)
        ws, images = [], []
        with torch.no_grad():
            for start in range(0, c.n_pairs, 16):
                k = min(16, c.n_pairs - start)
                w = generator.mapping(torch.randn(k, generator.z_dim, generator=g), label.expand(k, -1), c.truncation_psi)
                ws.append(w[:, 0])  # one w broadcast to every layer
                images.append(((generator.synthesis(w, label.expand(k, -1))["image"] + 1) / 2).clamp(0, 1))
        self.ws, self.images = torch.cat(ws), torch.cat(images)  # [N,w_dim], [N,3,R,R]

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "data") -> Any:
        c = parse_structured(cls.Config, cfg, path=path, component="data module 'styleavatar3d-w-pairs-datamodule'")
        check_generator_path(c.generator_path, f"{path}.generator_path")
        for key in ("n_pairs", "batch_size"):
            if c[key] < 1:
                raise ConfigError(f"{path}.{key} = {c[key]} must be >= 1.")
        if c.batch_size > c.n_pairs:
            raise ConfigError(f"{path}.batch_size = {c.batch_size} is larger than {path}.n_pairs = {c.n_pairs}: lower it.")
        return c

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Pairs(self.ws, self.images), batch_size=self.cfg.batch_size, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(self.cfg.seed))

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Pairs(self.ws, self.images), batch_size=len(self.ws), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(_Pairs(self.ws[:1], self.images[:1]), batch_size=1)


@register("styleavatar3d-prior-system")
class StyleAvatar3DPriorSystem(TrialSaveDir, pl.LightningModule, Updateable):
    @dataclass
    class Config:
        generator_path: str = "load/gan/toy-red-cube-triplane.pt"  # configs: ${data.generator_path}
        image_encoder: str = ""  # "" / toy: the toy encoder; a CLIP folder or id (e.g. openai/clip-vit-large-patch14)
        num_layers: int = 4
        num_heads: int = 4
        head_dim: int = 16
        lr: float = 0.001
        uncond_prob: float = 0.1
        num_steps: int = 25  # DDIM steps of the prior
        guidance_scale: float = 2.0
        n_eval: int = 16
        seed: int = 0
        elevation_deg: float = 15.0  # the frontal camera (configs: the data module's)
        distance: float = 2.0
        fovy_deg: float = 40.0
        input_image: str = ""  # --export: the avatar of this image (PNG); "" = pair 0's render
        n_frames: int = 24
        export_resolution: int = 64
        export_level: float = 2.0
        export_formats: List[str] = field(default_factory=lambda: ["obj", "glb"])

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True,
                        exp_root_dir: str = "outputs") -> Any:
        c = parse_structured(cls.Config, cfg, path, "system 'styleavatar3d-prior-system'")
        check_generator_path(c.generator_path, f"{path}.generator_path")
        if c.input_image and not Path(c.input_image).is_file():
            raise ConfigError(f"{path}.input_image = '{c.input_image}' not found: give a PNG / JPEG of the avatar to make.")
        for key in ("num_layers", "num_heads", "head_dim", "num_steps", "n_eval", "n_frames", "export_resolution"):
            if c[key] < 1:
                raise ConfigError(f"{path}.{key} = {c[key]} must be >= 1.")
        if not 0 <= c.uncond_prob < 1 or c.guidance_scale < 0:
            raise ConfigError(f"{path}: uncond_prob must lie in [0, 1) and guidance_scale be >= 0.")
        bad = [f for f in c.export_formats if f not in EXPORT_FORMATS]
        if bad or not c.export_formats:
            raise ConfigError(f"{path}.export_formats = {list(c.export_formats)}: use some of {', '.join(EXPORT_FORMATS)}.")
        return c

    def __init__(self, cfg: Any, resumed: bool = False, exp_root_dir: str = "outputs") -> None:
        super().__init__()
        self.cfg = c = self.validate_config(cfg, "system")
        self.generator = load_any_generator(c.generator_path).eval().requires_grad_(False)
        self.encoder = image_encoder(c.image_encoder)
        self.prior = WSpacePrior(self.generator.cfg.w_dim, self.encoder.dim, c.num_layers, c.num_heads, c.head_dim)
        self.register_buffer("label", frontal_label(c.elevation_deg, c.distance, c.fovy_deg), persistent=False)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images.to(self.device))

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.prior.parameters(), lr=self.cfg.lr)

    def on_fit_start(self) -> None:
        if self.global_step == 0:
            datamodule = self.trainer.datamodule
            with torch.no_grad():
                conds = torch.cat([self.embed(x) for x in datamodule.images.split(64)])
            self.prior.set_statistics(datamodule.ws.to(self.device), conds)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.prior.loss(batch["w"], self.embed(batch["image"]), self.cfg.uncond_prob)
        self.log("train/loss_prior", loss.detach(), prog_bar=True, batch_size=batch["w"].shape[0])
        return loss

    @torch.no_grad()
    def avatars(self, images: torch.Tensor) -> torch.Tensor:
        """images [N,3,H,W] in [0,1] -> sampled w [N,w_dim] (seeded)."""
        g = torch.Generator().manual_seed(self.cfg.seed)
        return self.prior.sample(self.embed(images), self.cfg.num_steps, self.cfg.guidance_scale, generator=g)

    @torch.no_grad()
    def render(self, w: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """w [N,w_dim], labels [N,25] -> [N,3,R,R] in [0,1]."""
        ws = w[:, None].expand(-1, self.render_num_ws(), -1)  # one w broadcast to every layer
        return ((self.generator.synthesis(ws, labels)["image"] + 1) / 2).clamp(0, 1)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        n = min(self.cfg.n_eval, batch["w"].shape[0])
        images, ws_true = batch["image"][:n], batch["w"]
        w = self.avatars(images)
        dist = torch.cdist(w, ws_true.to(w))  # [n, N]
        own = dist[torch.arange(n), torch.arange(n)]
        rank = (dist < own[:, None]).sum(1).float()  # 0 = its own w is the nearest
        recon = self.render(w, self.label.expand(n, -1))
        result = {"n_eval": n, "n_pairs": int(ws_true.shape[0]), "top1": float((rank == 0).float().mean()),
                  "mean_rank": float(rank.mean()), "chance_mean_rank": (ws_true.shape[0] - 1) / 2,
                  "image_l1": float((recon.cpu() - images.cpu()).abs().mean())}
        self.save_path("prior_recovery.json").write_text(json.dumps(result, indent=1))
        k = min(8, n)
        sheet = np.concatenate([image_row([im.permute(1, 2, 0).cpu() for im in row[:k]]) for row in (images, recon)], 0)
        save_image(self.save_path(f"it{self.global_step}-inputs-vs-avatars.png"), sheet)
        print(f"lift3d: W prior recovery: top-1 {result['top1']:.2f}, mean rank {result['mean_rank']:.2f} "
              f"(chance {result['chance_mean_rank']:.1f}) over {n} renders")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.cfg.input_image:
            from PIL import Image

            pixels = np.asarray(Image.open(self.cfg.input_image).convert("RGB"), dtype=np.float32) / 255.0
            image = torch.from_numpy(pixels).permute(2, 0, 1)[None]
            r = self.generator.cfg.image_resolution
            image = F.interpolate(image, size=(r, r), mode="area") if image.shape[-1] != r else image
        else:
            image = batch["image"][:1].cpu()
        w = self.avatars(image)  # [1,w_dim]
        folder = self.save_path(f"it{self.global_step}-export/avatar.png").parent
        # around lift3d's world up (z; frontal_label is built in that convention), not the tilted frontal camera's up
        labels = orbit_labels(self.label[0], self.cfg.n_frames, WORLD_UP).to(self.device)
        frames = self.render(w.expand(len(labels), -1), labels)
        for i, frame in enumerate(frames):
            save_image(folder / "frames" / f"{i}.png", frame.permute(1, 2, 0).cpu())
        save_image(folder / "input.png", image[0].permute(1, 2, 0))
        video = save_video_from_folder(folder / "frames", folder / "avatar.mp4", fps=12)
        ws = w[:, None].expand(-1, self.render_num_ws(), -1)
        planes = self.generator.planes(ws)
        meshes = export_triplane_mesh(lambda p: self.generator.query(planes, p.to(planes.device)), folder, "avatar",
                                      self.cfg.export_resolution, self.generator.cfg.box_warp, self.cfg.export_level,
                                      list(self.cfg.export_formats))
        for path in [video, *meshes]:
            print(f"lift3d: exported {path}")

    def render_num_ws(self) -> int:
        return self.generator.mapping(torch.zeros(1, self.generator.z_dim, device=self.device), self.label).shape[1]
