"""``torchrun --nproc_per_node=N tools/predict.py ...``: one prediction run split over N processes.

Every rank lists the same sources (so every rank agrees on the order and on each image's output name) and takes a
strided shard of that list, as the evaluator does: rank r predicts images r, r+N, r+2N, ... Strided rather than
contiguous because folders are listed sorted, and neighbouring files (one camera, one night) tend to cost alike,
so every rank gets a similar mix and they finish together.

Each rank keeps its own progress file (``progress.rank{r}-of-{N}.jsonl``; a one-process run keeps
``progress.jsonl``), so ``--resume`` works per shard with the same rules as a one-process run. A resume with another
number of processes is refused, naming the number the folder was started with: the shards would not line up.

When every rank is done, rank 0 gathers the finished results (failures included) and writes the single
``megadetector.json`` / ``coco.json`` / CSV, in the order of the full source list, so the files, the order and the
COCO image ids are those of a one-process run. The ranks meet only at that point; the wait is allowed to be long
(one rank may resume with little left to do while the others still have hours of images).

The process group is torchrun's (gloo on CPU, NCCL on GPU, via :func:`birddet.engine.distributed.init_distributed`);
a plain ``python tools/predict.py`` is a world of one and never touches torch.distributed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import torch

from birddet.engine import distributed
from birddet.errors import InputError
from birddet.pipeline.results import ImageResult

T = TypeVar("T")

# The ranks meet once, after the slowest shard; a resumed rank may wait for hours, so the collective's timeout
# (30 minutes for training) would kill a healthy run.
MEET_TIMEOUT = timedelta(days=7)
_SHARD_PROGRESS = re.compile(r"progress\.rank(\d+)-of-(\d+)\.jsonl")


@dataclass(frozen=True)
class Shard(distributed.DistContext):
    """This process's part of a prediction run: ``rank`` of ``world_size``, on ``device``, and its progress file."""

    @property
    def progress_name(self) -> str:
        return "progress.jsonl" if not self.distributed else f"progress.rank{self.rank}-of-{self.world_size}.jsonl"

    def select(self, items: Sequence[T]) -> list[T]:
        """This rank's strided share of ``items`` (all of them in a world of one)."""
        return distributed.shard_sequence(items, self.rank, self.world_size)


def join(device: torch.device) -> Shard:
    """This process's shard: rank/world from torchrun's environment (or a group the caller already started),
    a world of one otherwise.

    Under torchrun a GPU run gives each rank its own GPU (``cuda`` -> ``cuda:LOCAL_RANK``); an explicit
    ``cuda:i`` is kept as given.
    """
    if not distributed.launched_by_torchrun() and not torch.distributed.is_initialized():
        return Shard(device=device)
    spec = device.type if device.index is None else str(device)
    ctx = distributed.init_distributed(spec, timeout=MEET_TIMEOUT)
    return Shard(
        rank=ctx.rank,
        world_size=ctx.world_size,
        local_rank=ctx.local_rank,
        device=ctx.device,
        owns_group=ctx.owns_group,
    )


def leave(shard: Shard) -> None:
    if shard.owns_group:
        distributed.cleanup(distributed.DistContext(shard.rank, shard.world_size, owns_group=True))


def check_resume_layout(out_dir: Path, shard: Shard) -> None:
    """Refuse ``--resume`` when ``out_dir`` holds progress from another number of processes.

    Shards are strided by the world size, so rank 1 of 2 and rank 1 of 3 hold different images: resuming across
    layouts would silently predict some images twice and forget others.
    """
    worlds = set()
    if (out_dir / "progress.jsonl").is_file():
        worlds.add(1)
    for path in out_dir.glob("progress.rank*-of-*.jsonl"):
        match = _SHARD_PROGRESS.fullmatch(path.name)
        if match:
            worlds.add(int(match.group(2)))
    if worlds and shard.world_size not in worlds:
        started = ", ".join(str(w) for w in sorted(worlds))
        raise InputError(
            f"cannot --resume in {out_dir} with {shard.world_size} process(es): its progress files come from a run "
            f"with {started} process(es); resume with the same --nproc_per_node, or drop --resume to start again"
        )


def merge_results(shard: Shard, finished: Sequence[ImageResult], order: Sequence[str]) -> list[ImageResult] | None:
    """Every rank's finished results, on rank 0, in the order of ``order`` (absolute paths); None on other ranks.

    Results travel as their JSON-safe dicts (the same form as the progress files), so nothing but plain data is
    unpickled. In a world of one this is just the reordering.
    """
    parts = distributed.gather_lists_to_main([r.to_dict() for r in finished])
    if parts is None:
        return None
    by_path = {r.path: r for r in (ImageResult.from_dict(d) for d in parts)}
    return [by_path[p] for p in order if p in by_path]
