"""An endless stream of random training batches whose sampling sequence resumes with the run.

Subclasses set `self.generator` (a seeded torch.Generator) and implement `sample()`; the stream
yields sample() forever. Subclasses with more random state than `self.generator` (e.g. an inner
random-camera stream) override `stream_state` / `load_stream_state`.

Exact resume: Lightning draws one batch ahead (its fetcher prefetches batch k+1 while step k runs),
so the generator's *current* state is one draw past the checkpoint's step. The stream therefore
remembers, for every batch drawn but not yet trained on, the state before its draw (and the
`update_step` arguments it was drawn under); the system calls `consumed()` when a training step
takes a batch, and `state_dict()` returns the state before the first batch not yet trained on. A run
resumed from the step-N checkpoint draws batch N exactly as the uninterrupted run did."""
from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, Iterator, Optional, Tuple

import torch
from torch.utils.data import IterableDataset

from lift3d.utils.base import Updateable


class SeededBatchStream(IterableDataset, Updateable):
    generator: torch.Generator

    def sample(self) -> Dict[str, Any]:
        raise NotImplementedError

    # -- the random state that decides the next draw
    def stream_state(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_stream_state(self, state: Dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])

    # -- bookkeeping of drawn, not yet trained-on batches
    def _pending_draws(self) -> Deque[Tuple[Dict[str, Any], Optional[Tuple[int, int]]]]:
        if "_pending" not in self.__dict__:
            self._pending: Deque[Tuple[Dict[str, Any], Optional[Tuple[int, int]]]] = deque()
        return self._pending

    def do_update_step(self, epoch: int, global_step: int, _seen: Optional[set] = None) -> None:
        self._update_args = (int(epoch), int(global_step))
        super().do_update_step(epoch, global_step, _seen)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        pending = self._pending_draws()
        pending.clear()
        while True:
            pending.append((self.stream_state(), self.__dict__.get("_update_args")))
            yield self.sample()

    def consumed(self) -> None:
        """A training step took the oldest drawn batch."""
        pending = self._pending_draws()
        if pending:
            pending.popleft()

    def state_dict(self) -> Dict[str, Any]:
        pending = self._pending_draws()
        state, update = pending[0] if pending else (self.stream_state(), self.__dict__.get("_update_args"))
        return {"stream": state, "update_args": update}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._pending_draws().clear()
        if "stream" not in state:  # checkpoints before exact resume: {"generator": ...}
            self.load_stream_state(state)
            return
        if state.get("update_args") is not None:
            self.do_update_step(*state["update_args"])
        self.load_stream_state(state["stream"])
