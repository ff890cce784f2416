"""The loop's side of `train.time_budget`: the `Trainer` methods that apply `engine/budget.py`'s decisions.

`engine/budget.py` decides (how many steps fit, when a plan shrinks or grows) from numbers alone; these methods
apply its answers to a running `Trainer`: whether to stop, whether to evaluate now, and following a plan (the
planned epochs and steps, and the LR schedule laid over them). They are apart from both so that the planner stays
pure and the loop (`engine/loop.py`) stays readable; every decision is broadcast from rank 0, so all ranks stop
and evaluate together.
"""

from __future__ import annotations

import logging

from birddet.engine import distributed as D
from birddet.engine.budget import BudgetPlan
from birddet.engine.optim import resize_schedule
from birddet.engine.task import steps_per_epoch

logger = logging.getLogger(__name__)


class TimeBudgetMixin:
    """A mixin of `engine/loop.py`'s `Trainer`, whose attributes it uses (`budget`, `state`, `cfg`, `epochs`,
    `total_steps`, `scheduler`, `batches_per_epoch`, and its `evaluate` and `_log`)."""

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
