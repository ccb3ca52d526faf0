"""An endless stream of random training batches whose sampling sequence resumes with the run.

Subclasses set `self.generator` (a seeded torch.Generator) and implement `sample()`; the stream
yields sample() forever, and its generator state goes into the checkpoint (the data modules'
state_dict), so a resumed run draws the batches it would have drawn."""
from __future__ import annotations

from typing import Any, Dict, Iterator

import torch
from torch.utils.data import IterableDataset

from lift3d.utils.base import Updateable


class SeededBatchStream(IterableDataset, Updateable):
    generator: torch.Generator

    def sample(self) -> Dict[str, Any]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        while True:
            yield self.sample()

    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
