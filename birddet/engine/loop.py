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

The loop's parts live apart: the `Task` protocol and the data plumbing tasks share in `engine/task.py`, the run's
state between processes (`last.pt`, RNG, `--resume`, the one-run-per-folder rule) in `engine/run_state.py`, the
time-budget glue in `engine/loop_budget.py`; the `train()` entry point of the detector is `engine/trainer.py`.

`train.max_steps` stops early (a smoke test, a benchmark) without changing the LR schedule, which always spans
`train.epochs`; a run stopped that way resumes mid-epoch from the batch it stopped at. Such a stop is a pause, not
the end of the run, so it adds no evaluation of its own: evaluations happen where an uninterrupted run has them (every
`train.eval_every`-th epoch end and the end of training), and a resumed run ends with the same `best.pt`. Only a run
paused before its first evaluation is evaluated at the pause, so that its folder has a `best.pt`; that `best.pt` is a
stand-in (`best_provisional` in `last.pt`) which the run's next evaluation replaces whatever its score.

`train.time_budget` (minutes) replaces `train.epochs` by a planned number of steps after the first epoch (see
`birddet/engine/budget.py` and `engine/loop_budget.py`; the last epoch may end part-way); the plan is a
`budget_plan` line in `metrics.jsonl` and part of `last.pt`, so a resumed run follows it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from birddet.config import save_config
from birddet.engine import distributed as D
from birddet.engine.budget import BudgetKeeper
from birddet.engine.loop_budget import TimeBudgetMixin
from birddet.engine.optim import build_scheduler, ramped_ema
from birddet.engine.run_state import LAST, METRICS_LOG, RunState, RunStateMixin, seed_everything
from birddet.engine.task import SeededDataset, Task, steps_per_epoch
from birddet.errors import InputError, RunStopped
from birddet.fileio import append_text, atomic_write_text
from birddet.runlock import run_lock

logger = logging.getLogger(__name__)


class NonFiniteLossError(RunStopped):
    """The loss became NaN or infinite: the run stops, keeping the last good `last.pt`.

    An `InputError` because the fix is in the config (a lower `train.lr`, `train.grad_clip`, fp32 instead of fp16),
    so the CLI reports it on one line (exit code 2) instead of a traceback.
    """


# -- the loop --------------------------------------------------------------------------------------------------------
class Trainer(RunStateMixin, TimeBudgetMixin):
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
            AveragedModel(self.net, multi_avg_fn=ramped_ema(t.ema_decay, t.ema_tau), use_buffers=True)
            if t.ema
            else None
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
