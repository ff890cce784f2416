"""The `Task` protocol that each model on the training loop implements, and the data plumbing tasks share.

A `Task` says what differs between models: how the datasets and the model are built, how a batch becomes a loss,
how the kept weights are validated and in which format the checkpoints are written (`engine/detection.py`,
`engine/classification.py`); the loop (`engine/loop.py`) owns everything else. This module is apart from the loop
so that the tasks build on it (and on `engine/run_state.py`) without importing the `train()` entry point
(`engine/trainer.py`), which imports them: imports run one way, from the entry points down to here.

Reproducibility: one seed drives model init, sampling and augmentation. The sampler of epoch `e` is seeded with
`seed + e`, and each sample's augmentation is seeded from (seed, epoch, index), so the data of a step does not
depend on what ran before it or on the number of loader workers. Together with the RNG states in `last.pt`
(`engine/run_state.py`), a resumed run on CPU reproduces the losses of an uninterrupted one exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, RandomSampler

from birddet.config import TrainConfig
from birddet.engine import distributed as D
from birddet.errors import InputError


# -- data ------------------------------------------------------------------------------------------------------------
@dataclass
class DataPaths:
    train_ann: str
    train_images: str
    val_ann: str
    val_images: str


def resolve_data_paths(cfg: Any, ctx: D.DistContext) -> DataPaths:
    """The split files to train on: the configured ones, or the synthetic set (generated on rank 0 if missing).

    `cfg` is any run config with a `data` section holding `train`, `val` and `synthetic` (both tasks share them).
    Relative paths resolve against the current directory, like every other path on the command line.
    """
    d = cfg.data
    syn = d.synthetic
    if d.train.ann is None and syn.dir:
        root = Path(syn.dir)
        if ctx.is_main:
            from birddet.data.synthetic import ensure_synthetic_coco

            ensure_synthetic_coco(
                root,
                num_train=syn.num_train,
                num_val=syn.num_val,
                seed=syn.seed,
                preset=syn.preset,
                species=syn.species,
            )
        D.barrier()
        train = (d.train.ann or str(root / "train.json"), d.train.images or str(root / "images"))
        val = (d.val.ann or str(root / "val.json"), d.val.images or str(root / "images"))
        return DataPaths(*train, *val)
    missing = [
        key
        for key, value in (
            ("data.train.ann", d.train.ann),
            ("data.train.images", d.train.images),
            ("data.val.ann", d.val.ann),
            ("data.val.images", d.val.images),
        )
        if not value
    ]
    if missing:
        raise InputError(
            f"no training data: set {', '.join(missing)} (e.g. `{missing[0]}=PATH` after the config on the command line), "
            "or set data.synthetic.dir to train on the generated synthetic set"
        )
    return DataPaths(d.train.ann, d.train.images, d.val.ann, d.val.images)  # type: ignore[arg-type]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-spread 32-bit seed for one sample's augmentation in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededDataset(Dataset):
    """Wraps a training `CocoDetection` so each item's augmentation is seeded from (seed, epoch, index).

    Seeding per sample (instead of per worker) makes the data of a step independent of the worker count and of
    which batches ran before it: what a mid-epoch resume needs. The caller's global RNG states are restored after
    each item, so loading in the main process does not disturb the model's sampling stream.
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        s = sample_seed(self.seed, self.epoch, index)
        pipeline = getattr(getattr(self.dataset, "transforms", None), "pipeline", None)
        if pipeline is not None and hasattr(pipeline, "set_random_seed"):
            pipeline.set_random_seed(s)
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(s)
        np.random.seed(s)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def epoch_batches(
    dataset: Any, cfg: TrainConfig, epoch: int, ctx: D.DistContext, *, group_by_aspect: bool = False
) -> list[list[int]]:
    """This rank's batches of dataset indices for `epoch`: a pure function of (seed, epoch, rank).

    `group_by_aspect` batches images of like aspect ratio together (`dataset.aspect_ratios()`), for detectors.
    """
    seed = cfg.seed
    if ctx.distributed:
        sampler: Any = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)  # DistributedSampler seeds its permutation with seed + epoch
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed + epoch))
    bs = cfg.batch_size
    if group_by_aspect:
        from birddet.data.sampler import GroupedBatchSampler, create_aspect_ratio_groups

        return list(GroupedBatchSampler(sampler, create_aspect_ratio_groups(dataset.aspect_ratios()), bs))
    order = list(sampler)
    return [order[i : i + bs] for i in range(0, len(order), bs)]


def steps_per_epoch(num_batches: int, accumulate: int) -> int:
    return -(-num_batches // max(1, accumulate))


# -- tasks -----------------------------------------------------------------------------------------------------------
class Task:
    """One kind of model on the shared loop: what it trains on, how a batch becomes a loss, how it is validated
    and saved. Subclasses: `DetectionTask` (engine/detection.py), `ClassificationTask` (engine/classification.py).

    The loop calls, in order: `read_checkpoint` (on resume), `build_data(ckpt)`, `build_model(ckpt)` (rank 0
    first, under the run's seed), `build_optimizer`, then per epoch `epoch_batches` and per batch `collate` and
    `forward`; after an epoch `validate` on every rank (sharded), `write_best` on rank 0 when the score improved,
    and `save_last` on rank 0.
    """

    #: The validation number (a key of `validate`'s stats, higher is better) that picks `best.pt`.
    metric = "AP"

    def __init__(self, cfg: Any, ctx: D.DistContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.train_set: Any = None

    # setup
    def read_checkpoint(self, path: Path) -> dict[str, Any]:
        """`last.pt` as a dict holding `training` (the loop's state) and whatever `build_*` need from it."""
        raise NotImplementedError

    def build_data(self, ckpt: dict[str, Any] | None) -> None:
        """Build (and validate) the training and validation data; set `self.train_set`, a map-style dataset."""
        raise NotImplementedError

    def build_model(self, ckpt: dict[str, Any] | None) -> torch.nn.Module:
        """The model in train mode: restored from `ckpt` (weights only; the loop restores the rest) or fresh."""
        raise NotImplementedError

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        raise NotImplementedError

    def resolved_config(self, model: torch.nn.Module) -> Any:
        """The config saved as `config.yaml` (with fields the weights filled in)."""
        return self.cfg

    # training
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return epoch_batches(self.train_set, self.cfg.train, epoch, self.ctx)

    def collate(self, batch: list[Any]) -> tuple[Any, Any]:
        inputs, targets = zip(*batch)
        return list(inputs), list(targets)

    def forward(self, model: torch.nn.Module, inputs: Any, targets: Any, device: torch.device) -> dict[str, Any]:
        """Loss parts of one micro-batch (the loop sums them into `loss`); runs under the loop's autocast."""
        raise NotImplementedError

    # validation and files
    def validate(self, model: torch.nn.Module) -> tuple[dict[str, float], Any] | None:
        """Every rank calls this; rank 0 gets `(scalar stats incl. metric, full result)`, the others None."""
        raise NotImplementedError

    def describe(self, stats: dict[str, float]) -> str:
        return f"val {self.metric} {stats[self.metric]:.4f}"

    def write_best(self, out: Path, model: torch.nn.Module, result: Any) -> None:
        """Rank 0: write `best.pt` from `model` (the kept weights, EMA when on) and `metrics.json` from `result`."""
        raise NotImplementedError

    def save_last(self, path: Path, model: torch.nn.Module, training: dict[str, Any]) -> None:
        """Rank 0: write `last.pt` with the model's own weights and the loop's `training` state."""
        raise NotImplementedError

    def plot_history(self, history: list[dict[str, Any]], out: Path) -> None:
        """Rank 0: draw the validation curve of the run so far."""
