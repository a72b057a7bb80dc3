"""Training data: a database split's samples with their stored neighbours, in a seeded order.

Sample j of a split is ``stream[j*T : j*T + T + 1]`` (T = block_size); its L = T / m query chunks
are queries j*L .. j*L + L - 1, whose stored neighbours reach the model through the database's one
read path (``SplitView.sample_neighbours``: the chunk, then its continuation in the same document,
and the stored lengths).
The order is an endless sequence of epochs, each a permutation drawn from (seed, epoch): position p
of the sequence depends on p and the seed alone, so a run resumes from ``data_position`` exactly,
and a GPT and a RETRO run with the same seed read the same samples in the same order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from retro.db import open_db
from retro.db.streams import TokenStream, padding_targets
from retro.world import World
from retro.train.distributed import rank_slices


class TrainingSamples(Dataset, ABC):
    """A map-style set of samples of known size, what :func:`train_loader` reads:
    a :class:`SampleDataset`, or a curriculum built on one."""

    @abstractmethod
    def __len__(self) -> int: ...


class SampleDataset(TrainingSamples):
    """Item j: idx (T,) int64, targets (T,) int64 (-1: padding, no target), and with neighbours
    nbr_tokens (L, K, R) int64 (R = 2m, eod-padded) and nbr_lens (L, K) int32 (0 = none)."""

    def __init__(self, db_dir: str | Path, split: str, with_neighbours: bool) -> None:
        self.db_dir = Path(db_dir)
        self.split = split
        self.with_neighbours = with_neighbours
        self._open()
        self.n_samples = self._view.stream.n_samples
        if self.n_samples == 0:
            raise ValueError(f"the {split} split of {self.db_dir} has no sample of "
                             f"{self._view.stream.block_size + 1} tokens")

    def _open(self) -> None:
        db = open_db(self.db_dir)
        self._eod_id = db.eod_id
        self._chunks = db.chunks
        self._view = db.split(self.split)

    def __getstate__(self) -> dict:
        # workers reopen the memmaps rather than receive copies of them
        return {key: value for key, value in self.__dict__.items() if not key.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return self.n_samples

    @property
    def stream(self) -> TokenStream:
        """The split's token stream."""
        return self._view.stream

    @property
    def eod_id(self) -> int:
        return self._eod_id

    def __getitem__(self, j: int) -> tuple[np.ndarray, ...]:
        sample = self._view.stream.sample(j).astype(np.int64)  # (T + 1,)
        idx, targets = sample[:-1], sample[1:].copy()
        targets[padding_targets(sample, self._eod_id)] = -1  # an aligned stream's padding
        if not self.with_neighbours:
            return idx, targets
        nbr_tokens, nbr_lens = self._view.sample_neighbours([j], self._chunks)  # (1, L, K, R)
        return idx, targets, nbr_tokens[0], nbr_lens[0]


def sample_order(n_samples: int, seed: int, start: int = 0) -> Iterator[int]:
    """Sample ids from position `start` of the endless order: epoch e is a permutation of
    range(n_samples) drawn from (seed, e)."""
    epoch, offset = divmod(start, n_samples)
    while True:
        permutation = np.random.default_rng([seed, epoch]).permutation(n_samples)
        yield from (int(j) for j in permutation[offset:])
        epoch, offset = epoch + 1, 0


class ResumableSampler(Sampler[int]):
    """:func:`sample_order` from a data position, as a DataLoader sampler (endless); with a world
    of several ranks, this rank's slice of every global batch (retro.train.distributed)."""

    def __init__(self, n_samples: int, seed: int, start: int, batch_size: int = 1,
                 world: World = World()) -> None:
        self.n_samples, self.seed, self.start = n_samples, seed, start
        self.batch_size, self.world = batch_size, world

    def __iter__(self) -> Iterator[int]:
        order = sample_order(self.n_samples, self.seed, self.start)
        return rank_slices(order, self.batch_size, self.world) if self.world.size > 1 else order


def train_loader(dataset: TrainingSamples, batch_size: int, seed: int, start: int,
                 num_workers: int, pin_memory: bool, world: World = World()) -> DataLoader:
    """Endless batches of the seeded order, from data position `start` (samples consumed by all
    ranks): this rank's batch_size samples of each global batch of batch_size * world.size."""
    return DataLoader(dataset, batch_size=batch_size,
                      sampler=ResumableSampler(len(dataset), seed, start, batch_size, world),
                      num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0)


def eval_samples(n_samples: int, n_wanted: int) -> np.ndarray:
    """A fixed set of validation samples: all, or n_wanted spread evenly over the split."""
    if n_wanted >= n_samples:
        return np.arange(n_samples)
    return np.linspace(0, n_samples - 1, n_wanted).round().astype(np.int64)


def to_device(batch: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [x.to(device, non_blocking=True) for x in batch]
