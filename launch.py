#!/usr/bin/env python
"""lift3d command line, threestudio-compatible.

    python launch.py --config X.yaml (--train|--validate|--test|--export) [--gpu 0] [--verbose] key=value ...

--train fits, then runs the test pass (turntable video); --train --export exports the mesh after that,
in the same process. --validate/--test/--export need `resume=<trial>/ckpts/last.ckpt`. Extra arguments
are OmegaConf dot-list overrides. The whole experiment config is validated before anything is built.

Exit codes: 0 done; 2 a user error (one line naming the problem and the fix, before any folder is
written); 3 a fault during the run (non-finite loss/gradient/parameter, full disk; ckpts/last.ckpt
stays the last good state); 130 / 143 stopped by SIGINT / SIGTERM (after saving ckpts/last.ckpt at
the end of the current step; the message gives the resume command); 1 an unexpected error. No
traceback unless LIFT3D_DEBUG=1.

Several processes (`trainer.devices`, `trainer.num_nodes`, `trainer.strategy=ddp`, or `--gpu 0,1`):
Lightning DDP for every system, rank 0 owning the trial folder; docs/distributed.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="path to the experiment YAML")
    parser.add_argument("--gpu", default=None,
                        help="GPU index, or indices 0,1 for one run on several GPUs (sets CUDA_VISIBLE_DEVICES unless "
                             "already set; trainer.devices defaults to their number; docs/distributed.md)")
    parser.add_argument("--train", action="store_true", help="fit, then the test pass (with --export: then export)")
    parser.add_argument("--validate", action="store_true")
    parser.add_argument("--test", action="store_true")
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args, extras = parser.parse_known_args(argv)
    modes = [m for m in ("train", "validate", "test", "export") if getattr(args, m)]
    if not modes:
        parser.error("one of the arguments --train --validate --test --export is required")
    if len(modes) > 1 and modes != ["train", "export"]:
        parser.error(f"--{' --'.join(modes)}: give one of --train --validate --test --export "
                     "(or --train --export: fit, test pass, then export in one run)")
    unknown_flags = [e for e in extras if e.startswith("--")]
    if unknown_flags:
        parser.error(f"unknown option(s) {unknown_flags}; config overrides are written key=value without dashes")
    return args, extras


def trial_paths(cfg, args) -> None:
    """Fill exp_dir / trial_name / trial_dir. A resumed run continues in its own trial folder."""
    from lift3d.errors import ConfigError

    if cfg.resume:
        ckpt = Path(cfg.resume)
        if not ckpt.is_file():
            raise ConfigError(f"resume: checkpoint '{ckpt}' does not exist. Pass <trial>/ckpts/last.ckpt.")
        trial_dir = ckpt.resolve().parent.parent
        cfg.trial_dir = str(trial_dir)
        cfg.trial_name = trial_dir.name
        cfg.exp_dir = str(trial_dir.parent)
        return
    if not args.train:
        raise ConfigError(
            "--validate/--test/--export need a trained checkpoint: add resume=<trial>/ckpts/last.ckpt."
        )
    from lift3d.utils.paths import safe_tag

    tag = safe_tag(cfg.tag)  # safe, bounded, readable for any prompt; made unique by reserve_trial_dir
    cfg.timestamp = time.strftime("@%Y%m%d-%H%M%S") if cfg.use_timestamp else ""
    cfg.trial_name = tag + cfg.timestamp
    cfg.exp_dir = str(Path(cfg.exp_root_dir) / cfg.name)
    cfg.trial_dir = str(Path(cfg.exp_dir) / cfg.trial_name)


def main(argv: list[str]) -> int:
    args, extras = parse_args(argv)
    if "CUDA_VISIBLE_DEVICES" not in os.environ and args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="[%(levelname)s] %(message)s")
    if not args.verbose:
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*")

    from lift3d.errors import Interrupted, Lift3DError, RunFault

    debug = os.environ.get("LIFT3D_DEBUG", "") not in ("", "0")  # LIFT3D_DEBUG=1: tracebacks too
    try:
        return run(args, extras)
    except Interrupted as exc:  # a signal outside a training step, or a second one
        print(f"lift3d: interrupted by {signal_name(exc.signum)} before a step could finish; nothing new was saved.",
              file=sys.stderr)
        return 128 + exc.signum
    except (Lift3DError, Exception) as exc:
        if debug:
            import traceback

            traceback.print_exc()
        from lift3d.utils.distributed import peer_failure_note, rank_tag

        note = peer_failure_note(exc)  # several processes: another rank's failure, printed by that rank
        if note is not None:
            print(note, file=sys.stderr)
            return 1
        if isinstance(exc, Lift3DError):  # user errors 2, faults during a run 3
            print(f"lift3d: error{rank_tag()}: {exc}", file=sys.stderr)
            return 3 if isinstance(exc, RunFault) else 2
        reason = " ".join(str(exc).split())[:500]
        print(f"lift3d: internal error{rank_tag()}: {type(exc).__name__}: {reason} (LIFT3D_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def resume_hint(trial: Path) -> str:
    return (f"python launch.py --config {trial / 'configs' / 'parsed.yaml'} --train "
            f"resume={trial / 'ckpts' / 'last.ckpt'}")


def run(args: argparse.Namespace, extras: list[str]) -> int:
    if not args.verbose:  # Lightning's start-up chatter (accelerator tips, advertisements)
        for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
            logging.getLogger(name).setLevel(logging.WARNING)

    from lift3d.utils.graceful_stop import GracefulStop

    stopper = GracefulStop("ckpts")  # SIGINT/SIGTERM: finish the step, save last.ckpt, exit 130/143
    stopper.install()
    try:
        return _run(args, extras, stopper)
    finally:
        stopper.uninstall()


def _run(args: argparse.Namespace, extras: list[str], stopper) -> int:
    import torch
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from lift3d.config import dump_config, load_config, validate_experiment
    from lift3d.registry import find
    from lift3d.systems.optim import check_param_groups
    from lift3d.utils.checkpointing import (AtomicCheckpointIO, ResumableCSVLogger, check_state_matches,
                                            clean_stale_tmp, config_digest, read_checkpoint)
    from lift3d.utils.paths import reserve_trial_dir

    from lift3d import memory_check

    check_memory, extras = memory_check.pop_switch(extras, default=None)  # memory_check=false skips the check below
    cfg = load_config(args.config, cli_args=extras)
    validate_experiment(cfg, fitting=args.train, cli_args=extras)  # every section checked before any work starts
    # several processes (trainer.devices x trainer.num_nodes > 1): Lightning DDP, docs/distributed.md
    from lift3d.utils import distributed

    if args.gpu and "," in args.gpu and "devices" not in cfg.trainer:  # --gpu 0,1: one process per listed GPU
        cfg.trainer.devices = len([g for g in args.gpu.split(",") if g.strip()])
    trainer_plan = distributed.plan(OmegaConf.to_container(cfg.trainer, resolve=True), fitting=args.train)
    rank = distributed.start_rank(distributed.devices_per_node(trainer_plan))
    trial_paths(cfg, args)
    resume_ckpt = read_checkpoint(cfg.resume, "resume") if cfg.resume else None  # empty/truncated/foreign: exit 2
    # pre-flight memory estimate (lift3d/memory_check.py): before any model is loaded or folder written
    on_gpu = torch.cuda.is_available() and cfg.trainer.get("accelerator", "gpu") != "cpu"
    memory_check.check(cfg, "cuda" if on_gpu else "cpu", fitting=args.train,
                       enabled=bool(cfg.memory_check) if check_memory is None else check_memory)  # CLI over file
    from lift3d.models.loading import check_config_weights

    check_config_weights(cfg)  # truncated / damaged model weights (headers only): exit 2 before any folder
    trial = Path(cfg.trial_dir)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = find(cfg.data_type)(cfg.data)
    system = find(cfg.system_type)(cfg.system, resumed=cfg.resume is not None, exp_root_dir=cfg.exp_root_dir)
    resume_step = None
    if resume_ckpt is not None:  # a checkpoint of another config: named before any folder is written
        check_state_matches(system, resume_ckpt, cfg.resume, "resume", config_digest(system.cfg))
        resume_step = int(resume_ckpt["global_step"])
        del resume_ckpt
    from lift3d.systems.base import BaseLift3DSystem

    if args.train and isinstance(system, BaseLift3DSystem):
        check_param_groups(system, system.cfg.optimizer)  # group names, before any diffusion model loads
    if args.train and not cfg.resume and rank == 0:  # a new trial folder, never shared with a run beside this one
        trial = reserve_trial_dir(cfg.exp_dir, cfg.trial_name)  # (ranks > 0 learn it from rank 0: RunOnRanks)
        cfg.trial_name, cfg.trial_dir = trial.name, str(trial)
    stopper.ckpt_dir = trial / "ckpts"
    if args.train and cfg.resume and rank == 0:
        clean_stale_tmp(trial / "ckpts")  # .tmp files of checkpoint writes killed mid-way
    system.set_save_dir(trial / "save")

    callbacks: list = [stopper]
    loggers: list = []
    several = distributed.process_count(trainer_plan) > 1
    if several:  # first: its end-of-step stop agreement runs before the stopper's save

        def use_trial(agreed: Path) -> None:  # rank 0's folder, on every rank
            nonlocal trial
            trial = agreed
            stopper.ckpt_dir = agreed / "ckpts"
            system.set_save_dir(agreed / "save")

        callbacks.insert(0, distributed.RunOnRanks(trial, stopper, use_trial))
    if cfg.trainer.get("enable_progress_bar", True):
        from lift3d.utils.progress import StepProgressBar

        callbacks.append(StepProgressBar(refresh_rate=max(1, int(cfg.trainer.get("log_every_n_steps", 1)))))
    if args.train:
        from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
        from pytorch_lightning.loggers import TensorBoardLogger

        checkpoint_args = {"save_last": True, "every_n_train_steps": 500, "save_top_k": -1,
                           "enable_version_counter": False}
        checkpoint_args.update(OmegaConf.to_container(cfg.checkpoint, resolve=True))
    if args.train and rank > 0:  # checkpoints are written by rank 0 (ModelCheckpoint takes its folder)
        callbacks.append(ModelCheckpoint(dirpath=str(trial / "ckpts"), **checkpoint_args))
    elif args.train:
        (trial / "configs").mkdir(parents=True, exist_ok=True)
        dump_config(trial / "configs" / "parsed.yaml", cfg)
        raw = OmegaConf.merge(OmegaConf.load(args.config), OmegaConf.from_dotlist(extras))
        dump_config(trial / "configs" / "raw.yaml", raw)
        with open(trial / "cmd.txt", "a") as fp:
            fp.write("python " + " ".join([sys.argv[0]] + list(sys.argv[1:])) + "\n")
        # no "last-v1.ckpt" when a resumed run saves again: last.ckpt is always the newest
        callbacks.append(ModelCheckpoint(dirpath=str(trial / "ckpts"), **checkpoint_args))
        # a resumed run purges the TensorBoard events logged after its checkpoint (they are re-done)
        tb_args = {"purge_step": resume_step} if resume_step is not None else {}
        loggers = [
            TensorBoardLogger(str(trial), name="tb_logs", version="", **tb_args),
            ResumableCSVLogger(str(trial / "csv_logs"), resume_step=resume_step),
        ]
        from lift3d.compat.loggers import build_loggers

        # threestudio's system.loggers (wandb; `enable: false` starts none): lift3d/compat/loggers.py
        loggers += build_loggers(cfg.system.get("loggers"), trial, cfg.trial_name)
        callbacks.append(LearningRateMonitor(logging_interval="step"))

    trainer_args = trainer_plan  # cfg.trainer, with a DDP strategy when several processes run
    trainer_args.setdefault("accelerator", "gpu" if torch.cuda.is_available() else "cpu")
    trainer_args.setdefault("devices", 1)
    trainer_args.setdefault("num_sanity_val_steps", 0)
    trainer_args.setdefault("enable_model_summary", False)
    # plain no_grad for evaluation: analytic normals need autograd inside test/validation steps
    trainer_args.setdefault("inference_mode", False)
    if args.export:
        trainer_args["limit_predict_batches"] = 1
    trainer = pl.Trainer(
        callbacks=callbacks,
        logger=loggers if loggers else False,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(trial),
        **trainer_args,
    )

    ckpt = cfg.resume
    if args.train:
        try:
            trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt)
        except SystemExit:  # Lightning's SIGTERMException after the stop below
            if not stopper.interrupted:
                raise
        if stopper.interrupted and trainer.global_rank > 0:  # saved together with rank 0, which reports
            return 0  # (a non-zero child would make Lightning's/torchrun's observer kill rank 0 mid-report)
        if stopper.interrupted:
            saved = f"saved {stopper.saved} (step {stopper.saved_step})" if stopper.saved else "nothing new was saved"
            print(f"lift3d: interrupted by {stopper.signal_name()}; {saved}. Resume with:\n  {resume_hint(trial)}",
                  file=sys.stderr)
            return 128 + int(stopper.signum)
        if several:  # the test pass (frames, videos) on rank 0 alone, on one device
            if trainer.global_rank > 0:
                return 0
            if hasattr(system, "_loaded_global_step"):  # the new trainer starts at step 0: name outputs by the fit's
                system._loaded_global_step = int(trainer.global_step)
            trainer = distributed.single_device_trainer(trainer_args, callbacks, loggers, [AtomicCheckpointIO()],
                                                        str(trial))
        trainer.test(system, datamodule=datamodule)
        if args.export:  # the fitted system as it is, without a checkpoint round trip
            trainer.predict(system, datamodule=datamodule, return_predictions=False)
    elif args.validate:
        trainer.validate(system, datamodule=datamodule, ckpt_path=ckpt)
    elif args.test:
        trainer.test(system, datamodule=datamodule, ckpt_path=ckpt)
    elif args.export:
        trainer.predict(system, datamodule=datamodule, ckpt_path=ckpt, return_predictions=False)
    device = "GPU" if trainer_args["accelerator"] in ("gpu", "cuda") else "CPU"
    print(f"lift3d: done on {device}; outputs in {trial}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
