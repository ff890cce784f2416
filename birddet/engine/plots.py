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


def plot_losses(records: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Total and component losses against the optimizer step."""
    rows = [r for r in records if "step" in r and "loss" in r]
    if not rows:
        return None
    try:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(7, 4))
        steps = [r["step"] for r in rows]
        for key in LOSS_KEYS:
            if key in rows[0]:
                ax.plot(steps, [r.get(key, float("nan")) for r in rows], label=key, lw=2 if key == "loss" else 1)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return Path(path)
    except Exception as err:  # noqa: BLE001 - a plot must never end a training run
        logger.warning("could not draw %s: %s", path, err)
        return None


def plot_ap(history: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """COCO AP / AP50 / AP75 on val against the epoch."""
    rows = [h for h in history if "AP" in h]
    if not rows:
        return None
    try:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(7, 4))
        epochs = [h["epoch"] for h in rows]
        for key in AP_KEYS:
            ax.plot(epochs, [h.get(key, float("nan")) for h in rows], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("val AP")
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


def plot_accuracy(history: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Classifier top-1 (and top-5 when there is one) on val against the epoch."""
    rows = [h for h in history if "top1" in h]
    if not rows:
        return None
    try:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(7, 4))
        epochs = [h["epoch"] for h in rows]
        for key in ("top1", "top5"):
            if any(key in h for h in rows):
                ax.plot(epochs, [h.get(key, float("nan")) for h in rows], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("val accuracy")
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
