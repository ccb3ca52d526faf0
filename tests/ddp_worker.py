#!/usr/bin/env python
"""One training step of a tiny system under Lightning (tests/test_ddp.py): on `--devices 2` CPU
processes (DDP, gloo) with a per-rank batch of b, or on one process with the whole batch of 2b.
Rank 0 saves, after the step, every trained parameter's gradient and new value (and the GAN's
G_ema and ADA p) to `--out`, so the test can compare the two runs.

    python tests/ddp_worker.py gan  --devices 2 --batch 2 --data <eg3d folder> --out a.pt
    python tests/ddp_worker.py nerf --devices 1 --batch 4 --out b.pt

Lightning starts rank 1 by running this script again (LOCAL_RANK=1). Randomness that would make
the two runs draw different things is fixed here, not in the systems: the GAN's latents are keyed
to the dataset index of the image they are paired with (`KeyedGAN.draw_latents`), its ray samples
are unjittered and all dataset cameras are one camera; the NeRF's cameras are a fixed batch of 2b
views of which rank r trains on views [r·b, (r+1)·b) and its renderer is unjittered (randomized,
grid_prune false). The reductions, the gradient all-reduce and the optimizer steps are the real ones.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset  # noqa: E402

from lift3d.utils import distributed  # noqa: E402

GAN_SYSTEM = {
    "generator": dict(z_dim=8, w_dim=8, mapping_layers=1, plane_resolution=8, plane_channels=4, channel_base=64,
                      channel_max=8, decoder_hidden=8, decoder_features=4, neural_rendering_resolution=8,
                      image_resolution=8, samples_per_ray=6, ray_start=1.1, ray_end=2.9),
    "discriminator": dict(image_resolution=8, channel_base=64, channel_max=8, cmap_dim=4, mbstd_group_size=1),
    "camera_swap_prob": 0.0, "density_reg": 0.0, "r1_gamma": 1.0, "r1_interval": 1, "ada_p": 0.0,
    "ada_adaptive": True, "ada_speed_images": 10.0, "ema_images": 4.0, "ema_rampup": None,
    "sample_every_n_steps": 0, "n_sample_latents": 1,
}


class Dump(pl.Callback):
    def __init__(self, out: str, extra) -> None:
        self.out, self.extra = out, extra

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = {"grad": {}, "param": {}, "world_size": trainer.world_size}
        for name, p in pl_module.named_parameters():
            if p.requires_grad:
                state["param"][name] = p.detach().clone()
                state["grad"][name] = None if p.grad is None else p.grad.detach().clone()
        state.update(self.extra(pl_module, batch))
        ranks = distributed.gather_cat(torch.tensor([trainer.global_rank]))  # every rank's gradients, compared
        grads = [state["grad"][n] for n in sorted(state["grad"]) if state["grad"][n] is not None]
        flat = torch.cat([g.flatten() for g in grads])[None]
        state["grad_per_rank"] = distributed.gather_cat(flat)
        state["ranks"] = ranks
        if trainer.global_rank == 0:
            torch.save(state, self.out)


def gan_run(args):
    from lift3d.gan.eg3d_datamodule import EG3DImageDataModule
    from lift3d.gan.gan_system import GANSystem

    class KeyedGAN(GANSystem):
        """Latents keyed to the batch's dataset indices (the 1st and 2nd draw of a step differ)."""

        def training_step(self, batch, batch_idx):
            self._index, self._draws = batch["index"], 0
            return super().training_step(batch, batch_idx)

        def draw_latents(self, n):
            table = torch.randn(64, 2, self.G.z_dim, generator=torch.Generator().manual_seed(7))
            z = table[self._index, self._draws].to(self.device)
            self._draws += 1
            return z

    system = KeyedGAN(GAN_SYSTEM)
    seen = {}  # what ADA's controller was given: (number of logits, their mean sign), as one process sees it
    adjust = system.augment.adjust

    def recording_adjust(real_logits):
        seen["ada_input"] = torch.tensor([float(real_logits.shape[0]), float(torch.sign(real_logits).mean())])
        return adjust(real_logits)

    system.augment.adjust = recording_adjust
    g = system.G
    g.render_planes = lambda planes, c, perturb=False: type(g).render_planes(g, planes, c, False)
    datamodule = EG3DImageDataModule({"dataroot": args.data, "batch_size": args.batch, "n_test_frames": 2})

    def extra(module, batch):
        return {"g_ema": {n: p.detach().clone() for n, p in module.G_ema.named_parameters()},
                "ada_p": float(module.augment.p), "indices": distributed.gather_cat(batch["index"]),
                "ada_input": distributed.gather_cat(seen["ada_input"][None])}  # [ranks,2]

    return system, datamodule, extra


class FixedViews(IterableDataset):
    """Rank r of `world` yields views [r·b, (r+1)·b) of one fixed batch of world·b views, forever."""

    def __init__(self, views: dict, b: int) -> None:
        self.views, self.b, self.rank = views, b, 0

    def __iter__(self):
        lo, hi = self.rank * self.b, (self.rank + 1) * self.b
        part = {k: v[lo:hi] if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == len(self.views["c2w"]) else v
                for k, v in self.views.items()}
        while True:
            yield part


class FixedViewsModule(pl.LightningDataModule):
    def __init__(self, views: dict, b: int) -> None:
        super().__init__()
        self.train_dataset = FixedViews(views, b)

    def train_dataloader(self):
        self.train_dataset.rank = self.trainer.global_rank
        return DataLoader(self.train_dataset, batch_size=None, num_workers=0, collate_fn=lambda x: x)


def nerf_run(args):
    from lift3d.config import load_config
    from lift3d.data.random_camera import RandomCameraIterableDataset
    from lift3d.registry import find

    overrides = ["data.width=8", "data.height=8", "system.renderer.num_samples_per_ray=8",
                 "system.renderer.randomized=false", "system.renderer.grid_prune=false",
                 "system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=10",
                 "system.geometry.mlp_network_config.n_neurons=16",
                 f"data.batch_size={args.total_views}", "data.seed=3"]
    cfg = load_config(str(REPO / "configs" / "reconstruct-nerf.yaml"), cli_args=overrides)
    views = RandomCameraIterableDataset(cfg.data).sample()  # a fixed batch of total_views cameras
    system = find(cfg.system_type)(cfg.system)
    return system, FixedViewsModule(views, args.batch), lambda module, batch: {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["gan", "nerf"])
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--batch", type=int, required=True, help="per-rank batch")
    parser.add_argument("--total-views", type=int, default=4)
    parser.add_argument("--data", default="")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    system, datamodule, extra = (gan_run if args.kind == "gan" else nerf_run)(args)
    trainer_args = distributed.plan({"accelerator": "cpu", "devices": args.devices}, fitting=True)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[distributed.RunOnRanks(Path(args.out).parent), Dump(args.out, extra)],
                         **trainer_args)
    trainer.fit(system, datamodule=datamodule)


if __name__ == "__main__":
    main()
