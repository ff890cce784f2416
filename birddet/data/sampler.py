"""Aspect-ratio grouped batching: put portrait images with portrait ones and landscape with landscape.

Detection batches are padded to the largest image in the batch; mixing a tall and a wide image pads both to a
square and wastes compute on padding. Grouping by aspect ratio avoids that without changing what is sampled.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["GroupedBatchSampler", "create_aspect_ratio_groups"]


def create_aspect_ratio_groups(aspect_ratios: Sequence[float], k: int = 0) -> list[int]:
    """Group id per image from its width/height ratio.

    The bin edges are `2 ** linspace(-1, 1, 2k + 1)` (ratios 1/2 .. 2, log-spaced); `k = 0` gives the single edge 1.0,
    i.e. two groups: portrait (< 1) and landscape/square (>= 1). Group ids run 0 .. 2k + 1.
    """
    edges = np.power(2.0, np.linspace(-1.0, 1.0, 2 * k + 1)) if k > 0 else np.array([1.0])
    return np.digitize(np.asarray(aspect_ratios, dtype=np.float64), edges, right=False).astype(int).tolist()


class GroupedBatchSampler(Sampler[list[int]]):
    """Yield batches of `batch_size` indices from `sampler`, each drawn from one group while possible.

    Indices are taken in the order `sampler` gives them (so shuffling and distributed sharding stay the sampler's
    business). A group's batch is emitted as soon as it has `batch_size` members. At the end the leftovers of all
    groups are emitted in mixed batches, in sampler order, so every index appears exactly once per epoch and the
    number of batches is always `ceil(len(sampler) / batch_size)` - equal on every rank, which DDP needs.
    """

    def __init__(self, sampler: Sampler[int] | Sequence[int], group_ids: Sequence[int], batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[tuple[int, int]]] = {}  # group -> [(position in this epoch's order, index)]
        for pos, idx in enumerate(self.sampler):
            buf = buffers.setdefault(self.group_ids[idx], [])
            buf.append((pos, idx))
            if len(buf) == self.batch_size:
                yield [i for _, i in buf]
                buf.clear()
        # Positions are recorded while iterating: re-iterating a shuffling sampler would give another order.
        leftovers = [i for _, i in sorted(item for buf in buffers.values() for item in buf)]
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start : start + self.batch_size]

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)
