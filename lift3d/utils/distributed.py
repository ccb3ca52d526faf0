"""One run on several processes (Lightning DDP): ranks, the shared trial folder, per-rank random
streams, agreement between ranks, and failing fast when one rank fails. docs/distributed.md has
the user's side (per-rank batch semantics, multi-node recipes).

How launch.py uses it (`trainer.devices` × `trainer.num_nodes` > 1 on any system):
- `plan(cfg.trainer, fitting)` checks the three trainer keys (ConfigError before any work) and
  gives the Trainer arguments: a `DDPStrategy` (gloo on CPU, NCCL on GPU) with
  `find_unused_parameters=True` unless the user named `ddp_find_unused_parameters_false`;
- `start_rank()`: the global rank of this process, known from the launcher's environment before
  Lightning starts (Lightning's own children get LOCAL_RANK/NODE_RANK; torchrun RANK; SLURM
  SLURM_PROCID). Only rank 0 reserves the trial folder, writes configs and logs;
- `RunOnRanks` (a callback on every rank): at `setup` it broadcasts rank 0's trial folder (so the
  folder is one folder, created by rank 0, known to every rank whatever launched them); at fit
  start it moves the global RNGs and the training streams of rank r > 0 onto their own sequences
  (`decorrelate_rng`, `decorrelate_stream`), so that ranks draw independent cameras / latents /
  noise (gradients averaged over ranks = one bigger batch); after each training step it makes a
  SIGINT/SIGTERM seen by any rank a stop on every rank (GracefulStop then saves once, collectively);
  on an exception it ends Lightning's child processes at once (no orphans waiting on a dead peer).
A rank that raises exits non-zero with its own message; the others fail in their next collective
(gloo/NCCL see the closed connection) or are killed by Lightning's process observer, and print one
line naming that another rank failed (`peer_failure_note`) instead of a second traceback.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch

from lift3d.errors import ConfigError
from lift3d.utils.fault_inject import fault_args

# strategies launch.py runs (all start one process per device with Lightning's script launcher, or
# accept processes started by torchrun / srun); "auto" with more than one device means "ddp"
SUPPORTED_STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")
TIMEOUT_ENV = "LIFT3D_DDP_TIMEOUT_S"  # seconds a collective waits for a silent (hung, not dead) rank
DEFAULT_TIMEOUT_S = 1800.0


# ---------------------------------------------------------------- ranks
def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def global_rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def start_rank(devices_per_node: int = 1) -> int:
    """The global rank of this process as its launcher's environment tells it, before any process
    group exists: torchrun's RANK; srun's SLURM_PROCID (a job step of several tasks); Lightning's
    children LOCAL_RANK (+ NODE_RANK × devices per node); 0 for a plain `python launch.py`."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env and env.get("SLURM_JOB_NAME") not in (
            "bash", "interactive"):
        return int(env["SLURM_PROCID"])
    return int(env.get("NODE_RANK", "0") or 0) * devices_per_node + int(env.get("LOCAL_RANK", "0") or 0)


def rank_tag() -> str:
    """' (rank r)' in a run of several processes, '' otherwise: for one-line messages."""
    if is_distributed():
        return f" (rank {global_rank()})"
    if "LOCAL_RANK" in os.environ or "RANK" in os.environ:
        return f" (rank {start_rank()})"
    return ""


# ---------------------------------------------------------------- the trainer's distributed arguments
def _count(value: Any, key: str) -> int:
    """Number of devices of `trainer.devices` (int, list of ids, or "auto"/-1 = every visible one)."""
    if isinstance(value, (list, tuple)):
        return len(value)
    if isinstance(value, str):
        if value.strip() in ("auto", "-1"):
            return torch.cuda.device_count() or 1
        try:
            return len([v for v in value.split(",") if v.strip()]) if "," in value else int(value)
        except ValueError:
            raise ConfigError(f"{key} = '{value}': give a number of devices (e.g. 2) or a list of ids [0, 1].") from None
    if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1:
        raise ConfigError(f"{key} = {value!r}: give a number of devices >= 1 (or -1 for all).")
    return (torch.cuda.device_count() or 1) if value == -1 else value


def plan(trainer_cfg: dict, fitting: bool) -> dict:
    """Check trainer.devices / num_nodes / strategy and return the Trainer arguments that run them.

    One process in all (the default): the arguments unchanged. Several: a DDPStrategy on gloo (CPU)
    or NCCL (GPU). Evaluation passes (--validate/--test/--export) run on one device: they write
    frames and videos that a sharded pass would split between processes."""
    args = dict(trainer_cfg)
    strategy = args.get("strategy", "auto")
    if not isinstance(strategy, str) or strategy not in SUPPORTED_STRATEGIES:
        raise ConfigError(f"trainer.strategy = {strategy!r} is not supported by launch.py: use ddp (or "
                          f"{', '.join(SUPPORTED_STRATEGIES[2:])}); set trainer.devices / trainer.num_nodes for the size.")
    devices = _count(args.get("devices", 1), "trainer.devices")
    num_nodes = args.get("num_nodes", 1)
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise ConfigError(f"trainer.num_nodes = {num_nodes!r}: give the number of machines (>= 1).")
    if devices * num_nodes == 1 and strategy == "auto":
        return args
    if not fitting:
        args.update(devices=1, num_nodes=1, strategy="auto")
        return args
    from pytorch_lightning.strategies import DDPStrategy

    on_cpu = args.get("accelerator", "auto") == "cpu" or not torch.cuda.is_available()
    timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    args["strategy"] = DDPStrategy(
        process_group_backend="gloo" if on_cpu else "nccl",
        find_unused_parameters=strategy != "ddp_find_unused_parameters_false",
        timeout=datetime.timedelta(seconds=timeout),
    )
    return args


def devices_per_node(trainer_args: dict) -> int:
    return _count(trainer_args.get("devices", 1), "trainer.devices")


def process_count(trainer_args: dict) -> int:
    """Processes of the run in all: devices per node × nodes."""
    return devices_per_node(trainer_args) * int(trainer_args.get("num_nodes", 1))


def single_device_trainer(trainer_args: dict, callbacks: list, loggers: list, plugins: list,
                          root: str) -> pl.Trainer:
    """Rank 0's Trainer for the test pass after a run on several processes: the same settings on
    one device (the DDP-only callback left out; the fit's process group stays up until exit)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    args = dict(trainer_args, devices=1, num_nodes=1, strategy="auto")
    kept = [c for c in callbacks if not isinstance(c, (RunOnRanks, ModelCheckpoint))]
    return pl.Trainer(callbacks=kept, logger=loggers if loggers else False, plugins=plugins, default_root_dir=root,
                      **args)


# ---------------------------------------------------------------- per-rank random sequences
def rank_seed(state: bytes, rank: int) -> int:
    """A 63-bit seed from a generator state and a rank: distinct ranks get unrelated sequences, the
    same (state, rank) the same one (a run restarted the same way draws the same)."""
    digest = hashlib.sha256(bytes(state) + f":rank{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def decorrelate_rng(rank: int) -> None:
    """Move this process's global RNGs (python, numpy, torch CPU and CUDA) onto rank `rank`'s own
    sequence, derived from their current state; rank 0 keeps its sequence (one process = rank 0)."""
    if rank == 0:
        return
    seed = rank_seed(torch.get_rng_state().numpy().tobytes(), rank)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)  # also every CUDA device


def decorrelate_stream(stream: Any, rank: int) -> None:
    """The same for a training stream with a private `generator` (SeededBatchStream: random cameras,
    random rays); its checkpointed state is rank 0's, so a resumed rank r > 0 re-derives its own."""
    generator = getattr(stream, "generator", None)
    if rank == 0 or not isinstance(generator, torch.Generator):
        return
    generator.manual_seed(rank_seed(generator.get_state().numpy().tobytes(), rank))


# ---------------------------------------------------------------- agreement between ranks
def all_ranks_true(flag: bool, device: Any = "cpu") -> bool:
    """True when `flag` is true on every rank (a collective: every rank must call it)."""
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item() > 0.5)


def any_rank_value(value: Optional[int], device: Any = "cpu") -> Optional[int]:
    """The largest non-None `value` over ranks, or None when every rank has None (a collective)."""
    if not is_distributed():
        return value
    t = torch.tensor([-1 if value is None else int(value)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return None if int(t.item()) < 0 else int(t.item())


def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """[B,...] on each rank -> [world·B,...] (rank order); the tensor itself in one process."""
    if not is_distributed() or world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    torch.distributed.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


# ---------------------------------------------------------------- failing fast
class PeerFailed(RuntimeError):
    """This rank stops because another rank failed (that rank prints the reason)."""


_PEER_FAILURE_PATTERNS = ("connection closed by peer", "connection reset by peer", "broken pipe",
                          "nccl communicator was aborted", "dist backend error", "socket timeout",
                          "timed out", "gloo", "connection refused", "recvbytes", "sendbytes")


def peer_failure_note(exc: BaseException) -> Optional[str]:
    """A one-line message when `exc` is this rank noticing that another rank died (its own message
    is the one to read), else None."""
    if world_size() <= 1 and "LOCAL_RANK" not in os.environ and "RANK" not in os.environ:
        return None
    text = f"{type(exc).__name__}: {exc}".lower()
    if isinstance(exc, PeerFailed) or type(exc).__name__ == "DistBackendError" or any(p in text for p in _PEER_FAILURE_PATTERNS):
        return (f"lift3d: stopped{rank_tag()}: another process of this run failed or was stopped; its error "
                f"is printed above.")
    return None


def injected_rank_fault(rank: int, step: int) -> None:
    """Fault tests: `LIFT3D_FAULT_INJECT=rank-fault:<rank>:<step>[:<kind>]` makes rank <rank> fail at
    training step <step>: kind `error` (default) raises RuntimeError, `config` a ConfigError, `nan` is
    left to the caller (a non-finite loss on that rank only)."""
    args = fault_args("rank-fault")
    if not args or int(args[0]) != rank or int(args[1]) != step:
        return
    kind = args[2] if len(args) > 2 else "error"
    if kind == "config":
        raise ConfigError(f"injected configuration error on rank {rank} at step {step} (fault test).")
    if kind == "error":
        raise RuntimeError(f"injected failure on rank {rank} at step {step} (fault test)")


def injected_rank_nan(rank: int, step: int) -> bool:
    args = fault_args("rank-fault")
    return bool(args) and len(args) > 2 and args[2] == "nan" and int(args[0]) == rank and int(args[1]) == step


def kill_launched_children(trainer: pl.Trainer, grace_s: float = 0.0) -> None:
    """Rank 0 of a Lightning-launched run: SIGKILL the child processes it started (they would
    otherwise wait in a collective for this dead rank, or print a second error), after giving them
    `grace_s` seconds to end by themselves (a failing child printing its own error)."""
    import time

    launcher = getattr(trainer.strategy, "launcher", None)
    procs = list(getattr(launcher, "procs", []) or [])
    deadline = time.monotonic() + grace_s
    while procs and time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()


class RunOnRanks(pl.Callback):
    """See the module docstring. `trial` is this process's idea of the trial folder (rank 0's is the
    real one); `stopper` the run's GracefulStop (or None); `on_trial` is called with the agreed
    folder on every rank."""

    def __init__(self, trial: Path, stopper: Any = None, on_trial: Any = None) -> None:
        self.trial = Path(trial)
        self.stopper = stopper
        self.on_trial = on_trial

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        agreed = trainer.strategy.broadcast(str(self.trial), src=0)
        self.trial = Path(agreed)
        if self.on_trial is not None:
            self.on_trial(self.trial)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after a resumed checkpoint (rank 0's streams) is restored, before the first batch is drawn
        rank = trainer.global_rank
        decorrelate_rng(rank)
        datamodule = getattr(trainer, "datamodule", None)
        decorrelate_stream(getattr(datamodule, "train_dataset", None), rank)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        injected_rank_fault(trainer.global_rank, int(trainer.global_step))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.stopper is None or trainer.world_size <= 1:
            return
        # a signal that reached only some ranks (e.g. `kill` of rank 0) stops every rank at this step
        signum = any_rank_value(self.stopper.signum, pl_module.device)
        if signum is not None and self.stopper.signum is None and self.stopper._armed:
            self.stopper.signum = signum

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.global_rank == 0:  # its own failure: end the children now; a child's: let it report first
            kill_launched_children(trainer, grace_s=0.0 if peer_failure_note(exception) is None else 20.0)
