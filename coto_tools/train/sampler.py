"""A seeded sampler of training indices: shuffled epochs, consecutive batches."""

from __future__ import annotations

import numpy as np

from coto_tools.errors import OptionError


class EpochSampler:
    """Batches of ``batch_size`` indices from ``range(n)``, each epoch a fresh permutation.

    A batch that crosses an epoch boundary takes the rest of one permutation and the start of
    the next; when ``batch_size > n`` every batch is one whole permutation (``batch_size = n``).
    Only ``rng`` is used, so the same seed gives the same batches.
    """

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator) -> None:
        if n < 1:
            raise OptionError("the task has no training examples")
        if batch_size < 1:
            raise OptionError(f"batch size must be >= 1, got {batch_size}")
        self.n = n
        self.batch_size = min(batch_size, n)
        self.rng = rng
        self._perm = rng.permutation(n)
        self._pos = 0

    def next(self) -> np.ndarray:
        out: list[np.ndarray] = []
        need = self.batch_size
        while need > 0:
            if self._pos >= self.n:
                self._perm = self.rng.permutation(self.n)
                self._pos = 0
            take = self._perm[self._pos : self._pos + need]
            self._pos += len(take)
            need -= len(take)
            out.append(take)
        return np.concatenate(out)
