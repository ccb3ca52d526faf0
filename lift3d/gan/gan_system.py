"""`gan-system`: adversarial training of a 3D-aware generator on pose-labelled images (EG3D's training
loop, arXiv 2112.07945 §4.2 and supplement; StyleGAN2 arXiv 1912.04958 Appendix B), run by launch.py.

One training step (Lightning manual optimisation, two Adam optimizers; `global_step` counts G steps):
1. G: z ~ N(0, I), a rendering camera c drawn from the dataset's labels, the conditioning camera
   swapped for another label with probability `camera_swap_prob` (EG3D's generator pose conditioning
   regularisation); L_G = softplus(-D(aug(G(z, c)), c)); every `density_reg_interval` steps + the density
   regulariser × λ × interval (lazy); then EMA of G (`G_ema`).
2. D: L_D = softplus(D(aug(fake))) + softplus(-D(aug(real))); every `r1_interval` steps + (γ/2)·R1 × interval.
   Lazy intervals rescale Adam's lr and betas by interval/(interval+1) (StyleGAN2 §B).
3. ADA-style augmentation probability p adjusted from sign(D(real)) when `ada_adaptive`.

Outputs (`<trial>/save/`): `it<step>-samples.png` every `sample_every_n_steps` (rows: fixed latents of
`sample_seed`, columns: views around the object; also TensorBoard `samples`); the test pass renders a
turntable per fixed latent (`it<step>-test/latent<k>/<frame>.png`, `it<step>-test-latent<k>.mp4`);
`--export` writes the mesh of latent `export_latent` (`it<step>-export/latent<k>.<fmt>`) by marching cubes
of its tri-plane density. Samples, videos and exports use G_ema, conditioned on the dataset's central camera.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.config import parse_structured
from lift3d.errors import ConfigError
from lift3d.gan.augment import DifferentiableAugment
from lift3d.gan.camera_label import orbit_labels, scene_up
from lift3d.gan.discriminator import CameraConditionedDiscriminator
from lift3d.gan.ema import ema_beta, update_ema
from lift3d.gan.losses import density_regularization, discriminator_loss, generator_loss, r1_penalty
from lift3d.gan.mesh_export import EXPORT_FORMATS, export_triplane_mesh
from lift3d.gan.triplane_generator import TriPlaneGenerator
from lift3d.registry import find, register
from lift3d.utils.base import Updateable, component_label
from lift3d.utils.distributed import gather_cat
from lift3d.utils.saving import TrialSaveDir, image_row, save_image, save_video_from_folder


def _to_unit(image: Tensor) -> Tensor:
    """[3,H,W] in [-1,1] -> [H,W,3] in [0,1]."""
    return ((image.detach().float().cpu() + 1) / 2).clamp(0, 1).permute(1, 2, 0)


@register("gan-system")
class GANSystem(TrialSaveDir, pl.LightningModule, Updateable):
    @dataclass
    class Config:
        generator_type: str = "triplane-generator"
        generator: dict = field(default_factory=dict)
        discriminator_type: str = "camera-conditioned-discriminator"
        discriminator: dict = field(default_factory=dict)
        lr_g: float = 0.0025
        lr_d: float = 0.002
        betas: List[float] = field(default_factory=lambda: [0.0, 0.99])
        r1_gamma: float = 1.0  # γ of (γ/2)·R1; 0 disables
        r1_interval: int = 16  # lazy R1 every N D steps (scaled by N)
        density_reg: float = 0.25  # λ of EG3D's density regulariser; 0 disables
        density_reg_interval: int = 4
        density_reg_points: int = 1000
        density_reg_offset: float = 0.004  # std of the point offset, world units (EG3D's density_reg_p_dist)
        camera_swap_prob: float = 0.5  # probability of conditioning G on another camera than it renders
        ada_p: float = 0.0  # initial augmentation probability (0 with ada_adaptive false: no augmentation)
        ada_adaptive: bool = False
        ada_target: float = 0.6
        ada_speed_images: float = 100000.0
        ema_images: float = 10000.0  # EMA half-life of G_ema, in images
        ema_rampup: Optional[float] = 0.05  # null: no ramp-up
        n_sample_latents: int = 4
        sample_seed: int = 0
        sample_views: int = 4  # views per latent in the sample grid
        sample_every_n_steps: int = 100  # 0: never during training
        # FID/KID of G_ema samples vs real images every N steps (0: never), logged as val/fid, val/kid
        # (lift3d/gan/fid_kid.py): Inception features with torch-fidelity/clean-fid + weights, else toy features
        metrics_every_n_steps: int = 0
        metrics_n_images: int = 64
        metrics_features: str = "auto"  # auto | inception | toy
        truncation_psi: float = 1.0  # of samples, turntables and exports
        export_latent: int = 0
        export_resolution: int = 64
        export_level: float = 10.0  # density σ of the exported surface
        export_formats: List[str] = field(default_factory=lambda: ["obj", "glb"])
        # adaptation (PODIA-3D / DATID-3D, docs/methods/podia3d.md): start G, G_ema (and D, from a .ckpt) from a
        # trained source GAN: a gan-system <trial>/ckpts/last.ckpt or a save_generator .pt; "" = random init
        init_from: str = ""

    # ------------------------------------------------------------------ validation (before work)
    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True,
                        exp_root_dir: str = "outputs") -> Any:
        parsed = parse_structured(cls.Config, cfg, path, f"system {component_label(cls)}")
        sections = {}
        for comp, base in (("generator", TriPlaneGenerator), ("discriminator", CameraConditionedDiscriminator)):
            type_name = parsed[f"{comp}_type"]
            comp_cls = find(type_name)
            if not issubclass(comp_cls, base):
                raise ConfigError(f"{path}.{comp}_type = '{type_name}' is not a {comp}: name a registered {comp} type.")
            sub = parse_structured(comp_cls.Config, parsed[comp], f"{path}.{comp}", f"{comp} '{type_name}'")
            comp_cls.validate_config(sub, f"{path}.{comp}")
            sections[comp] = sub
        if sections["generator"].image_resolution != sections["discriminator"].image_resolution:
            raise ConfigError(
                f"{path}.discriminator.image_resolution = {sections['discriminator'].image_resolution} differs from "
                f"{path}.generator.image_resolution = {sections['generator'].image_resolution}: set them equal.")
        for key in ("r1_interval", "density_reg_interval", "n_sample_latents", "sample_views", "density_reg_points",
                    "export_resolution"):
            if parsed[key] < 1:
                raise ConfigError(f"{path}.{key} = {parsed[key]} must be >= 1.")
        from lift3d.gan.fid_kid import FEATURE_KINDS

        if parsed.metrics_features not in FEATURE_KINDS:
            raise ConfigError(f"{path}.metrics_features = '{parsed.metrics_features}': use one of {', '.join(FEATURE_KINDS)}.")
        if parsed.metrics_n_images < 2:
            raise ConfigError(f"{path}.metrics_n_images = {parsed.metrics_n_images} must be >= 2 (FID/KID compare sets).")
        for key in ("r1_gamma", "density_reg", "lr_g", "lr_d", "ema_images", "sample_every_n_steps",
                    "metrics_every_n_steps"):
            if parsed[key] < 0:
                raise ConfigError(f"{path}.{key} = {parsed[key]} must be >= 0.")
        for key in ("camera_swap_prob", "ada_p", "ada_target"):
            if not 0.0 <= parsed[key] <= 1.0:
                raise ConfigError(f"{path}.{key} = {parsed[key]} must lie in [0, 1].")
        if len(parsed.betas) != 2 or not all(0.0 <= b < 1.0 for b in parsed.betas):
            raise ConfigError(f"{path}.betas = {list(parsed.betas)}: give two Adam betas in [0, 1), e.g. [0, 0.99].")
        if not 0 <= parsed.export_latent < parsed.n_sample_latents:
            raise ConfigError(f"{path}.export_latent = {parsed.export_latent}: pick a fixed latent in "
                              f"0..{parsed.n_sample_latents - 1} (n_sample_latents = {parsed.n_sample_latents}).")
        bad = [f for f in parsed.export_formats if f not in EXPORT_FORMATS]
        if bad or not parsed.export_formats:
            raise ConfigError(f"{path}.export_formats = {list(parsed.export_formats)}: use some of {', '.join(EXPORT_FORMATS)}.")
        if parsed.init_from and not resumed and not Path(parsed.init_from).is_file():
            raise ConfigError(f"{path}.init_from = '{parsed.init_from}' not found: give the source GAN's "
                              f"<trial>/ckpts/last.ckpt or a save_generator file (load/gan/*.pt).")
        return parsed

    # ------------------------------------------------------------------ construction
    def __init__(self, cfg: Any, resumed: bool = False, exp_root_dir: str = "outputs") -> None:
        super().__init__()
        self.cfg = self.validate_config(cfg, "system")
        self.automatic_optimization = False
        self.G = find(self.cfg.generator_type)(self.cfg.generator)
        self.D = find(self.cfg.discriminator_type)(self.cfg.discriminator)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        if self.cfg.init_from and not resumed:
            from lift3d.gan.pretrained import load_initial_weights

            load_initial_weights(self, self.cfg.init_from)
        self.augment = DifferentiableAugment(self.cfg.ada_p, self.cfg.ada_target, self.cfg.ada_speed_images,
                                             self.cfg.ada_adaptive)
        g = torch.Generator().manual_seed(self.cfg.sample_seed)
        self.register_buffer("sample_z", torch.randn(self.cfg.n_sample_latents, self.G.z_dim, generator=g), persistent=False)
        self._save_dir: Optional[Path] = None
        self._loaded_global_step = 0
        self._labels: Optional[Tensor] = None  # the dataset's camera labels [N,25]

    # ------------------------------------------------------------------ bookkeeping
    @property
    def true_global_step(self) -> int:
        step = int(self.trainer.global_step) if self._trainer is not None else 0
        return max(step, self._loaded_global_step)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._loaded_global_step = int(checkpoint.get("global_step", 0))

    def dataset_labels(self) -> Tensor:
        """[N,25] camera labels of the datamodule (what G is conditioned on and rendered from)."""
        if self._labels is None:
            datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            labels = getattr(datamodule, "labels", None)
            if labels is None:
                raise ConfigError("gan-system needs a data module with camera labels (data_type: eg3d-image-datamodule).")
            self._labels = labels.to(self.device)
        return self._labels

    def central_label(self) -> Tensor:
        from lift3d.gan.eg3d_datamodule import central_label

        return central_label(self.dataset_labels())

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        resolution = getattr(datamodule, "resolution", None)
        if stage == "fit" and resolution is not None and resolution != self.G.cfg.image_resolution:
            raise ConfigError(
                f"the dataset's images are {resolution}x{resolution} but system.generator.image_resolution = "
                f"{self.G.cfg.image_resolution}: set system.generator.image_resolution={resolution} and "
                f"system.discriminator.image_resolution={resolution} (or resize the dataset).")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        def adam(params, lr: float, interval: int) -> torch.optim.Adam:
            ratio = interval / (interval + 1) if interval > 0 else 1.0  # StyleGAN2's lazy-regularisation correction
            return torch.optim.Adam(params, lr=lr * ratio, betas=tuple(b**ratio for b in self.cfg.betas), eps=1e-8)

        g_interval = self.cfg.density_reg_interval if self.cfg.density_reg > 0 else 0
        d_interval = self.cfg.r1_interval if self.cfg.r1_gamma > 0 else 0
        return [adam(self.G.parameters(), self.cfg.lr_g, g_interval), adam(self.D.parameters(), self.cfg.lr_d, d_interval)]

    def sample_labels(self, n: int) -> Tensor:
        labels = self.dataset_labels()
        return labels[torch.randint(len(labels), (n,), device=labels.device)]

    def real_raw(self, real: Tensor) -> Tensor:
        """The real image at the neural rendering resolution (the 'raw' half of dual discrimination)."""
        r = self.G.cfg.neural_rendering_resolution
        return real if real.shape[-1] == r else F.interpolate(real, size=(r, r), mode="area")

    def discriminate(self, image: Tensor, image_raw: Tensor, c: Tensor) -> Tensor:
        return self.D(image, c, image_raw, augment=self.augment)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        cfg = self.cfg
        opt_g, opt_d = self.optimizers()
        step = self.true_global_step
        real, c_real = batch["image"], batch["label"]  # [B,3,R,R] in [-1,1], [B,25]
        b = real.shape[0]

        # ---- generator
        self.D.requires_grad_(False)
        c_gen = self.sample_labels(b)
        swap = torch.rand(b, 1, device=self.device) < cfg.camera_swap_prob
        c_cond = torch.where(swap, self.sample_labels(b), c_gen)
        z = self.draw_latents(b)
        fake = self.G(z, c_gen, c_cond, perturb=True, update_w_avg=True)
        loss_g = generator_loss(self.discriminate(fake["image"], fake["image_raw"], c_gen))
        loss_g_total = loss_g
        if cfg.density_reg > 0 and step % cfg.density_reg_interval == 0:
            planes = fake["planes"]
            loss_density = density_regularization(lambda p: self.G.query(planes, p)[0], b, cfg.density_reg_points,
                                                  self.G.cfg.box_warp, cfg.density_reg_offset, self.device)
            loss_g_total = loss_g_total + cfg.density_reg * cfg.density_reg_interval * loss_density
            self.log("train/loss_density", loss_density.detach(), batch_size=b)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g_total)
        opt_g.step()  # counted: global_step = G steps
        # several processes (docs/distributed.md): one step trains on world_size × b images
        b_all = b * (self.trainer.world_size if self._trainer is not None else 1)
        update_ema(self.G_ema, self.G, ema_beta(b_all, cfg.ema_images, (step + 1) * b_all, cfg.ema_rampup))
        self.D.requires_grad_(True)

        # ---- discriminator
        with torch.no_grad():
            fake = self.G(self.draw_latents(b), c_gen, c_cond, perturb=True)
        do_r1 = cfg.r1_gamma > 0 and step % cfg.r1_interval == 0
        real_in = real.detach().requires_grad_(do_r1)
        real_logits = self.discriminate(real_in, self.real_raw(real_in), c_real)
        fake_logits = self.discriminate(fake["image"], fake["image_raw"], c_gen)
        loss_d = discriminator_loss(real_logits, fake_logits)
        loss_d_total = loss_d
        if do_r1:
            penalty = r1_penalty(real_logits, [real_in])
            loss_d_total = loss_d_total + penalty * (cfg.r1_gamma / 2) * cfg.r1_interval
            self.log("train/r1_penalty", penalty.detach(), batch_size=b)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d_total)
        opt_d.optimizer.step()  # the raw optimizer: Lightning counts only G steps in global_step
        self.augment.adjust(gather_cat(real_logits.detach()))  # every rank's logits: one p on all ranks

        self.log("train/loss_g", loss_g.detach(), prog_bar=True, batch_size=b)
        self.log("train/loss_d", loss_d.detach(), prog_bar=True, batch_size=b)
        self.log("train/logits_real", real_logits.detach().mean(), batch_size=b)
        self.log("train/logits_fake", fake_logits.detach().mean(), batch_size=b)
        self.log("train/ada_p", self.augment.p.detach(), batch_size=b)
        for key, value in getattr(self.D, "training_stats", dict)().items():  # a D with its own statistics
            self.log(f"train/D_{key}", float(value), batch_size=b)
        done = step + 1
        if (cfg.sample_every_n_steps > 0 and done % cfg.sample_every_n_steps == 0 and self._save_dir is not None
                and self.global_rank == 0):  # one writer of the sample grid
            self.save_samples(done)
        if cfg.metrics_every_n_steps > 0 and done % cfg.metrics_every_n_steps == 0 and self.global_rank == 0:
            self.log_metrics(done)

    def draw_latents(self, n: int) -> Tensor:
        """z ~ N(0, I) [n, z_dim] for a training step (each rank draws its own, docs/distributed.md)."""
        return torch.randn(n, self.G.z_dim, device=self.device)

    @torch.no_grad()
    def log_metrics(self, step: int) -> dict:
        """FID/KID (lift3d/gan/fid_kid.py) of `metrics_n_images` G_ema samples (fixed latents and cameras
        drawn from `sample_seed`) against as many dataset images; logged as val/fid, val/kid, val/kid_std."""
        from lift3d.gan.fid_kid import feature_extractor, fid_kid

        n = self.cfg.metrics_n_images
        dataset = self.trainer.datamodule.train_dataset
        picked = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.cfg.sample_seed))[:n]
        real = torch.stack([dataset[int(i)]["image"] for i in picked])  # [n,3,R,R] in [-1,1]
        g = torch.Generator().manual_seed(self.cfg.sample_seed + 1)
        labels = self.dataset_labels()
        fakes = []
        for start in range(0, len(picked), 8):
            k = min(8, len(picked) - start)
            z = torch.randn(k, self.G.z_dim, generator=g).to(self.device)
            c = labels[torch.randint(len(labels), (k,), generator=g).to(labels.device)]
            fakes.append(self.G_ema(z, c, c, truncation_psi=1.0)["image"].cpu())
        if not hasattr(self, "_metric_extractor"):
            self._metric_extractor = feature_extractor(self.cfg.metrics_features, self.device)
        scores = fid_kid(real, torch.cat(fakes), extractor=self._metric_extractor)
        for key in ("fid", "kid", "kid_std"):
            self.log(f"val/{key}", scores[key], batch_size=len(picked), rank_zero_only=True)
        path = self.save_path("metrics.csv")
        if not path.is_file():
            path.write_text("step,features,fid,kid,kid_std\n")
        with open(path, "a") as fp:
            fp.write(f"{step},{scores['features']},{scores['fid']:.6g},{scores['kid']:.6g},{scores['kid_std']:.6g}\n")
        return scores

    # ------------------------------------------------------------------ what users look at
    @torch.no_grad()
    def render_fixed_latents(self, labels: Tensor, latents: Optional[Tensor] = None) -> dict[str, Tensor]:
        """G_ema renders of every fixed latent (or `latents` [K,z]) from each camera of labels [V,25]:
        returns image [K,V,3,H,W] in [-1,1] and mask [K,V,1,r,r]; w conditioned on the central camera."""
        z = self.sample_z if latents is None else latents
        k, v = z.shape[0], labels.shape[0]
        cond = self.central_label()[None].expand(k, -1)
        ws = self.G_ema.mapping(z, cond, self.cfg.truncation_psi)  # [K,num_ws,w_dim]
        ws = ws[:, None].expand(-1, v, -1, -1).reshape(k * v, *ws.shape[1:])
        out = self.G_ema.synthesis(ws, labels[None].expand(k, -1, -1).reshape(k * v, -1))
        return {"image": out["image"].reshape(k, v, *out["image"].shape[1:]),
                "mask": out["image_mask"].reshape(k, v, *out["image_mask"].shape[1:])}

    def save_samples(self, step: int) -> Path:
        labels = orbit_labels(self.central_label(), self.cfg.sample_views, scene_up(self.dataset_labels()))
        images = self.render_fixed_latents(labels)["image"]  # [K,V,3,H,W]
        grid = np.concatenate([image_row([_to_unit(im) for im in row]) for row in images], axis=0)
        path = save_image(self.save_path(f"it{step}-samples.png"), grid)
        for logger in self.loggers:
            if hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image("samples", grid, step, dataformats="HWC")
        return path

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = self.render_fixed_latents(batch["label"].to(self.device))["image"]  # [K,b,3,H,W]
        step = self.true_global_step
        for k in range(images.shape[0]):
            for j, index in enumerate(batch["index"].tolist()):
                save_image(self.save_path(f"it{step}-test/latent{k}/{index}.png"), _to_unit(images[k, j]))

    def on_test_epoch_start(self) -> None:
        folder = self.save_path(f"it{self.true_global_step}-test/x").parent
        for old in folder.glob("latent*/*.png"):  # a repeated test pass at one step replaces its frames
            old.unlink()

    def on_test_epoch_end(self) -> None:
        step = self.true_global_step
        for k in range(self.cfg.n_sample_latents):
            folder = self.save_path(f"it{step}-test/latent{k}/x").parent
            if any(folder.glob("*.png")):
                save_video_from_folder(folder, self.save_path(f"it{step}-test-latent{k}.mp4"), fps=15)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        return None

    @torch.no_grad()
    def export_mesh(self, latent: Optional[int] = None) -> list[Path]:
        k = self.cfg.export_latent if latent is None else latent
        ws = self.G_ema.mapping(self.sample_z[k:k + 1], self.central_label()[None], self.cfg.truncation_psi)
        planes = self.G_ema.planes(ws)  # [1,3,C,R,R]
        folder = self.save_path(f"it{self.true_global_step}-export/x").parent
        return export_triplane_mesh(lambda p: self.G_ema.query(planes, p.to(planes.device)), folder, f"latent{k}",
                                    self.cfg.export_resolution, self.G_ema.cfg.box_warp, self.cfg.export_level,
                                    list(self.cfg.export_formats))

    def on_predict_start(self) -> None:
        for path in self.export_mesh():
            print(f"lift3d: exported {path}")
