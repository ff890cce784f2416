"""`train.time_budget`: fit a run's length (and so its LR schedule) to a time budget, as YOLO's `time=` does.

A fixed epoch count is the wrong unit for a first run on one's own photos: nobody knows what an epoch costs on their
machine. With a budget the run trains one epoch, evaluates once, and from those two measurements picks the number of
optimizer steps that fits the budget, evaluation included (the last epoch may end part-way); the cosine or step
schedule is then laid over the planned steps, so it decays fully by the end instead of being cut off mid-way. The
plan is recorded (`metrics.jsonl`, `last.pt`), and a resumed run keeps it.

The measured first epoch also pays for start-up work (the first batches, worker start, allocator warm-up), so the
plan errs on the short side; `SAFETY_FRACTION` of the budget is kept back for checkpoint writes and timing noise.
If the run falls behind its plan (another process took the CPU), `shrink_plan` shortens it at the next epoch end,
so the final weights and `best.pt` are still written inside the budget. If it runs ahead (the first epochs were slow
and later ones are not: on a CPU, early proposals and a busy neighbour both pass), `grow_plan` lengthens it again,
but only in the first half of the run, so the end of the LR schedule is never stretched.

Clocks: "wall" is elapsed real time (what a user waits for); "cpu" is this process's CPU time (all its threads,
not those of data-loader worker processes: use `data.workers=0`). The CPU clock makes runs comparable on a machine
that other jobs share, which is what `benchmarks/learning_curve.py` uses.

Everything here is a pure function of numbers, except `BudgetClock`, which reads the time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = [
    "BudgetClock",
    "BudgetKeeper",
    "BudgetPlan",
    "evals_for",
    "grow_plan",
    "make_plan",
    "plan_steps",
    "shrink_plan",
]

#: Fraction of the budget held back for checkpoint writes and timing noise.
SAFETY_FRACTION = 0.03
#: A plan grows only while at most this fraction of it is done, and only by at least `GROW_MIN_FRACTION`.
GROW_UNTIL = 0.5
GROW_MIN_FRACTION = 0.05
#: Never plan more epochs than this (a budget far too large for a tiny set would otherwise plan millions of steps).
MAX_EPOCHS = 10_000

Clock = Literal["wall", "cpu"]


def evals_for(done_steps: int, total_steps: int, steps_per_epoch: int, eval_every: int) -> int:
    """Evaluations a run triggers going from `done_steps` to `total_steps`: at the end of every `eval_every`-th
    epoch, and always once at the very end (which may fall inside an epoch)."""
    if total_steps <= done_steps:
        return 0
    spe, every = max(1, steps_per_epoch), max(1, eval_every)
    full = total_steps // spe
    count = full // every - (done_steps // spe) // every
    ends_on_eval = total_steps % spe == 0 and full % every == 0
    return count + (0 if ends_on_eval else 1)


def planned_seconds(
    total_steps: int,
    *,
    done_steps: int,
    steps_per_epoch: int,
    elapsed_s: float,
    epoch_s: float,
    eval_s: float,
    eval_every: int,
) -> float:
    """When a run that is at `done_steps` after `elapsed_s` ends if it trains to `total_steps` optimizer steps."""
    step_s = epoch_s / max(1, steps_per_epoch)
    evals = evals_for(done_steps, total_steps, steps_per_epoch, eval_every)
    return elapsed_s + (total_steps - done_steps) * step_s + evals * eval_s


def plan_steps(
    budget_s: float,
    *,
    done_steps: int,
    steps_per_epoch: int,
    elapsed_s: float,
    epoch_s: float,
    eval_s: float,
    eval_every: int = 1,
    safety: float = SAFETY_FRACTION,
) -> int:
    """The largest optimizer-step count (>= `done_steps`, >= 1) whose planned end stays within
    `budget_s * (1 - safety)`. `epoch_s` and `eval_s` are the measured costs of one epoch and one evaluation.

    Steps, not epochs: with large photos and a short budget an epoch is a big share of the budget, and rounding the
    plan down to whole epochs would leave much of it unused; the last epoch may end part-way.
    """
    if budget_s <= 0:
        raise ValueError(f"budget_s must be positive, got {budget_s}")
    limit = budget_s * (1.0 - safety)
    spe = max(1, steps_per_epoch)
    step_s = max(epoch_s / spe, 1e-9)
    kw = {
        "done_steps": done_steps,
        "steps_per_epoch": spe,
        "elapsed_s": elapsed_s,
        "epoch_s": epoch_s,
        "eval_s": eval_s,
        "eval_every": eval_every,
    }
    # Start above the answer (only the final evaluation counted), then step down until the exact end fits.
    steps = min(done_steps + 1 + int(max(0.0, limit - elapsed_s - eval_s) // step_s), MAX_EPOCHS * spe)
    while steps > done_steps and planned_seconds(steps, **kw) > limit:
        # Jump by the overshoot when it is large (many intermediate evaluations), else one step at a time.
        steps -= max(1, int((planned_seconds(steps, **kw) - limit) // (step_s + eval_s / spe)))
    return max(steps, done_steps, 1)


@dataclass
class BudgetPlan:
    """The plan a budgeted run follows; stored in `last.pt` (plain numbers) so a resumed run keeps it."""

    budget_s: float
    clock: str
    steps: int  # optimizer steps of the whole run
    epochs: int  # epochs started (the last may end part-way): ceil(steps / steps_per_epoch)
    steps_per_epoch: int
    epoch_s: float
    eval_s: float
    planned_at_step: int  # steps done when the plan was made (or last shrunk)
    planned_at_s: float  # budget seconds spent by then

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BudgetPlan:
        return cls(
            budget_s=float(d["budget_s"]),
            clock=str(d["clock"]),
            steps=int(d["steps"]),
            epochs=int(d["epochs"]),
            steps_per_epoch=int(d["steps_per_epoch"]),
            epoch_s=float(d["epoch_s"]),
            eval_s=float(d["eval_s"]),
            planned_at_step=int(d["planned_at_step"]),
            planned_at_s=float(d["planned_at_s"]),
        )

    def end_s(self, eval_every: int) -> float:
        """When this plan ends, by its own estimates."""
        return planned_seconds(
            self.steps,
            done_steps=self.planned_at_step,
            steps_per_epoch=self.steps_per_epoch,
            elapsed_s=self.planned_at_s,
            epoch_s=self.epoch_s,
            eval_s=self.eval_s,
            eval_every=eval_every,
        )


def make_plan(
    budget_s: float,
    clock: str,
    *,
    done_steps: int,
    steps_per_epoch: int,
    elapsed_s: float,
    epoch_s: float,
    eval_s: float,
    eval_every: int,
    at_most: int | None = None,
) -> BudgetPlan:
    steps = plan_steps(
        budget_s,
        done_steps=done_steps,
        steps_per_epoch=steps_per_epoch,
        elapsed_s=elapsed_s,
        epoch_s=epoch_s,
        eval_s=eval_s,
        eval_every=eval_every,
    )
    if at_most is not None:
        steps = min(steps, at_most)
    epochs = -(-steps // max(1, steps_per_epoch))
    return BudgetPlan(budget_s, clock, steps, epochs, steps_per_epoch, epoch_s, eval_s, done_steps, elapsed_s)


def shrink_plan(
    plan: BudgetPlan, *, done_steps: int, elapsed_s: float, epoch_s: float, eval_every: int
) -> BudgetPlan | None:
    """A shorter plan when the run, at `elapsed_s` after `done_steps`, can no longer finish `plan.steps` in time.

    `epoch_s` is the recent cost of an epoch. Returns None when the plan still fits: plans only ever shrink, so a run
    never outgrows the budget it was given.
    """
    if done_steps >= plan.steps:
        return None
    kw = {"steps_per_epoch": plan.steps_per_epoch, "elapsed_s": elapsed_s, "epoch_s": epoch_s, "eval_every": eval_every}
    end = planned_seconds(plan.steps, done_steps=done_steps, eval_s=plan.eval_s, **kw)
    if end <= plan.budget_s * (1.0 - SAFETY_FRACTION / 2):
        return None
    return make_plan(plan.budget_s, plan.clock, done_steps=done_steps, eval_s=plan.eval_s, at_most=plan.steps, **kw)


def grow_plan(
    plan: BudgetPlan, *, done_steps: int, elapsed_s: float, epoch_s: float, eval_every: int
) -> BudgetPlan | None:
    """A longer plan when the run, at `elapsed_s` after `done_steps`, is ahead of `plan`: at `epoch_s` (the mean
    epoch since planning, not the last one, so one fast epoch does not count) the budget holds at least
    `GROW_MIN_FRACTION` more steps. Only while at most `GROW_UNTIL` of the plan is done: a schedule stretched late
    would lift the LR again just as it should settle. Returns None otherwise.
    """
    if done_steps > plan.steps * GROW_UNTIL:
        return None
    new = make_plan(
        plan.budget_s,
        plan.clock,
        done_steps=done_steps,
        steps_per_epoch=plan.steps_per_epoch,
        elapsed_s=elapsed_s,
        epoch_s=epoch_s,
        eval_s=plan.eval_s,
        eval_every=eval_every,
    )
    return new if new.steps >= plan.steps * (1.0 + GROW_MIN_FRACTION) else None


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
        self._paced: list[float] = []  # seconds of each epoch trained since the plan was made (for `grow_plan`)

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

    def epoch_finished(
        self, done_steps: int, steps_per_epoch: int, epoch_s: float, eval_s: float | None
    ) -> BudgetPlan | None:
        """Plan after the first epoch; afterwards shrink the plan if the run fell behind, or grow it if it ran ahead
        in its first half. Returns a new plan or None."""
        elapsed = self.elapsed()
        if self.plan is None:
            if eval_s is None:
                raise ValueError("the first epoch of a budgeted run must be evaluated before planning")
            self.plan = make_plan(
                self.budget_s,
                self.clock.kind,
                done_steps=done_steps,
                steps_per_epoch=steps_per_epoch,
                elapsed_s=elapsed,
                epoch_s=epoch_s,
                eval_s=eval_s,
                eval_every=self.eval_every,
            )
            return self.plan
        if eval_s is not None and eval_s > self.plan.eval_s:
            self.plan.eval_s = eval_s
        self._paced.append(epoch_s)
        kw = {"done_steps": done_steps, "elapsed_s": elapsed, "eval_every": self.eval_every}
        # Behind: shrink at once, at the last epoch's pace (never overrun). Ahead: grow, at the mean pace.
        new = shrink_plan(self.plan, epoch_s=epoch_s, **kw)
        if new is None:
            new = grow_plan(self.plan, epoch_s=sum(self._paced) / len(self._paced), **kw)
        if new is not None:
            self.plan = new
        return new
