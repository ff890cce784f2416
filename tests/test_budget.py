"""`train.time_budget`: the epoch plan fits the budget, the LR schedule ends with it, resume keeps it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from birddet.engine import budget as B
from birddet.engine.trainer import Trainer, train
from tests.test_trainer import data_dir, read_log, tiny_config  # noqa: F401 - data_dir is a fixture


@pytest.mark.parametrize(
    ("budget_s", "epoch_s", "eval_s", "eval_every"),
    [(600, 50.0, 10.0, 1), (600, 7.3, 4.1, 1), (300, 2.2, 6.0, 4), (3600, 95.0, 31.0, 2), (120, 1.1, 0.4, 1)],
)
def test_plan_fills_the_budget_within_ten_percent(budget_s, epoch_s, eval_s, eval_every):
    elapsed = epoch_s + eval_s  # planned after the first epoch and its evaluation
    epochs = B.plan_epochs(budget_s, done=1, elapsed_s=elapsed, epoch_s=epoch_s, eval_s=eval_s, eval_every=eval_every)
    end = B.planned_seconds(epochs, done=1, elapsed_s=elapsed, epoch_s=epoch_s, eval_s=eval_s, eval_every=eval_every)
    assert 0.9 * budget_s <= end <= budget_s
    # one more epoch would not have fitted
    over = B.planned_seconds(
        epochs + 1, done=1, elapsed_s=elapsed, epoch_s=epoch_s, eval_s=eval_s, eval_every=eval_every
    )
    assert over > budget_s * (1 - B.SAFETY_FRACTION)


def test_plan_worked_example():
    # 10 min, 50 s epochs, 10 s evaluations each epoch: 60 s an epoch; 3 % kept back (582 s) -> 9 epochs (540 s).
    assert B.plan_epochs(600, done=1, elapsed_s=60, epoch_s=50, eval_s=10, eval_every=1) == 9
    # Evaluating every 4th epoch (and the last): 10 epochs end at 60 + 9 * 50 + 3 evaluations (4, 8, 10) = 540 s;
    # 11 would end at 60 + 500 + 3 * 10 (4, 8, 11) = 590 s > 582 s.
    assert B.evals_between(1, 11, 4) == 3
    assert B.plan_epochs(600, done=1, elapsed_s=60, epoch_s=50, eval_s=10, eval_every=4) == 10


def test_a_budget_smaller_than_one_epoch_plans_the_epoch_already_done():
    assert B.plan_epochs(60, done=1, elapsed_s=80, epoch_s=70, eval_s=10) == 1


def test_evals_between_counts_every_nth_and_the_last():
    assert B.evals_between(0, 12, 4) == 3
    assert B.evals_between(0, 10, 4) == 3  # 4, 8, 10
    assert B.evals_between(5, 5, 1) == 0
    assert B.evals_between(2, 7, 1) == 5


def test_shrink_plan_only_when_behind():
    plan = B.BudgetPlan(600.0, "wall", 9, 50.0, 10.0, 1)  # as planned: ends at 540 s
    assert B.shrink_plan(plan, done=3, elapsed_s=180, epoch_s=50, eval_every=1) is None  # on schedule
    slower = B.shrink_plan(plan, done=3, elapsed_s=180, epoch_s=80, eval_every=1)
    assert slower is not None and slower.epochs < 9
    end = B.planned_seconds(slower.epochs, done=3, elapsed_s=180, epoch_s=80, eval_s=10, eval_every=1)
    assert end <= 600


class FakeTime:
    """A clock that advances 1 s per optimizer step and 0.01 s whenever it is read: deterministic budget decisions."""

    def __init__(self) -> None:
        self.now = 0.0

    def read(self) -> float:
        self.now += 0.01
        return self.now

    perf_counter = process_time = property(lambda self: self.read)


def use_fake_time(mp: pytest.MonkeyPatch) -> None:
    fake = FakeTime()
    step = Trainer._optimizer_step

    def timed_step(self):
        fake.now += 1.0
        return step(self)

    mp.setattr(B, "time", fake)
    mp.setattr(Trainer, "_optimizer_step", timed_step)


def budget_config(root: Path, **kw):
    # 8 images / batch 4 = 2 steps an epoch; `epochs` (2) only shapes the first epoch's provisional schedule.
    return tiny_config(root, time_budget=BUDGET_S / 60, epochs=2, warmup_iters=0, **kw)


#: Fake seconds: an epoch (two steps) costs about 2 s, so 4 epochs fit.
BUDGET_S = 9.0


def lr_at_end(run: Path) -> float:
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    return ckpt["training"]["scheduler"]["_last_lr"][-1]


def plans_in(run: Path) -> list[dict]:
    return [r["budget_plan"] for r in read_log(run) if "budget_plan" in r]


@pytest.fixture(scope="module")
def budget_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # noqa: F811
    with pytest.MonkeyPatch.context() as mp:
        use_fake_time(mp)
        run = tmp_path_factory.mktemp("budget") / "run"
        return run, train(budget_config(data_dir), run)


def test_budgeted_run_trains_the_planned_epochs_inside_the_budget(budget_run):
    run, summary = budget_run
    plans = plans_in(run)
    assert len(plans) == 1 and plans[0]["planned_at_epoch"] == 1
    plan = plans[0]
    assert plan["epochs"] > 2  # the budget, not train.epochs=2, set the length
    kw = {"done": 1, "elapsed_s": plan["planned_at_s"], "epoch_s": plan["epoch_s"], "eval_s": plan["eval_s"]}
    limit = BUDGET_S * (1 - B.SAFETY_FRACTION)
    assert (
        B.planned_seconds(plan["epochs"], eval_every=1, **kw)
        <= limit
        < B.planned_seconds(plan["epochs"] + 1, eval_every=1, **kw)
    )
    assert summary["epochs"] == plan["epochs"] and summary["steps"] == 2 * plan["epochs"]
    training = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["training"]
    assert plan["planned_at_s"] < training["budget"]["elapsed_s"] <= BUDGET_S
    assert training["budget"]["plan"] == plan
    # The cosine was laid over the planned steps: it reached its end (LR 0) at the last step, not at step 4.
    assert lr_at_end(run) == pytest.approx(0.0, abs=1e-9)
    lrs = [r["lr"] for r in read_log(run) if "lr" in r]
    assert len(lrs) == 2 * plan["epochs"] and lrs[3] > 0.3e-3  # a 2-epoch cosine is at ~1e-5 by step 4
    assert (run / "best.pt").is_file() and len(summary["history"]) == plan["epochs"]


def test_resume_with_a_budget_continues_the_same_plan(budget_run, data_dir, tmp_path, monkeypatch):  # noqa: F811
    whole, _ = budget_run
    use_fake_time(monkeypatch)
    part = tmp_path / "part"
    train(budget_config(data_dir, max_steps=4), part)  # stops after epoch 2 of the plan
    first = plans_in(part)
    assert first == plans_in(whole)
    use_fake_time(monkeypatch)
    summary = train(budget_config(data_dir), part, resume=True)
    assert plans_in(part) == first  # no new plan: the resumed run follows the one it had
    assert summary["epochs"] == first[0]["epochs"]
    # Same schedule as the uninterrupted run: identical LRs step by step, ending at 0.
    lr_whole = {r["step"]: r["lr"] for r in read_log(whole) if "lr" in r}
    lr_part = {r["step"]: r["lr"] for r in read_log(part) if "lr" in r}
    assert lr_part.keys() == lr_whole.keys()
    assert all(math.isclose(lr_part[k], lr_whole[k], rel_tol=1e-12) for k in lr_whole)
    assert lr_at_end(part) == pytest.approx(0.0, abs=1e-9)


def test_non_positive_budget_is_refused(data_dir, tmp_path):  # noqa: F811
    from birddet.errors import InputError

    with pytest.raises(InputError, match="time_budget"):
        train(tiny_config(data_dir, time_budget=0.0), tmp_path / "run")
