"""Training curves: `loss.png` from the per-step log, `ap.png` from the per-evaluation history.

Plots are a convenience; a failure to draw one is logged and never stops a run (the numbers are in
`metrics.jsonl` and `last.pt` anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
AP_KEYS = ("AP", "AP50", "AP75")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: training runs on servers
    import matplotlib.pyplot as plt

    return plt


def _plot_curves(
    rows: Sequence[dict[str, Any]],
    x_key: str,
    keys: Sequence[str],
    path: str | Path,
    *,
    ylabel: str,
    log_y: bool = False,
) -> Path | None:
    """Draw `rows[i][key]` against `rows[i][x_key]` for each of `keys` present; None (and a warning) when drawing
    fails, since a plot must never end a training run."""
    if not rows:
        return None
    try:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = [r[x_key] for r in rows]
        for key in keys:
            if any(key in r for r in rows):
                style = {"lw": 2 if key == "loss" else 1} if log_y else {"marker": "o"}
                ax.plot(xs, [r.get(key, float("nan")) for r in rows], label=key, **style)
        ax.set_xlabel(x_key)
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return Path(path)
    except Exception as err:  # noqa: BLE001
        logger.warning("could not draw %s: %s", path, err)
        return None


def plot_losses(records: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Total and component losses against the optimizer step."""
    rows = [r for r in records if "step" in r and "loss" in r]
    return _plot_curves(rows, "step", [k for k in LOSS_KEYS if rows and k in rows[0]], path, ylabel="loss", log_y=True)


def plot_ap(history: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """COCO AP / AP50 / AP75 on val against the epoch."""
    return _plot_curves([h for h in history if "AP" in h], "epoch", AP_KEYS, path, ylabel="val AP")


def plot_accuracy(history: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Classifier top-1 (and top-5 when there is one) on val against the epoch."""
    return _plot_curves([h for h in history if "top1" in h], "epoch", ("top1", "top5"), path, ylabel="val accuracy")
