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
    ("budget_s", "spe", "epoch_s", "eval_s", "eval_every"),
    [
        (600, 28, 50.0, 10.0, 1),
        (600, 10, 7.3, 4.1, 1),
        (300, 3, 2.2, 6.0, 4),
        (3600, 500, 95.0, 31.0, 2),
        (120, 28, 60.0, 4.5, 2),  # big photos, short budget: the first epoch is half of it
        (120, 1, 1.1, 0.4, 1),
    ],
)
def test_plan_fills_the_budget_within_ten_percent(budget_s, spe, epoch_s, eval_s, eval_every):
    elapsed = epoch_s + eval_s  # planned after the first epoch and its evaluation
    kw = {"done_steps": spe, "steps_per_epoch": spe, "elapsed_s": elapsed, "epoch_s": epoch_s, "eval_s": eval_s}
    steps = B.plan_steps(budget_s, eval_every=eval_every, **kw)
    end = B.planned_seconds(steps, eval_every=eval_every, **kw)
    assert 0.9 * budget_s <= end <= budget_s
    # one more step would not have fitted
    assert B.planned_seconds(steps + 1, eval_every=eval_every, **kw) > budget_s * (1 - B.SAFETY_FRACTION)


def test_plan_worked_example():
    # 10 min, 10-step epochs of 50 s (5 s a step), 10 s evaluations after each epoch; 3 % kept back (582 s); planned
    # at 60 s after epoch 1. 96 steps: 86 more steps (430 s) and 9 evaluations (after epochs 2-9 and at the end,
    # part-way through epoch 10: 90 s) end at 580 s; a 97th step would end at 585 s.
    kw = {"done_steps": 10, "steps_per_epoch": 10, "elapsed_s": 60, "epoch_s": 50, "eval_s": 10}
    assert B.plan_steps(600, eval_every=1, **kw) == 96
    assert B.planned_seconds(96, eval_every=1, **kw) == pytest.approx(580)
    # Evaluating every 4th epoch (and at the end): fewer evaluations leave room for more steps.
    assert B.evals_for(10, 110, 10, 4) == 3  # after epochs 4 and 8, and at the end (epoch 11)
    assert B.plan_steps(600, eval_every=4, **kw) > 96


def test_a_budget_smaller_than_one_epoch_plans_the_steps_already_done():
    assert B.plan_steps(60, done_steps=7, steps_per_epoch=7, elapsed_s=80, epoch_s=70, eval_s=10) == 7


def test_evals_for_counts_every_nth_epoch_and_the_end():
    assert B.evals_for(0, 120, 10, 4) == 3  # epochs 4, 8, 12 (the end)
    assert B.evals_for(0, 100, 10, 4) == 3  # 4, 8, and the end at epoch 10
    assert B.evals_for(0, 95, 10, 1) == 10  # 9 epoch ends and the end part-way through epoch 10
    assert B.evals_for(50, 50, 10, 1) == 0


def test_shrink_plan_only_when_behind():
    plan = B.make_plan(600.0, "wall", done_steps=10, steps_per_epoch=10, elapsed_s=60, epoch_s=50, eval_s=10,
                       eval_every=1)  # fmt: skip
    assert plan.steps == 96 and plan.epochs == 10
    on_time = B.shrink_plan(plan, done_steps=30, elapsed_s=180, epoch_s=50, eval_every=1)
    assert on_time is None
    slower = B.shrink_plan(plan, done_steps=30, elapsed_s=180, epoch_s=80, eval_every=1)
    assert slower is not None and slower.steps < 96 and slower.planned_at_step == 30
    kw = {"done_steps": 30, "steps_per_epoch": 10, "elapsed_s": 180, "epoch_s": 80, "eval_s": 10, "eval_every": 1}
    assert B.planned_seconds(slower.steps, **kw) <= 600


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


def test_budgeted_run_trains_the_planned_steps_inside_the_budget(budget_run):
    run, summary = budget_run
    plans = plans_in(run)
    assert len(plans) == 1 and plans[0]["planned_at_step"] == 2
    plan = B.BudgetPlan.from_dict(plans[0])
    assert plan.steps > 4 and plan.epochs == -(-plan.steps // 2)  # the budget, not train.epochs=2, set the length
    assert 0.9 * BUDGET_S <= plan.end_s(eval_every=1) <= BUDGET_S
    assert summary["steps"] == plan.steps
    training = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["training"]
    assert plan.planned_at_s < training["budget"]["elapsed_s"] <= BUDGET_S
    assert training["budget"]["plan"] == plans[0]
    # The cosine was laid over the planned steps: it reached its end (LR 0) at the last step, not at step 4.
    assert lr_at_end(run) == pytest.approx(0.0, abs=1e-9)
    lrs = [r["lr"] for r in read_log(run) if "lr" in r]
    assert len(lrs) == plan.steps and lrs[3] > 0.3e-3  # a 2-epoch cosine is at ~1e-5 by step 4
    assert (run / "best.pt").is_file() and summary["history"][-1]["step"] == plan.steps


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
    assert summary["steps"] == first[0]["steps"]
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


def test_from_scratch_config_trains_photos_inside_a_budget(tmp_path):
    """The shipped recipe as a user runs it (only the budget and the heavy parts shrunk): photos of every shape, the
    image cache filled, a plan made and kept, `best.pt` written, and the whole run inside its budget.

    The budget counts this process's CPU time (`train.budget_clock=cpu`) and so does the check: wall time on a shared
    CI machine says how busy the machine was, not whether the run kept to its plan."""
    import json
    import time

    from birddet.config import load_config
    from birddet.data.synthetic import make_synthetic_coco

    photos = make_synthetic_coco(
        tmp_path / "photos",
        num_train=8,
        num_val=4,
        preset="realistic",
        image_size=(320, 480),
        aspect_ratios=(16 / 9, 3 / 4, 2.0),
        exif_fraction=0.5,
        seed=2,
    )
    cfg = load_config(
        Path(__file__).parents[1] / "configs" / "from_scratch.yaml",
        [
            f"data.train.ann={photos['train']}", f"data.train.images={photos['images']}",
            f"data.val.ann={photos['val']}", f"data.val.images={photos['images']}",
            "model.backbone.preset=vit_reg4_tiny16_rms_avg", "model.image_size=128", "train.batch_size=4",
            "data.workers=0", "train.device=cpu", "train.time_budget=0.25", "train.budget_clock=cpu",
            "train.log_every=1",
        ],
    )  # fmt: skip
    assert cfg.data.cache_images and cfg.model.backbone.weights is None and cfg.data.augment.mosaic == 0
    start = time.process_time()  # all threads of this process: the image cache's decoders too
    train(cfg, tmp_path / "run")
    assert time.process_time() - start <= 0.25 * 60 * 1.1  # build, cache fill, training, evaluations, files
    plans = [r["budget_plan"] for r in read_log(tmp_path / "run") if "budget_plan" in r]
    assert plans and plans[0]["steps"] >= plans[0]["steps_per_epoch"]  # more than the measured first epoch
    stats = json.loads((tmp_path / "run" / "metrics.json").read_text())["stats"]
    assert (tmp_path / "run" / "best.pt").is_file() and set(stats) >= {"AP", "AP50"}


def test_grow_plan_only_when_ahead_in_the_first_half():
    plan = B.make_plan(600.0, "wall", done_steps=10, steps_per_epoch=10, elapsed_s=60, epoch_s=50, eval_s=10,
                       eval_every=1)  # fmt: skip
    assert plan.steps == 96
    # Epochs 2-3 took 40 s instead of 50: at that pace the rest of the budget holds more steps.
    ahead = B.grow_plan(plan, done_steps=30, elapsed_s=160, epoch_s=40, eval_every=1)
    assert ahead is not None and ahead.steps > 96 * 1.05 and ahead.planned_at_step == 30
    kw = {"done_steps": 30, "steps_per_epoch": 10, "elapsed_s": 160, "epoch_s": 40, "eval_s": 10, "eval_every": 1}
    assert 0.9 * 600 <= B.planned_seconds(ahead.steps, **kw) <= 600
    assert B.grow_plan(plan, done_steps=30, elapsed_s=178, epoch_s=49, eval_every=1) is None  # within 5 %
    assert B.grow_plan(plan, done_steps=60, elapsed_s=300, epoch_s=30, eval_every=1) is None  # past half: keep the tail


def _simulate(epoch_times: list[float], *, budget_s: float, spe: int, eval_s: float, eval_every: int) -> float:
    """Drive a `BudgetKeeper` as the training loop does, with epochs of the given durations (the last one repeats);
    returns the seconds the run took, its final evaluation included."""
    clock = {"now": 0.0}
    keeper = B.BudgetKeeper(budget_s / 60, eval_every=eval_every)
    keeper.clock = B.BudgetClock("wall")
    keeper.clock.elapsed = lambda: clock["now"]  # type: ignore[method-assign]
    step, epoch = 0, 0
    while True:
        pace = epoch_times[min(epoch, len(epoch_times) - 1)] / spe
        for _ in range(spe):
            if keeper.plan is not None and step >= keeper.plan.steps or keeper.out_of_time():
                return clock["now"] + eval_s
            clock["now"] += pace
            step += 1
        epoch += 1
        evaluated = epoch == 1 or epoch % eval_every == 0
        if evaluated:
            clock["now"] += eval_s
        keeper.epoch_finished(
            step, spe, epoch_times[min(epoch - 1, len(epoch_times) - 1)], eval_s if evaluated else None
        )


def test_slow_early_epochs_do_not_leave_the_budget_unused():
    # A measured CPU run (from_scratch.yaml, 10 min): epoch 1 took 16.0 s, epochs 2-3 16.9 and 17.7 s (the plan shrank
    # twice), the rest about 14 s. Shrinking alone ended it at 82 % of the budget; growing back in the first half
    # uses it.
    used = _simulate([16.0, 16.9, 17.7, 14.0], budget_s=600, spe=28, eval_s=2.4, eval_every=4)
    assert 0.9 * 600 <= used <= 600
    # A run that keeps getting slower is never over budget.
    assert _simulate([16.0, 18.0, 20.0, 24.0, 30.0], budget_s=600, spe=28, eval_s=2.4, eval_every=4) <= 600
