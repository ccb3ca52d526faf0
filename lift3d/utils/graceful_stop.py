"""SIGINT / SIGTERM during training: finish the current step, save `ckpts/last.ckpt`, stop.

`GracefulStop` is a Lightning callback that owns the two signals for the whole run (launch.py
installs it before anything is built):
- a signal while the training loop runs sets a flag; at the end of the current step the callback
  writes `<ckpt_dir>/last.ckpt` (the state after that step, resumable exactly) and stops the trainer.
  launch.py then prints how to resume and exits 128 + signal (130 SIGINT, 143 SIGTERM);
- a signal outside the training loop (loading models, the test pass) or a second signal raises
  `lift3d.errors.Interrupted` at once: nothing half-done is saved, the last checkpoint stays.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl

from lift3d.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop(pl.Callback):
    def __init__(self, ckpt_dir: str | Path) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.signum: Optional[int] = None  # the signal received, if any
        self.saved: Optional[Path] = None  # the checkpoint written on the way out
        self.saved_step: Optional[int] = None
        self._armed = False  # inside the training loop: stop at the end of the step
        self._previous: dict = {}

    # -- signal handling
    def install(self) -> None:
        """Own SIGINT/SIGTERM (only the main thread may; elsewhere signals keep their handlers)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self._armed and self.signum is None:
            self.signum = signum  # stop after the current step
            return
        self.signum = signum
        raise Interrupted(signum)

    # -- Lightning hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._armed = self.signum is None
        # Lightning registers its own SIGTERM handler when fit starts; it would raise its SIGTERMException
        # in the loop, racing this callback's save. Take the signals back (the originals stay in _previous).
        if self._previous and threading.current_thread() is threading.main_thread():
            for sig in self._previous:
                signal.signal(sig, self._handle)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._armed = False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._armed = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.signum is None or not self._armed:
            return
        self._armed = False  # a second signal now interrupts at once
        path = self.ckpt_dir / "last.ckpt"
        trainer.save_checkpoint(str(path))  # atomic (AtomicCheckpointIO): the old last.ckpt or the new one
        self.saved, self.saved_step = path, int(trainer.global_step)
        trainer.should_stop = True

    @property
    def interrupted(self) -> bool:
        return self.signum is not None

    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""
