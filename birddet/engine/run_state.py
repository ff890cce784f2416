"""A run's state between processes: what `last.pt` carries, the RNG streams, and how `--resume` continues a run.

The loop (`engine/loop.py`) trains; this module is what makes a run survive a kill. `last.pt` holds the model (in
the task's format) and the loop's training state (`RunState`'s counters and history, optimizer, scheduler, scaler,
EMA, every rank's RNG states, the time-budget plan and the user's config); on `--resume` the config is compared
with the run's own (`_compare_configs`: other model or data settings would train a different experiment), and the
state is restored so that a resumed run on CPU reproduces the losses of an uninterrupted one exactly.

One run per folder: rank 0 holds `birddet.lock` in it while the run lasts (`birddet/runlock.py`), and a folder
that holds a run (`last.pt`, `best.pt` or a non-empty `metrics.jsonl`) is only continued with `--resume`.
`metrics.jsonl` is appended one whole line at a time (`birddet.fileio.append_text`); on resume a last line cut
short by a kill is dropped with a warning, and the kept lines are rewritten atomically.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from birddet.config import config_from_dict, config_to_dict
from birddet.engine import distributed as D
from birddet.engine.budget import BudgetPlan
from birddet.errors import InputError
from birddet.fileio import atomic_write_text

logger = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"
METRICS_LOG = "metrics.jsonl"
# Keys that may change between a run and its resume: they do not change what is computed.
RESUME_IGNORED_KEYS = {("data", "workers")}


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


def module_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- the loop's side -------------------------------------------------------------------------------------------------
class RunStateMixin:
    """The `Trainer`'s methods that read and write its run folder's state: refuse a folder that holds another run,
    read and check `last.pt` for `--resume`, restore the training state from it, trim `metrics.jsonl` to the
    resumed step, and write `last.pt`.

    A mixin of `engine/loop.py`'s `Trainer`, whose attributes it uses (`out`, `task`, `cfg`, `ctx`, `state`,
    `optimizer`, `scheduler`, `scaler`, `ema`, `budget`, `net`, `best_key`, and `_follow_plan` of the time budget).
    """

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
