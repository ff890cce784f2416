"""`birddet train`'s entry point: the detector as a task on the shared training loop.

`train()` runs a `DetectionTask` (`engine/detection.py`) on the loop (`engine/loop.py`, whose docstring says what
a run folder holds and how a run is paused, resumed and budgeted); `run_training()` runs any task. The loop's parts
are modules of their own, below this one and below the tasks: `engine/task.py` (the `Task` protocol, seeded data),
`engine/run_state.py` (`last.pt`, RNG, `--resume`) and `engine/loop_budget.py` (`train.time_budget`). The names
that tests and users import from here (`Trainer`, `run_training`, `NonFiniteLossError`, `SeededDataset`, `Task`)
are re-exported from them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from birddet.engine import distributed as D
from birddet.engine.detection import DetectionTask
from birddet.engine.loop import NonFiniteLossError, Trainer, run_training  # re-exported: the loop's public names
from birddet.engine.task import SeededDataset, Task  # re-exported: tests and tasks outside birddet import them here

__all__ = ["NonFiniteLossError", "SeededDataset", "Task", "Trainer", "run_training", "train"]

logger = logging.getLogger(__name__)


def train(cfg: Any, out_dir: Path, *, resume: bool = False) -> dict[str, Any]:
    """Train the detector described by `cfg` into `out_dir` (see the module docstring); returns a summary.

    Under `torchrun` every rank calls this; rank 0 writes the files and the summary is the same on every rank.
    """
    ctx = D.init_distributed(cfg.train.device)
    summary = run_training(DetectionTask(cfg, ctx), Path(out_dir), resume=resume)
    if ctx.is_main:
        logger.info("best val AP %.4f at epoch %d; run folder %s", summary["best_ap"], summary["best_epoch"], out_dir)
    return summary
