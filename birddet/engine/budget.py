"""`train.time_budget`: fit a run's epoch count (and so its LR schedule) to a time budget, as YOLO's `time=` does.

A fixed epoch count is the wrong unit for a first run on one's own photos: nobody knows what an epoch costs on their
machine. With a budget the run trains one epoch, evaluates once, and from those two measurements picks the number of
epochs that fits the budget, evaluation included; the cosine or step schedule is then laid over the planned steps, so
it decays fully by the end instead of being cut off mid-way. The plan is recorded (`metrics.jsonl`, `last.pt`), and
a resumed run keeps it.

The measured first epoch also pays for start-up work (the first batches, worker start, allocator warm-up), so the
plan errs on the short side; `SAFETY_FRACTION` of the budget is kept back for checkpoint writes and timing noise.
If the run falls behind its plan (another process took the CPU), `shrink_plan` shortens it at the next epoch end,
so the final weights and `best.pt` are still written inside the budget.

Clocks: "wall" is elapsed real time (what a user waits for); "cpu" is this process's CPU time (all its threads,
not those of data-loader worker processes: use `data.workers=0`). The CPU clock makes runs comparable on a machine
that other jobs share, which is what `benchmarks/learning_curve.py` uses.

Everything here is a pure function of numbers, except `BudgetClock`, which reads the time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["BudgetClock", "BudgetKeeper", "BudgetPlan", "evals_between", "plan_epochs", "shrink_plan"]

#: Fraction of the budget held back for checkpoint writes and timing noise.
SAFETY_FRACTION = 0.03
#: Never plan more epochs than this (a budget far too large for a tiny set would otherwise plan millions).
MAX_EPOCHS = 10_000

Clock = Literal["wall", "cpu"]


def evals_between(done: int, end: int, eval_every: int) -> int:
    """How many evaluations the epochs `done + 1 .. end` trigger: every `eval_every`-th epoch, and always the last."""
    if end <= done:
        return 0
    every = max(1, eval_every)
    count = end // every - done // every
    return count + (0 if end % every == 0 else 1)


def planned_seconds(
    epochs: int, *, done: int, elapsed_s: float, epoch_s: float, eval_s: float, eval_every: int
) -> float:
    """Time at which a run that has finished `done` epochs after `elapsed_s` ends if it trains to `epochs`."""
    return elapsed_s + (epochs - done) * epoch_s + evals_between(done, epochs, eval_every) * eval_s


def plan_epochs(
    budget_s: float,
    *,
    done: int,
    elapsed_s: float,
    epoch_s: float,
    eval_s: float,
    eval_every: int = 1,
    safety: float = SAFETY_FRACTION,
) -> int:
    """The largest epoch count (>= `done`, and >= 1) whose planned end stays within `budget_s * (1 - safety)`.

    `epoch_s` and `eval_s` are the measured cost of one training epoch and one evaluation.
    """
    if budget_s <= 0:
        raise ValueError(f"budget_s must be positive, got {budget_s}")
    limit = budget_s * (1.0 - safety)
    per_epoch = max(epoch_s, 1e-6)
    # Start from the estimate that ignores the eval pattern, then step down until the exact count fits.
    guess = done + int(max(0.0, limit - elapsed_s) // (per_epoch + max(eval_s, 0.0) / max(1, eval_every)))
    epochs = min(max(guess + 2, done), MAX_EPOCHS)
    while (
        epochs > done
        and planned_seconds(
            epochs, done=done, elapsed_s=elapsed_s, epoch_s=per_epoch, eval_s=eval_s, eval_every=eval_every
        )
        > limit
    ):
        epochs -= 1
    return max(epochs, done, 1)


@dataclass
class BudgetPlan:
    """The plan a budgeted run follows; stored in `last.pt` (plain numbers) so a resumed run keeps it."""

    budget_s: float
    clock: str
    epochs: int
    epoch_s: float
    eval_s: float
    planned_at_epoch: int  # epochs finished when the plan was made (or last shrunk)
    planned_at_s: float = 0.0  # budget seconds spent by then

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BudgetPlan:
        return cls(
            budget_s=float(d["budget_s"]),
            clock=str(d["clock"]),
            epochs=int(d["epochs"]),
            epoch_s=float(d["epoch_s"]),
            eval_s=float(d["eval_s"]),
            planned_at_epoch=int(d["planned_at_epoch"]),
            planned_at_s=float(d.get("planned_at_s", 0.0)),
        )


def shrink_plan(plan: BudgetPlan, *, done: int, elapsed_s: float, epoch_s: float, eval_every: int) -> BudgetPlan | None:
    """A shorter plan when the run, at `elapsed_s` after `done` epochs, can no longer finish `plan.epochs` in time.

    `epoch_s` is the recent cost of an epoch (e.g. the slowest of the plan's estimate and the last epoch). Returns None
    when the plan still fits: plans only ever shrink, so a run never outgrows a budget it was given.
    """
    if done >= plan.epochs:
        return None
    end = planned_seconds(
        plan.epochs, done=done, elapsed_s=elapsed_s, epoch_s=epoch_s, eval_s=plan.eval_s, eval_every=eval_every
    )
    if end <= plan.budget_s * (1.0 - SAFETY_FRACTION / 2):
        return None
    epochs = plan_epochs(
        plan.budget_s, done=done, elapsed_s=elapsed_s, epoch_s=epoch_s, eval_s=plan.eval_s, eval_every=eval_every
    )
    return BudgetPlan(plan.budget_s, plan.clock, min(epochs, plan.epochs), epoch_s, plan.eval_s, done, elapsed_s)


class BudgetClock:
    """Seconds spent by this run: wall or process-CPU time, plus what earlier processes of the run spent (resume)."""

    def __init__(self, kind: str = "wall", offset_s: float = 0.0) -> None:
        if kind not in ("wall", "cpu"):
            raise ValueError(f"unknown budget clock {kind!r}; use 'wall' or 'cpu'")
        self.kind = kind
        self._read = time.perf_counter if kind == "wall" else time.process_time
        self._start = self._read()
        self.offset_s = float(offset_s)

    def elapsed(self) -> float:
        return self.offset_s + (self._read() - self._start)


class BudgetKeeper:
    """What the training loop asks about its budget: whether to evaluate now, to stop now, and what the plan is.

    The loop calls `epoch_finished` after every complete epoch with that epoch's training time and, when it
    evaluated, the evaluation time; a returned plan replaces the current one (the loop then re-lays its schedule).
    """

    #: Before any plan exists, the first epoch is cut short at this fraction of the budget, leaving the rest for
    #: its evaluation and checkpoints (a budget smaller than one epoch still ends with weights on disk).
    FIRST_EPOCH_FRACTION = 0.7

    def __init__(
        self,
        budget_min: float,
        *,
        clock: str = "wall",
        eval_every: int = 1,
        plan: BudgetPlan | None = None,
        elapsed_s: float = 0.0,
    ) -> None:
        if budget_min <= 0:
            raise ValueError(f"time budget must be positive minutes, got {budget_min}")
        self.budget_s = float(budget_min) * 60.0
        self.clock = BudgetClock(clock, elapsed_s)
        self.eval_every = max(1, eval_every)
        self.plan = plan

    def elapsed(self) -> float:
        return self.clock.elapsed()

    def must_evaluate(self) -> bool:
        """The first epoch is always evaluated: its cost is half of what the plan is made from."""
        return self.plan is None

    def out_of_time(self) -> bool:
        """True when the epoch in progress must stop now to leave time for the final evaluation and checkpoint."""
        if self.plan is None:
            return self.elapsed() >= self.budget_s * self.FIRST_EPOCH_FRACTION
        return self.elapsed() >= self.budget_s * (1.0 - SAFETY_FRACTION) - self.plan.eval_s

    def epoch_finished(self, done: int, epoch_s: float, eval_s: float | None) -> BudgetPlan | None:
        """Plan after the first epoch; afterwards shrink the plan if the run fell behind. Returns a new plan or None."""
        elapsed = self.elapsed()
        if self.plan is None:
            if eval_s is None:
                raise ValueError("the first epoch of a budgeted run must be evaluated before planning")
            epochs = plan_epochs(
                self.budget_s, done=done, elapsed_s=elapsed, epoch_s=epoch_s, eval_s=eval_s, eval_every=self.eval_every
            )
            self.plan = BudgetPlan(self.budget_s, self.clock.kind, epochs, epoch_s, eval_s, done, elapsed)
            return self.plan
        if eval_s is not None and eval_s > self.plan.eval_s:
            self.plan.eval_s = eval_s
        new = shrink_plan(self.plan, done=done, elapsed_s=elapsed, epoch_s=epoch_s, eval_every=self.eval_every)
        if new is not None:
            self.plan = new
        return new
