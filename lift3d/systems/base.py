"""`BaseLift3DSystem`: the Lightning module every lift3d system derives from.

It builds the components named in its config (geometry, material, background, renderer; the
guidance and prompt processor only when fitting, so --export/--test never load a diffusion model),
propagates `update_step` to every component and to the training dataset, evaluates scheduled
values with `C()`, parses optimizer/scheduler configs, chains stages through
`geometry_convert_from`, and writes what users look at under `<trial>/save/`.

Trainable guidance state: a guidance is a plain attribute (its frozen models stay out of the
module tree and of checkpoints), but it may own trainable weights (e.g. X-Dreamer's CG-LoRA).
The module a guidance returns from `BaseGuidance.trainable_modules()` (None by default) is
registered as the system's child `guidance_params`, so it is saved in checkpoints, reached by
`update_step`, moved with the system, and optimised (optimizer group `guidance_params` or
`guidance_params.<sub>`).
The guidance is built in `setup("fit")`, before Lightning restores a resumed checkpoint and
builds the optimizer; runs that never build a guidance (--test, --export) drop the
`guidance_params.*` entries of the checkpoint they load.

Faults (issue #21): `guarded_loss` names the first weighted loss term that is not finite (and may
skip up to `nonfinite_skip_steps` such steps), `on_before_optimizer_step` names the first parameter
with a non-finite gradient, `optimizer_step` checks the parameters after the update; each raises
RunFault before the step's checkpoint is written, so `last.ckpt` stays the last good state.
Exact resume: checkpoints carry the global RNG states (python/numpy/torch), restored right before the
resumed run's first training step; validation during fitting leaves them as they were; the training
stream is told when a step takes its batch (`SeededBatchStream.consumed`).
"""
from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from lift3d.background.base import BaseBackground
from lift3d.config import parse_structured
from lift3d.errors import ConfigError, RunFault
from lift3d.export.base import BaseExporter
from lift3d.geometry.base import BaseGeometry
from lift3d.guidance.base import BaseGuidance
from lift3d.materials.base import BaseMaterial
from lift3d.prompt.base import BasePromptProcessor
from lift3d.registry import find
from lift3d.renderers.base import BaseRenderer
from lift3d.systems.optim import make_optimizer, make_scheduler
from lift3d.systems.regularizers import REGULARIZERS
from lift3d.systems.stage_chain import resolve_checkpoint_keys
from lift3d.utils import rng_state
from lift3d.utils.base import Updateable, component_label
from lift3d.utils.fault_inject import fault_args
from lift3d.utils.checkpointing import DIGEST_KEY, FORMAT_KEY, FORMAT_VERSION, config_digest, read_checkpoint
from lift3d.utils.distributed import PeerFailed, all_ranks_true, decorrelate_rng, injected_rank_nan
from lift3d.utils.saving import TrialSaveDir
from lift3d.utils.schedule import C


class BaseLift3DSystem(TrialSaveDir, pl.LightningModule, Updateable):
    @dataclass
    class Config:
        geometry_type: str = ""
        geometry: dict = field(default_factory=dict)
        material_type: str = "no-material"
        material: dict = field(default_factory=dict)
        background_type: str = "solid-color-background"
        background: dict = field(default_factory=dict)
        renderer_type: str = ""
        renderer: dict = field(default_factory=dict)
        guidance_type: str = ""
        guidance: dict = field(default_factory=dict)
        prompt_processor_type: str = "dummy-prompt-processor"
        prompt_processor: dict = field(default_factory=dict)
        exporter_type: str = "mesh-exporter"
        exporter: dict = field(default_factory=dict)
        loss: dict = field(default_factory=dict)
        optimizer: dict = field(default_factory=dict)
        scheduler: Optional[dict] = None
        geometry_convert_from: Optional[str] = None
        geometry_convert_inherit_texture: bool = False
        geometry_convert_override: dict = field(default_factory=dict)
        cleanup_after_validation_step: bool = False
        cleanup_after_test_step: bool = False
        # steps with a non-finite loss skipped (no update) before the run stops; 0: stop at the first
        nonfinite_skip_steps: int = 0

    # (config key of the component, config key of its registered type, the base class it derives from)
    COMPONENTS = (
        ("geometry", "geometry_type", BaseGeometry),
        ("material", "material_type", BaseMaterial),
        ("background", "background_type", BaseBackground),
        ("renderer", "renderer_type", BaseRenderer),
        ("guidance", "guidance_type", BaseGuidance),
        ("prompt_processor", "prompt_processor_type", BasePromptProcessor),
        ("exporter", "exporter_type", BaseExporter),
    )
    REQUIRED = ("geometry", "renderer", "guidance")
    # built only when fitting (they may load diffusion models): --test/--export never need them
    FIT_ONLY = ("guidance", "prompt_processor")
    # losses the system computes itself (besides the guidance's and the shared regularizers)
    system_losses: tuple[str, ...] = ()

    # ------------------------------------------------------------------ validation (before work)
    @classmethod
    def validate_config(
        cls, cfg: Any, path: str = "system", resumed: bool = False, fitting: bool = True, exp_root_dir: str = "outputs",
    ) -> Any:
        """Check the system's section and every component's (each class's `validate_config` with
        its real path, `<path>.<component>`); `exp_root_dir` is where `LAST` checkpoints are looked
        up (the experiment's top-level key). Returns the parsed section."""
        parsed = parse_structured(cls.Config, cfg, path, f"system {component_label(cls)}")
        produced: set[str] = set(REGULARIZERS) | set(cls.system_losses)
        for comp, type_key, base in cls.COMPONENTS:
            type_name = parsed[type_key]
            if not type_name:
                if comp in cls.REQUIRED:
                    raise ConfigError(f"{path}.{type_key} is empty: name a registered {comp} type.")
                continue
            comp_cls = find(type_name)
            if not issubclass(comp_cls, base):
                raise ConfigError(
                    f"{path}.{type_key} = '{type_name}' is not a {comp} ({comp_cls.__module__}.{comp_cls.__qualname__} "
                    f"does not derive from {base.__module__}.{base.__qualname__}): name a registered {comp} type."
                )
            sub_path = f"{path}.{comp}"
            sub = parse_structured(comp_cls.Config, parsed[comp], sub_path, f"{comp} '{type_name}'")
            if fitting or comp not in cls.FIT_ONLY:
                comp_cls.validate_config(resolve_checkpoint_keys(comp_cls, sub, sub_path, exp_root_dir), sub_path)
            if comp == "guidance":
                produced |= {p[len("loss_"):] for p in comp_cls.produces}
        for key in parsed.loss.keys():
            if not key.startswith("lambda_") or key[len("lambda_"):] not in produced:
                raise ConfigError(
                    f"{path}.loss.{key} weighs no loss of this experiment. Losses available: "
                    f"{', '.join('lambda_' + p for p in sorted(produced))}."
                )
            try:
                C(parsed.loss[key], 0, 0)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{path}.loss.{key}: {exc}") from None
        if parsed.nonfinite_skip_steps < 0:
            raise ConfigError(f"{path}.nonfinite_skip_steps = {parsed.nonfinite_skip_steps} is negative: use 0 (stop at the first) or more.")
        if parsed.geometry_convert_from and not resumed:
            from lift3d.systems.stage_chain import check_convertible, resolve_checkpoint

            key = f"{path}.geometry_convert_from"
            ckpt = resolve_checkpoint(parsed.geometry_convert_from, exp_root_dir, key)
            read_checkpoint(ckpt, key)  # empty / truncated / foreign: a clear error now, not at construction
            check_convertible(ckpt, parsed.geometry_type, key)  # both geometry types and the fix
        return parsed

    # ------------------------------------------------------------------ construction
    def __init__(self, cfg: Any, resumed: bool = False, exp_root_dir: str = "outputs") -> None:
        """`exp_root_dir`: the experiment's top-level key, where `LAST` checkpoints are looked up."""
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, "system", f"system {component_label(type(self))}")
        self._save_dir: Optional[Path] = None
        self._resumed = resumed
        self._exp_root_dir = exp_root_dir
        self._loaded_global_step = 0
        self._rng_to_restore: Optional[dict] = None  # global RNG states of a resumed checkpoint
        self._rng_before_validation: Optional[dict] = None
        self._nonfinite_skipped = 0
        self.guidance: Any = None
        self.prompt_processor: Any = None
        self.prompt_utils: Any = None
        self.configure()

    def configure(self) -> None:
        cfg = self.cfg
        if cfg.geometry_convert_from and not self._resumed:
            self.geometry = self._convert_previous_geometry()
        else:
            self.geometry = find(cfg.geometry_type)(cfg.geometry)
        self.material = find(cfg.material_type)(cfg.material)
        self.background = find(cfg.background_type)(cfg.background)
        self.renderer = find(cfg.renderer_type)(
            cfg.renderer, geometry=self.geometry, material=self.material, background=self.background
        )

    def _convert_previous_geometry(self) -> Any:
        from lift3d.systems.stage_chain import load_previous_geometry

        previous = load_previous_geometry(self.cfg.geometry_convert_from, self._exp_root_dir)
        geometry_cfg = OmegaConf.merge(self.cfg.geometry, self.cfg.geometry_convert_override)
        return find(self.cfg.geometry_type).create_from(
            previous, geometry_cfg, copy_net=self.cfg.geometry_convert_inherit_texture
        )

    def build_guidance(self, move: bool = True) -> None:
        """Create the guidance and prompt processor (may load diffusion models); idempotent.
        `move`: also move the guidance to the system's device (not in `setup`, where the system
        has not been moved yet)."""
        if self.guidance is None:
            self.prompt_processor = find(self.cfg.prompt_processor_type)(self.cfg.prompt_processor)
            self.prompt_utils = self.prompt_processor()
            guidance_cls = find(self.cfg.guidance_type)
            self.guidance = guidance_cls(
                resolve_checkpoint_keys(guidance_cls, self.cfg.guidance, "system.guidance", self._exp_root_dir)
            )
            module = self.guidance.trainable_modules()
            if module is not None:
                self.guidance_params = module  # nn.Module child: checkpointed, optimised, moved
        if move:
            self.guidance.to(self.device)

    # ------------------------------------------------------------------ step-dependent values
    def C(self, value: Any) -> Any:
        return C(value, self.true_current_epoch, self.true_global_step)

    @property
    def true_global_step(self) -> int:
        """The training step, also in --test/--export runs (Lightning restores its loop counters
        only when fitting, so evaluation runs use the step stored in the loaded checkpoint)."""
        step = int(self.trainer.global_step) if self._trainer is not None else 0
        return max(step, self._loaded_global_step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[FORMAT_KEY] = FORMAT_VERSION
        checkpoint[DIGEST_KEY] = config_digest(self.cfg)
        checkpoint["lift3d_rng"] = rng_state.capture()  # after this step; the next step draws from here

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._loaded_global_step = int(checkpoint.get("global_step", 0))
        self._rng_to_restore = checkpoint.get("lift3d_rng")
        if "guidance_params" not in self._modules:  # no guidance built (--test/--export): not needed
            state = checkpoint.get("state_dict", {})
            for key in [k for k in state if k.startswith("guidance_params.")]:
                del state[key]

    @property
    def true_current_epoch(self) -> int:
        return int(self.trainer.current_epoch) if self._trainer is not None else 0

    def _update_all(self) -> None:
        epoch, step = self.true_current_epoch, self.true_global_step
        self.do_update_step(epoch, step)
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "train_dataset", None)
        if isinstance(dataset, Updateable):
            dataset.do_update_step(epoch, step)

    def setup(self, stage: str) -> None:
        if stage == "fit":  # before a resumed checkpoint is restored (it may hold guidance_params.*)
            self.build_guidance(move=False)

    def on_fit_start(self) -> None:
        self.build_guidance()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        from lift3d.data.seeded_stream import SeededBatchStream

        dataset = getattr(getattr(self.trainer, "datamodule", None), "train_dataset", None)
        if isinstance(dataset, SeededBatchStream):
            dataset.consumed()  # this step took the oldest drawn batch
        if self._rng_to_restore is not None:  # first step of a resumed run: continue the saved sequences
            rng_state.restore(self._rng_to_restore)
            self._rng_to_restore = None
            decorrelate_rng(self.global_rank)  # several processes: the checkpoint holds rank 0's sequences
        self._update_all()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # validation during fitting must not shift the training's random sequences (a resumed run
        # does not repeat the validation of its checkpoint's step)
        self._rng_before_validation = rng_state.capture()

    def on_validation_end(self) -> None:
        if self._trainer is not None and self.trainer.state.fn == "fit" and self._rng_before_validation is not None:
            rng_state.restore(self._rng_before_validation)

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update_all()

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update_all()

    def logs_this_step(self) -> bool:
        """Whether Lightning writes this training step's logged values (every trainer.log_every_n_steps).
        A `self.log` call costs about 1 ms on CPU, so per-term values are logged only on these steps:
        the logs hold the same values, a step is ~5 % faster on the demo (benchmarks/RESULTS.md, #20)."""
        try:
            return bool(self.trainer._logger_connector.should_update_logs)  # Lightning's own rule
        except (AttributeError, RuntimeError, NotImplementedError):  # not attached to a trainer
            return True

    # ------------------------------------------------------------------ non-finite guard
    def guarded_loss(self, loss: torch.Tensor, terms: dict, lambdas: dict) -> Optional[torch.Tensor]:
        """`loss`, or None to skip this step (Lightning then makes no update) while fewer than
        `nonfinite_skip_steps` steps were skipped; else RunFault naming the first weighted loss term
        (or the total) that is not finite."""
        injected = fault_args("nan-loss")  # tests: LIFT3D_FAULT_INJECT=nan-loss:<step>:<term>
        if injected and int(injected[0]) == self.true_global_step and f"loss_{injected[1]}" in terms:
            terms[f"loss_{injected[1]}"] = terms[f"loss_{injected[1]}"] * float("nan")
            loss = loss * float("nan")
        if injected_rank_nan(self.global_rank, self.true_global_step):  # LIFT3D_FAULT_INJECT=rank-fault:<r>:<step>:nan
            loss = loss * float("nan")
        finite_here = bool(torch.isfinite(loss.detach()).all())
        # several processes skip (or stop) together: a rank skipping alone would leave the others
        # waiting in the gradient all-reduce
        if all_ranks_true(finite_here, loss.device):
            return loss
        bad = "loss (the weighted sum)" if not finite_here else "the loss of another rank"
        for name, value in terms.items():
            if name.startswith("loss_") and lambdas.get(name[len("loss_"):], 0.0) > 0.0 and torch.is_tensor(value):
                if not bool(torch.isfinite(value.detach()).all()):
                    bad = f"{name} (weight system.loss.lambda_{name[len('loss_'):]})"
                    break
        self._nonfinite_skipped += 1
        if finite_here and self._nonfinite_skipped > self.cfg.nonfinite_skip_steps:
            raise PeerFailed(f"step {self.true_global_step}: another rank's loss is not finite")  # it says which
        if self._nonfinite_skipped <= self.cfg.nonfinite_skip_steps:
            import logging

            logging.getLogger(__name__).warning(
                "step %d: %s is not finite; step skipped (%d of system.nonfinite_skip_steps=%d).",
                self.true_global_step, bad, self._nonfinite_skipped, self.cfg.nonfinite_skip_steps)
            if self.trainer.world_size > 1:
                return self._skip_on_all_ranks()
            return None
        self._nonfinite_fault(f"{bad} is not finite")

    def _nonfinite_fault(self, what: str) -> None:
        raise RunFault(
            f"training diverged at step {self.true_global_step}: {what}. The run stopped; ckpts/last.ckpt "
            f"(if any) is the last good state. Lower system.optimizer lr (or its parameter group's), check the "
            f"loss weights, or set system.nonfinite_skip_steps to skip rare bad steps."
        )

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.step_own_optimizers()
        for group in optimizer.param_groups:
            grads = [p.grad for p in group["params"] if p.grad is not None]
            if grads and not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
                for name, p in self.named_parameters():
                    if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                        self._nonfinite_fault(f"the gradient of {name} is not finite")

    def step_own_optimizers(self) -> None:
        """Step the modules that own an optimizer (`steps_own_parameters`, e.g. the proposal network) with
        the gradients of this step's backward pass, unscaled by the mixed-precision loss scale if any."""
        owners = [m for m in self.modules() if getattr(m, "steps_own_parameters", False)]
        if not owners:
            return
        scaler = getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None) if self._trainer else None
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        for module in owners:
            module.step_own_optimizer(grad_scale=scale)

    def _skip_on_all_ranks(self) -> torch.Tensor:
        """The skip of several processes (Lightning cannot skip a DDP step by returning None): a zero
        loss reaching every trained parameter (zero gradients, the all-reduce as usual) and learning
        rate 0 for this step's update (the optimizer runs it after this closure; `optimizer_step`
        restores the rates). Parameters stay as they were; Adam's moments decay one step."""
        optimizers = self.optimizers()
        for opt in optimizers if isinstance(optimizers, list) else [optimizers]:
            self._lrs_before_skip = getattr(self, "_lrs_before_skip", []) + [(opt, [g["lr"] for g in opt.param_groups])]
            for group in opt.param_groups:
                group["lr"] = 0.0
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.stack([(p * 0).sum() for p in params]).sum()

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        for opt, lrs in getattr(self, "_lrs_before_skip", []):  # after a skipped step on several processes
            for group, lr in zip(opt.param_groups, lrs):
                group["lr"] = lr
        self._lrs_before_skip = []
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if params and not bool(torch.isfinite(torch.stack(torch._foreach_norm(params))).all()):
            # (a norm can overflow with finite entries: only an entry that is not finite is a fault)
            name = next((n for n, p in self.named_parameters() if not bool(torch.isfinite(p).all())), None)
            if name is not None:
                lrs = ", ".join(f"{g.get('name', 'default')}: {g['lr']}" for g in optimizer.param_groups)
                self._nonfinite_fault(f"{name} is not finite after the optimizer step (learning rates {lrs})")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        optimizer = make_optimizer(self, self.cfg.optimizer)
        if self.cfg.scheduler:
            return {"optimizer": optimizer, "lr_scheduler": make_scheduler(self.cfg.scheduler, optimizer)}
        return optimizer

    # ------------------------------------------------------------------ outputs
    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        if self.cfg.cleanup_after_validation_step:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
        if self.cfg.cleanup_after_test_step:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
