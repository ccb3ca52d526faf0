"""A training progress bar counted in optimisation steps (lift3d trains on one endless epoch, so
Lightning's per-epoch bar would show no total): `train 1234/15000 [..] loss=0.123`."""
from __future__ import annotations

from typing import Any

from pytorch_lightning.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    def on_train_epoch_start(self, trainer: Any, *_: Any) -> None:
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None)
        bar.n = trainer.global_step  # a resumed run starts at its saved step
        bar.set_description("train")
        bar.refresh()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is not None and not bar.disable and self._should_update(step, bar.total or 0):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {k.replace("train/", ""): v for k, v in metrics.items()}
