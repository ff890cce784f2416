"""The training loop shared by every task: `birddet train` (detector) and `birddet train-classifier` (species).

The loop (`Trainer`) owns what is the same for every model: AdamW with layer-wise LR decay, warmup + cosine
schedule, AMP, EMA, gradient accumulation, DDP, the step log, `last.pt`/`best.pt` bookkeeping and exact resume.
A `Task` says what differs: how the datasets and the model are built, how a batch becomes a loss, how the kept
weights are validated and in which format the checkpoints are written (`engine/detection.py`,
`engine/classification.py`).

What a run folder holds (rank 0 writes everything):
  - `config.yaml`   the resolved config (weights-derived fields filled in);
  - `last.pt`       model + full training state, rewritten atomically at the end of every epoch (and when
                    `train.max_steps` stops a run), so `--resume` continues a run killed at any moment;
  - `best.pt`       the weights (EMA weights when `train.ema`) with the best validation score so far (the task's
                    `metric`: COCO AP for the detector, top-1 for the classifier);
  - `metrics.jsonl` one line per logged step: loss parts, lr, images/s, max memory; `metrics.json` the validation
                    report of `best.pt`; `loss.png` and the task's validation curve.

One run per folder: rank 0 holds `birddet.lock` in it while the run lasts (`birddet/runlock.py`), and a folder
that holds a run (`last.pt`, `best.pt` or a non-empty `metrics.jsonl`) is only continued with `--resume`.
`metrics.jsonl` is appended one whole line at a time (`birddet.fileio.append_text`); on resume a last line cut
short by a kill is dropped with a warning, and the kept lines are rewritten atomically.

Reproducibility: one seed drives model init, sampling and augmentation. The sampler of epoch `e` is seeded with
`seed + e`, and each sample's augmentation is seeded from (seed, epoch, index), so the data of a step does not
depend on what ran before it or on the number of loader workers. Together with the RNG states in `last.pt`, a
resumed run on CPU reproduces the losses of an uninterrupted one exactly.

`train.max_steps` stops early (a smoke test, a benchmark) without changing the LR schedule, which always spans
`train.epochs`; a run stopped that way resumes mid-epoch from the batch it stopped at. Such a stop is a pause, not
the end of the run, so it adds no evaluation of its own: evaluations happen where an uninterrupted run has them (every
`train.eval_every`-th epoch end and the end of training), and a resumed run ends with the same `best.pt`. Only a run
paused before its first evaluation is evaluated at the pause, so that its folder has a `best.pt`; that `best.pt` is a
stand-in (`best_provisional` in `last.pt`) which the run's next evaluation replaces whatever its score.

`train.time_budget` (minutes) replaces `train.epochs` by a planned number of steps after the first epoch (see
`birddet/engine/budget.py`; the last epoch may end part-way); the plan is a `budget_plan` line in `metrics.jsonl`
and part of `last.pt`, so a resumed run follows it.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from birddet.config import TrainConfig, config_from_dict, config_to_dict, save_config
from birddet.engine import distributed as D
from birddet.engine.budget import BudgetKeeper, BudgetPlan
from birddet.engine.optim import build_scheduler, resize_schedule
from birddet.errors import InputError, RunStopped
from birddet.fileio import append_text, atomic_write_text
from birddet.runlock import run_lock

logger = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"
METRICS_LOG = "metrics.jsonl"
# Keys that may change between a run and its resume: they do not change what is computed.
RESUME_IGNORED_KEYS = {("data", "workers")}


class NonFiniteLossError(RunStopped):
    """The loss became NaN or infinite: the run stops, keeping the last good `last.pt`.

    An `InputError` because the fix is in the config (a lower `train.lr`, `train.grad_clip`, fp32 instead of fp16),
    so the CLI reports it on one line (exit code 2) instead of a traceback.
    """


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

            ensure_synthetic_coco(root, num_train=syn.num_train, num_val=syn.num_val, seed=syn.seed, preset=syn.preset)
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


# -- state -----------------------------------------------------------------------------------------------------------
@dataclass
class RunState:
    """Counters and history that `last.pt` carries between processes."""

    epoch: int = 0  # epoch in progress (or next to start)
    step: int = 0  # optimizer steps taken
    batches_done: int = 0  # batches of `epoch` already consumed (non-zero only after a max_steps stop)
    best_score: float = -1.0  # the task's metric (AP, top-1) of best.pt; saved as `best_<metric>`
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    # best.pt (and the last history entry) come from an evaluation at a max_steps pause that an uninterrupted run
    # would not make: the next evaluation replaces them whatever its score.
    best_provisional: bool = False


def rng_states() -> dict[str, Any]:
    """Python/NumPy/torch (and CUDA) RNG states as plain containers and tensors (`weights_only` loadable)."""
    np_state = np.random.get_state()
    states: dict[str, Any] = {
        "python": _to_plain(random.getstate()),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(_to_tuple(states["python"]))
    n = states["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _to_plain(x: Any) -> Any:
    return [_to_plain(v) for v in x] if isinstance(x, tuple | list) else x


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list) else x


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _compare_configs(saved: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """Resuming with other model or data settings would silently train a different experiment: refuse."""

    def walk(a: Any, b: Any, path: tuple[str, ...]) -> list[str]:
        if path[:2] in RESUME_IGNORED_KEYS:
            return []
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(set(a) | set(b)) for d in walk(a.get(k), b.get(k), (*path, k))]
        return [] if a == b else [f"{'.'.join(path)} ({a!r} in the run, {b!r} now)"]

    diffs = [d for section in ("model", "data") for d in walk(saved.get(section), current.get(section), (section,))]
    if diffs:
        raise InputError(
            f"cannot resume {where}: the config differs in {'; '.join(diffs[:5])}"
            f"{' ...' if len(diffs) > 5 else ''}. Resume with the run's own config (its config.yaml) or start a new --out"
        )


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


# -- the loop --------------------------------------------------------------------------------------------------------
class Trainer:
    """One training run of `task`. `fit()` returns a summary dict; see the module docstring for what it writes."""

    def __init__(self, task: Task, out_dir: Path, *, resume: bool) -> None:
        self.task = task
        self.cfg = cfg = task.cfg
        self.out = Path(out_dir)
        self.ctx = ctx = task.ctx
        self.device = ctx.device
        t = cfg.train
        if t.amp == "fp16" and self.device.type != "cuda":
            raise InputError(
                f"train.amp=fp16 needs a CUDA GPU (this run is on {self.device}); use train.amp=bf16 or none on CPU"
            )
        if t.batch_size < 1 or t.accumulate < 1 or t.epochs < 1:
            raise InputError("train.batch_size, train.accumulate and train.epochs must all be at least 1")
        if t.time_budget is not None and t.time_budget <= 0:
            raise InputError(f"train.time_budget is in minutes and must be positive, got {t.time_budget}")
        # The budget clock starts first: data checks and model building are part of what the user waits for.
        self.budget = (
            BudgetKeeper(t.time_budget, clock=t.budget_clock, eval_every=t.eval_every) if t.time_budget else None
        )
        self.state = RunState()
        ckpt = self._read_resume_checkpoint() if resume else None
        if not resume:
            self._refuse_existing_run()

        task.build_data(ckpt)
        self.net = self._build_model(ckpt)
        self.seeded = SeededDataset(task.train_set, t.seed)
        self.net.to(self.device)
        self.model = D.wrap_model(self.net, ctx)
        self.optimizer = task.build_optimizer(self.net)
        self.batches_per_epoch = len(task.epoch_batches(0))
        self.epochs = t.epochs  # a time budget replaces it with the planned count after the first epoch
        self.total_steps = t.epochs * steps_per_epoch(self.batches_per_epoch, t.accumulate)
        self.scheduler = build_scheduler(self.optimizer, t, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp == "fp16")
        self.ema = (
            AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True) if t.ema else None
        )
        if ckpt is not None:
            self._restore(ckpt["training"])
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.amp)
        self.log_records: list[dict[str, Any]] = self._read_log() if resume else []
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(task.resolved_config(self.net), self.out / "config.yaml")
            if not resume:
                atomic_write_text(self.out / METRICS_LOG, "")

    @property
    def best_key(self) -> str:
        """Name of the best score in `last.pt` and the summary: `best_ap` (detector), `best_top1` (classifier)."""
        return f"best_{self.task.metric.lower()}"

    # -- setup ---------------------------------------------------------------------------------------------------
    def _refuse_existing_run(self) -> None:
        """A new run never writes over another one: any of its files (not only `last.pt`, which appears after the
        first epoch) means the folder is taken. `config.yaml` alone is not a run: it may be the config given."""
        log = self.out / METRICS_LOG
        found = [p.name for p in (self.out / LAST, self.out / BEST) if p.exists()]
        if log.is_file() and log.stat().st_size > 0:
            found.append(METRICS_LOG)
        if not found:
            return
        if LAST in found:
            how = f"pass --resume to continue it (from its {LAST}) or use a new --out"
        else:
            how = f"it has no {LAST} to resume from (it stopped before its first epoch ended): delete it or use a new --out"
        raise InputError(f"{self.out} already holds a run ({', '.join(found)}); {how}")

    def _read_resume_checkpoint(self) -> dict[str, Any]:
        path = self.out / LAST
        if not path.is_file():
            raise InputError(f"cannot resume: {path} does not exist; start the run without --resume")
        ckpt = self.task.read_checkpoint(path)
        if "training" not in ckpt:
            raise InputError(f"cannot resume from {path}: it holds no training state (is it a copy of best.pt?)")
        saved = ckpt["training"]["user_config"]
        # A run saved before a config key existed ran with that key's default: fill it in, so adding a knob to
        # birddet never makes older runs unresumable (a non-default value for it is still a difference).
        saved = config_to_dict(config_from_dict(saved, str(path), schema=type(self.cfg)))
        _compare_configs(saved, config_to_dict(self.cfg), str(path))
        return ckpt

    def _build_model(self, ckpt: dict[str, Any] | None) -> torch.nn.Module:
        if ckpt is not None:
            return self.task.build_model(ckpt)
        seed_everything(self.cfg.train.seed)
        # Rank 0 first: a weights download goes to a shared cache once; DDP then broadcasts rank 0's init.
        if self.ctx.is_main:
            model = self.task.build_model(None)
        D.barrier()
        if not self.ctx.is_main:
            model = self.task.build_model(None)
        seed_everything(self.cfg.train.seed + 1_000 * self.ctx.rank)
        return model

    def _restore(self, training: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(training["optimizer"])
        self.scheduler.load_state_dict(training["scheduler"])
        if training.get("scaler"):
            self.scaler.load_state_dict(training["scaler"])
        if self.ema is not None and training.get("ema") is not None:
            self.ema.load_state_dict(training["ema"])
        s = self.state
        s.epoch, s.step, s.batches_done = int(training["epoch"]), int(training["step"]), int(training["batches_done"])
        s.best_score, s.best_epoch = float(training[self.best_key]), int(training["best_epoch"])
        s.history = list(training["history"])
        s.best_provisional = bool(training.get("best_provisional", False))  # absent in runs saved before it existed
        per_rank = training.get("rng_per_rank")
        if per_rank and len(per_rank) == self.ctx.world_size:
            set_rng_states(per_rank[self.ctx.rank])
        elif self.ctx.world_size == 1 or not per_rank:
            set_rng_states(training["rng"])
        else:
            # Another world size cannot replay the same per-rank streams; give each rank a fresh, distinct one.
            logger.warning(
                "resuming a %d-process run on %d processes: training continues, but not bit-exactly",
                len(per_rank), self.ctx.world_size,
            )  # fmt: skip
            seed_everything(self.cfg.train.seed + 1_000 * self.ctx.rank + s.step)
        budget = training.get("budget")
        if self.budget is not None and budget:  # resume keeps the plan and the time already spent
            self.budget.clock.offset_s = float(budget["elapsed_s"])
            if budget.get("plan"):
                self._follow_plan(BudgetPlan.from_dict(budget["plan"]))
        logger.info("resuming %s at epoch %d, step %d", self.out, s.epoch + 1, s.step)

    def _read_log(self) -> list[dict[str, Any]]:
        """Keep the log lines up to the resumed step; later ones belong to the lost tail of the killed run.

        A last line cut short by a kill (or a full disk) is dropped with a warning; a damaged line before it is an
        error naming the line. The kept lines replace the file atomically.
        """
        path = self.out / METRICS_LOG
        if not path.is_file():
            return []
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows: list[dict[str, Any]] = []
        for n, line in enumerate(lines, start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if n == len(lines):
                    logger.warning("%s: dropping its last line, cut short by an interruption: %.60s", path, line)
                    continue
                raise InputError(
                    f"{path} line {n} is damaged ({line[:60]!r}); delete that line (the log only feeds loss.png) "
                    "and resume again"
                ) from None
        rows = [r for r in rows if r.get("step", 0) <= self.state.step]
        if self.ctx.is_main:
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _training_state(self, rng_per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        s = self.state
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": s.epoch,
            "step": s.step,
            "batches_done": s.batches_done,
            self.best_key: s.best_score,
            "best_epoch": s.best_epoch,
            "best_provisional": s.best_provisional,
            "history": s.history,
            "rng": rng_per_rank[0],
            # Every rank draws its own RPN/RoI samples: a resumed DDP run continues exactly only if each rank gets
            # its own stream back, not rank 0's.
            "rng_per_rank": rng_per_rank,
            "budget": {
                "elapsed_s": self.budget.elapsed(),
                "plan": self.budget.plan.as_dict() if self.budget.plan else None,
            }
            if self.budget is not None
            else None,
            "user_config": config_to_dict(self.cfg),
        }

    def save_last(self) -> None:
        rngs = D.gather_lists([rng_states()])  # collective: every rank takes part
        if self.ctx.is_main:
            self.task.save_last(self.out / LAST, self.net, self._training_state(rngs))
        D.barrier()

    # -- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(self, epoch: int, *, provisional: bool = False) -> float:
        """Validation score of the weights being kept (EMA when on); writes `best.pt` and `metrics.json` when it
        improves. `provisional`: an evaluation at a max_steps pause (see the module docstring), which the next
        evaluation replaces."""
        s = self.state
        if s.best_provisional:  # forget the pause's evaluation: from here on the run is the uninterrupted one
            s.history, s.best_score, s.best_epoch, s.best_provisional = s.history[:-1], -1.0, -1, False
        model = self.ema.module if self.ema is not None else self.net
        outcome = self.task.validate(model)
        if self.ctx.is_main:
            assert outcome is not None, "Task.validate must return the stats on rank 0"
            stats, result = outcome
            stats = {k: float(v) for k, v in stats.items()}
            self.state.history.append({"epoch": epoch + 1, "step": self.state.step, **stats})
            score = stats[self.task.metric]
            if score > self.state.best_score:
                self.state.best_score, self.state.best_epoch = score, epoch + 1
                self.task.write_best(self.out, model, result)
            logger.info(
                "epoch %d: %s (best %.4f, epoch %d)",
                epoch + 1, self.task.describe(stats), self.state.best_score, self.state.best_epoch,
            )  # fmt: skip
            self.task.plot_history(self.state.history, self.out)
        # Every rank keeps the same history/best so whichever rank's state is saved, it is the same.
        self.state.history, self.state.best_score, self.state.best_epoch = D.broadcast_object(
            (self.state.history, self.state.best_score, self.state.best_epoch)
        )
        s.best_provisional = provisional
        return self.state.best_score

    # -- training ------------------------------------------------------------------------------------------------
    def _loader(self, batches: list[list[int]], epoch: int) -> DataLoader:
        self.seeded.epoch = epoch
        transforms = getattr(self.task.train_set, "transforms", None)
        if hasattr(transforms, "set_epoch"):  # e.g. mosaic switched off for the last epochs
            transforms.set_epoch(epoch, self.epochs)
        workers = self.cfg.data.workers
        return DataLoader(
            self.seeded,
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=self.task.collate,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.cfg.train.seed + epoch),
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
        )

    def _forward(self, inputs: Any, targets: Any) -> dict[str, torch.Tensor]:
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None
        ):
            return self.task.forward(self.model, inputs, targets, self.device)

    def _check_finite(self, parts: dict[str, torch.Tensor], epoch: int) -> dict[str, float]:
        """Mean loss parts over ranks; NaN/inf anywhere stops every rank together with a message saying how to fix it."""
        names = list(parts)
        values = D.all_reduce_mean(torch.stack([parts[n].detach().float() for n in names])).tolist()
        logged = dict(zip(names, values))
        bad = [n for n, v in logged.items() if not math.isfinite(v)]
        if bad:
            last = self.out / LAST
            kept = (
                f"the last good state is kept in {last}" if last.exists() else "no epoch finished, so no last.pt exists"
            )
            raise NonFiniteLossError(
                f"non-finite loss at step {self.state.step + 1} (epoch {epoch + 1}): "
                f"{', '.join(f'{n}={logged[n]}' for n in bad)}; {kept}. Lower train.lr (now {self.cfg.train.lr:g}), "
                "set train.grad_clip (e.g. 1.0), lengthen train.warmup_iters, or use train.amp=bf16/none instead of fp16"
            )
        return logged

    def _optimizer_step(self) -> float | None:
        t = self.cfg.train
        grad_norm = None
        if t.grad_clip:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, t.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        return grad_norm

    def _log(self, record: dict[str, Any]) -> None:
        self.log_records.append(record)
        if self.ctx.is_main:
            append_text(self.out / METRICS_LOG, json.dumps(record) + "\n")

    def _groups(self, batches: list[list[int]]) -> list[list[list[int]]]:
        a = self.cfg.train.accumulate
        return [batches[i : i + a] for i in range(0, len(batches), a)]

    def _train_epoch(self, epoch: int) -> str | None:
        """Run the rest of `epoch`; why it stopped early: "max_steps" (a pause), "budget" (the end), or None."""
        from tqdm import tqdm

        t = self.cfg.train
        s = self.state
        groups = self._groups(self.task.epoch_batches(epoch))
        done = self._groups_done(groups)
        remaining = groups[done:]
        loader = iter(self._loader([b for g in remaining for b in g], epoch))
        bar = tqdm(
            total=len(groups),
            initial=done,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            unit="step",
            disable=not self.ctx.is_main,
            dynamic_ncols=True,
        )
        self.model.train()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        tick, seen = time.perf_counter(), 0
        try:
            for group in remaining:
                sums: dict[str, float] = {}
                for j in range(len(group)):
                    inputs, targets = next(loader)
                    last_micro = j == len(group) - 1
                    # DDP all-reduces gradients on the last micro-batch of an accumulation group only.
                    sync = nullcontext() if last_micro or not self.ctx.distributed else self.model.no_sync()
                    with sync:
                        parts = self._forward(inputs, targets)
                        loss = sum(parts.values())
                        logged = self._check_finite({**parts, "loss": loss}, epoch)
                        self.scaler.scale(loss / len(group)).backward()
                    for k, v in logged.items():
                        sums[k] = sums.get(k, 0.0) + v / len(group)
                    seen += len(inputs) * self.ctx.world_size
                    s.batches_done += 1
                lr = self.optimizer.param_groups[-1]["lr"]  # the LR this step used (the head group's, full LR)
                grad_norm = self._optimizer_step()
                s.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss']:.3f}", lr=f"{lr:.2e}")
                if s.step % t.log_every == 0 or s.step == 1:
                    self._log(self._record(epoch, sums, lr, grad_norm, seen / max(time.perf_counter() - tick, 1e-9)))
                    tick, seen = time.perf_counter(), 0
                if t.max_steps is not None and s.step >= t.max_steps:
                    return "max_steps"
                if self._budget_spent():
                    return "budget"
            return None
        finally:
            bar.close()

    def fit(self) -> dict[str, Any]:
        t = self.cfg.train
        s = self.state
        budget_stop = self._budget_spent()
        stopped = budget_stop or (t.max_steps is not None and s.step >= t.max_steps)
        clock = self.budget.elapsed if self.budget is not None else time.perf_counter
        started = clock()
        while s.epoch < self.epochs and not stopped:
            epoch = s.epoch
            batches_before = s.batches_done
            stop = self._train_epoch(epoch)
            stopped = stop is not None
            fraction_run = max(1, s.batches_done - batches_before) / self.batches_per_epoch
            epoch_done = s.batches_done >= self.batches_per_epoch
            if epoch_done:
                s.epoch, s.batches_done = epoch + 1, 0
            # The end of training; a max_steps stop alone is a pause, and evaluating there would give the run an
            # evaluation (and maybe a best.pt) that the same run without the pause never has.
            budget_stop = stop == "budget" or self._budget_spent()
            final = s.epoch >= self.epochs or budget_stop
            eval_s = None
            if (epoch_done and (epoch + 1) % t.eval_every == 0) or final or self._budget_needs_eval(epoch_done):
                eval_started = clock()
                self.evaluate(epoch)
                eval_s = clock() - eval_started
            self.save_last()
            if self.ctx.is_main:
                from birddet.engine.plots import plot_losses

                plot_losses(self.log_records, self.out / "loss.png")
            # An epoch's cost is everything from one epoch's start to the next but the evaluation: checkpoints,
            # plots and planning included.
            now = clock()
            epoch_s, started = (now - started - (eval_s or 0.0)) / fraction_run, now
            if epoch_done and self.budget is not None and self._plan_budget(epoch, epoch_s, eval_s):
                self.save_last()  # the plan is part of the training state a resume continues
        finished = s.epoch >= self.epochs or budget_stop
        if s.best_epoch < 0 or (s.best_provisional and not finished):
            # Resumed a finished run, or paused before any evaluation (again): evaluate once, so the folder has a
            # best.pt; at a pause it is provisional, and the run's next evaluation replaces it.
            self.evaluate(max(s.epoch - 1, 0), provisional=not finished)
            self.save_last()
        return self.summary()

    # -- time budget (birddet/engine/budget.py decides; these apply its decisions) ---------------------------------
    def _budget_spent(self) -> bool:
        """The planned steps are done, or the time is up (every rank gets rank 0's answer)."""
        if self.budget is None:
            return False
        if self.budget.plan is not None and self.state.step >= self.total_steps:
            return True
        if D.broadcast_object(self.budget.out_of_time()):
            logger.info("time budget reached at step %d: finishing the run", self.state.step)
            return True
        return False

    def _budget_needs_eval(self, epoch_done: bool) -> bool:
        return epoch_done and self.budget is not None and self.budget.must_evaluate()

    def _plan_budget(self, epoch: int, epoch_s: float, eval_s: float | None) -> bool:
        """After a complete epoch: plan (first epoch) or shrink the plan; log it; evaluate if this is now the end.

        Returns True when the plan changed.
        """
        assert self.budget is not None
        spe = steps_per_epoch(self.batches_per_epoch, self.cfg.train.accumulate)
        plan = D.broadcast_object(self.budget.epoch_finished(self.state.step, spe, epoch_s, eval_s))
        if plan is None:
            return False
        self._follow_plan(plan)
        logger.info(
            "time budget %.1f min (%s clock): %d steps (%d epochs) planned (epoch %.1f s, evaluation %.1f s)",
            plan.budget_s / 60, plan.clock, plan.steps, plan.epochs, plan.epoch_s, plan.eval_s,
        )  # fmt: skip
        self._log({"epoch": epoch + 1, "step": self.state.step, "budget_plan": plan.as_dict()})
        if self.state.step >= self.total_steps and eval_s is None:
            self.evaluate(epoch)
        return True

    def _follow_plan(self, plan: BudgetPlan) -> None:
        """Train for `plan.steps`, with the LR schedule stretched or shrunk to end with them."""
        assert self.budget is not None
        self.budget.plan = plan
        self.epochs = plan.epochs
        self.total_steps = plan.steps
        self.scheduler = resize_schedule(self.scheduler, self.cfg.train, self.total_steps)

    def _groups_done(self, groups: list[list[list[int]]]) -> int:
        done, count = self.state.batches_done, 0
        for g in groups:
            if done <= 0:
                break
            done -= len(g)
            count += 1
        return count

    def _record(
        self, epoch: int, sums: dict[str, float], lr: float, grad_norm: float | None, ips: float
    ) -> dict[str, Any]:
        rec: dict[str, Any] = {"epoch": epoch + 1, "step": self.state.step}
        rec.update({k: round(v, 6) for k, v in sums.items()})
        rec["lr"] = lr
        if grad_norm is not None:
            rec["grad_norm"] = round(grad_norm, 4)
        rec["images_per_s"] = round(ips, 2)
        if self.device.type == "cuda":
            rec["max_memory_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        else:
            rec["max_memory_mb"] = round(_peak_rss_mb(), 1)
        return rec

    def summary(self) -> dict[str, Any]:
        s = self.state
        best = next((h for h in s.history if h["epoch"] == s.best_epoch), {})
        return {
            "out_dir": str(self.out),
            "epochs": s.epoch,
            "steps": s.step,
            self.best_key: s.best_score,
            "best_epoch": s.best_epoch,
            "best_stats": {k: v for k, v in best.items() if k not in ("epoch", "step")},
            "history": s.history,
        }


def module_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _peak_rss_mb() -> float:
    """Peak resident memory of this process on CPU runs (Linux reports KiB)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except (ImportError, OSError):
        return float("nan")


def run_training(task: Task, out_dir: Path, *, resume: bool = False) -> dict[str, Any]:
    """Run `task` into `out_dir` (see the module docstring); returns the summary. Cleans up the process group."""
    try:
        logger.info("rank %d of %d on %s", task.ctx.rank, task.ctx.world_size, task.ctx.device)
        # One run per folder: rank 0 holds the folder's lock from before the first check to the end.
        with run_lock(out_dir, "train", enabled=task.ctx.is_main):
            return Trainer(task, Path(out_dir), resume=resume).fit()
    finally:
        D.cleanup(task.ctx)


def train(cfg: Any, out_dir: Path, *, resume: bool = False) -> dict[str, Any]:
    """Train the detector described by `cfg` into `out_dir` (see the module docstring); returns a summary.

    Under `torchrun` every rank calls this; rank 0 writes the files and the summary is the same on every rank.
    """
    from birddet.engine.detection import DetectionTask

    ctx = D.init_distributed(cfg.train.device)
    summary = run_training(DetectionTask(cfg, ctx), Path(out_dir), resume=resume)
    if ctx.is_main:
        logger.info("best val AP %.4f at epoch %d; run folder %s", summary["best_ap"], summary["best_epoch"], out_dir)
    return summary
