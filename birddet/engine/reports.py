"""Turn an `EvalResult` into what people read: a console table, `metrics.json`, `per_class.csv` and plots.

`metrics.json` is the machine-readable record (`{"stats": {AP, AP50, ...}, "per_class": [...]}`, docs/evaluation.md) and
is written first and atomically; plots are a convenience, so a failure to draw one is logged and never loses the
numbers.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from birddet.engine.evaluator import DEFAULT_MAX_DETS, STAT_NAMES, EvalResult
from birddet.fileio import atomic_write_csv, atomic_write_text

logger = logging.getLogger(__name__)

PER_CLASS_FIELDS = ("category_id", "name", "num_gt", "AP", "AP50", "AR100")
STAT_LABELS = {
    "AP": "AP @[IoU=0.50:0.95 | area=all]",
    "AP50": "AP @[IoU=0.50 | area=all]",
    "AP75": "AP @[IoU=0.75 | area=all]",
    "APs": "AP @[IoU=0.50:0.95 | area=small]",
    "APm": "AP @[IoU=0.50:0.95 | area=medium]",
    "APl": "AP @[IoU=0.50:0.95 | area=large]",
    "AR1": "AR @[IoU=0.50:0.95 | maxDets=1]",
    "AR10": "AR @[IoU=0.50:0.95 | maxDets=10]",
    "AR100": "AR @[IoU=0.50:0.95 | maxDets=100]",
    "ARs": "AR @[IoU=0.50:0.95 | area=small]",
    "ARm": "AR @[IoU=0.50:0.95 | area=medium]",
    "ARl": "AR @[IoU=0.50:0.95 | area=large]",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: scoring runs on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def _fmt(value: float) -> str:
    # -1 is pycocotools' "no ground truth in this slice", not a score; show it as such
    return "  n/a" if value < 0 else f"{value:.3f}"


def format_table(result: EvalResult) -> str:
    """The 12 COCO numbers and, when present, one row per class; for the console."""
    lines = [f"{name:>6}  {_fmt(result.stats[name])}  {STAT_LABELS[name]}" for name in STAT_NAMES]
    if result.per_class:
        width = max(8, *(len(str(r["name"])) for r in result.per_class))
        lines += ["", f"{'id':>5}  {'class':<{width}}  {'num_gt':>6}  {'AP':>5}  {'AP50':>5}  {'AR100':>5}"]
        for r in result.per_class:
            lines.append(
                f"{r['category_id']:>5}  {str(r['name']):<{width}}  {r['num_gt']:>6}  "
                f"{_fmt(r['AP']):>5}  {_fmt(r['AP50']):>5}  {_fmt(r['AR100']):>5}"
            )
        lines.append("(n/a: no ground truth for that class or area, pycocotools' -1)")
    return "\n".join(lines)


def metrics_dict(result: EvalResult) -> dict[str, Any]:
    """`{"stats": {...}, "max_dets": [1, 10, N], "per_class": [...]}` with plain Python numbers.

    `max_dets` is pycocotools' `maxDets` the numbers were computed with: with N > 100 (dense scenes) the stat
    named `AR100` is AR at N detections per image and every AP counts N boxes per image, as `summarize()` would.
    """
    ev = result.coco_eval
    return {
        "stats": {name: float(result.stats[name]) for name in STAT_NAMES},
        "max_dets": [int(m) for m in (ev.params.maxDets if ev is not None else DEFAULT_MAX_DETS)],
        "per_class": [
            {k: (float(r[k]) if k in ("AP", "AP50", "AR100") else r[k]) for k in PER_CLASS_FIELDS}
            for r in result.per_class
        ],
    }


INPUTS_NAME = "eval_inputs.json"


def write_eval_inputs(out_dir: str | Path, *, ann: str | Path, images: str | Path, **models: Any) -> Path:
    """`eval_inputs.json`: the absolute paths of the ground truth and image root an eval ran on (and its models),
    so that `birddet report` can draw each image's ground truth next to its `results.json` without being told."""
    data = {
        "ann": str(Path(ann).resolve()),
        "images": str(Path(images).resolve()),
        **{k: (None if v is None else str(v)) for k, v in models.items()},
    }
    return atomic_write_text(Path(out_dir) / INPUTS_NAME, json.dumps(data, indent=2) + "\n")


def write_metrics_json(result: EvalResult, path: str | Path) -> Path:
    """Write `metrics.json` atomically (temp file + `os.replace`)."""
    return atomic_write_text(path, json.dumps(metrics_dict(result), indent=2) + "\n")


def write_per_class_csv(result: EvalResult, path: str | Path) -> Path:
    """One row per class: `category_id, name, num_gt, AP, AP50, AR100` (-1 = no ground truth).

    A class name a spreadsheet would run as a formula (`=...`, `+...`, `-...`, `@...`) gets a leading `'`.
    """
    rows = [PER_CLASS_FIELDS, *([r[k] for k in PER_CLASS_FIELDS] for r in result.per_class)]
    return atomic_write_csv(path, rows, lineterminator="\n")


# -- precision/recall curves ----------------------------------------------------------------------------------------
def _mean_valid(s: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Mean over `axes` of entries > -1 (pycocotools' convention), NaN where none are valid."""
    valid = s > -1
    total = np.where(valid, s, 0.0).sum(axis=axes)
    count = valid.sum(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _pr_slices(result: EvalResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(recall thresholds, precision [T,R,K] at area "all" and the largest maxDets, IoU thresholds)`."""
    ev = result.coco_eval
    assert ev is not None
    p = ev.params
    area = p.areaRngLbl.index("all") if "all" in p.areaRngLbl else 0
    precision = ev.eval["precision"][:, :, :, area, len(p.maxDets) - 1]
    return np.asarray(p.recThrs), precision, np.asarray(p.iouThrs)


def plot_pr_curves(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """`pr_curve.png` (all classes: IoU 0.5 and the 0.5:0.95 mean) and `pr_curves_per_class.png` (a grid).

    Curves are pycocotools' interpolated precision at its 101 recall thresholds (area all, largest maxDets), i.e.
    the very numbers AP averages; classes without ground truth (-1) are left out of the means.
    """
    if result.coco_eval is None or not result.coco_eval.eval:
        return []
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec, precision, iou_thrs = _pr_slices(result)
    t50 = np.where(np.isclose(iou_thrs, 0.5))[0]
    written = []

    fig, ax = plt.subplots(figsize=(6, 5))
    if t50.size:
        ax.plot(rec, _mean_valid(precision[t50[0]], (1,)), label=f"IoU 0.50 (AP50 {_fmt(result.stats['AP50'])})")
    ax.plot(rec, _mean_valid(precision, (0, 2)), label=f"IoU 0.50:0.95 mean (AP {_fmt(result.stats['AP'])})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall, all classes")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    written.append(out / "pr_curve.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    cats = list(result.coco_eval.params.catIds)
    names = {r["category_id"]: str(r["name"]) for r in result.per_class}
    if cats:
        cols = min(4, len(cats))
        rows = math.ceil(len(cats) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, sharex=True, sharey=True)
        for k, cat_id in enumerate(cats):
            ax = axes[k // cols][k % cols]
            s = precision[:, :, k]
            if (s > -1).any():
                if t50.size:
                    ax.plot(rec, np.where(s[t50[0]] > -1, s[t50[0]], np.nan), label="IoU .50")
                ax.plot(rec, _mean_valid(s, (0,)), label="IoU .50:.95")
            else:
                ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(names.get(cat_id, str(cat_id)), fontsize=9)
            ax.set(xlim=(0, 1), ylim=(0, 1.02))
            ax.grid(alpha=0.3)
        for k in range(len(cats), rows * cols):
            axes[k // cols][k % cols].axis("off")
        axes[0][0].legend(fontsize=7, loc="lower left")
        fig.supxlabel("recall")
        fig.supylabel("precision")
        fig.tight_layout()
        written.append(out / "pr_curves_per_class.png")
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)
    return written


# -- confusion matrix -----------------------------------------------------------------------------------------------
def _intersections(dets: Any, gts: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(intersection [D,G], detection areas [D], ground-truth areas [G])` of xywh boxes."""
    d = np.asarray(dets, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(gts, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(d[:, None, 0], g[None, :, 0])
    y1 = np.maximum(d[:, None, 1], g[None, :, 1])
    x2 = np.minimum(d[:, None, 0] + d[:, None, 2], g[None, :, 0] + g[None, :, 2])
    y2 = np.minimum(d[:, None, 1] + d[:, None, 3], g[None, :, 1] + g[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter, d[:, 2] * d[:, 3], g[:, 2] * g[:, 3]


def _iou_matrix(dets: Any, gts: Any) -> np.ndarray:
    """IoU of detections against non-crowd ground truth."""
    inter, da, ga = _intersections(dets, gts)
    union = da[:, None] + ga[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _ioa_matrix(dets: Any, crowds: Any) -> np.ndarray:
    """Intersection over the detection's own area: what pycocotools uses as IoU against an `iscrowd` region."""
    inter, da, _ = _intersections(dets, crowds)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(da[:, None] > 0, inter / da[:, None], 0.0)


def confusion_matrix(
    coco_gt: Any, results: Sequence[dict[str, Any]], *, score_threshold: float = 0.5, iou_threshold: float = 0.5
) -> tuple[np.ndarray, list[int]]:
    """Detection confusion matrix `[K+1, K+1]`: rows are ground-truth classes, columns predicted classes; the last
    row/column is background (last row: false positives, last column: missed ground truth).

    Per image, detections above `score_threshold` are taken in descending score and each claims the unclaimed
    non-crowd ground-truth box (of any class, so class mix-ups show) with the highest IoU >= `iou_threshold`.
    A detection that matches nothing but lies inside an `iscrowd` region is not counted, as pycocotools ignores it.
    """
    cat_ids = sorted(coco_gt.getCatIds())
    index = {c: i for i, c in enumerate(cat_ids)}
    bg = len(cat_ids)
    matrix = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r["score"] >= score_threshold and r["category_id"] in index:
            by_image[r["image_id"]].append(r)
    for image_id in coco_gt.getImgIds():
        anns = coco_gt.imgToAnns.get(image_id, [])
        gts = [a for a in anns if not a.get("iscrowd", 0) and a["category_id"] in index]
        crowds = [a for a in anns if a.get("iscrowd", 0)]
        dets = sorted(by_image.get(image_id, []), key=lambda r: -r["score"])
        claimed = np.zeros(len(gts), dtype=bool)
        iou = _iou_matrix([d["bbox"] for d in dets], [g["bbox"] for g in gts]) if dets and gts else None
        ioa = _ioa_matrix([d["bbox"] for d in dets], [c["bbox"] for c in crowds]) if dets and crowds else None
        for i, det in enumerate(dets):
            col = index[det["category_id"]]
            if iou is not None:
                cand = np.where(claimed, -1.0, iou[i])
                j = int(np.argmax(cand))
                if cand[j] >= iou_threshold:
                    claimed[j] = True
                    matrix[index[gts[j]["category_id"]], col] += 1
                    continue
            if ioa is not None and ioa[i].max() >= iou_threshold:
                continue
            matrix[bg, col] += 1
        for j, g in enumerate(gts):
            if not claimed[j]:
                matrix[index[g["category_id"]], bg] += 1
    return matrix, cat_ids


def plot_confusion_matrix(
    coco_gt: Any,
    results: Sequence[dict[str, Any]],
    out_path: str | Path,
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
) -> Path:
    """Draw `confusion_matrix(...)` as a heat map with counts; see there for the matching rule."""
    matrix, cat_ids = confusion_matrix(coco_gt, results, score_threshold=score_threshold, iou_threshold=iou_threshold)
    names = [str(coco_gt.cats[c].get("name", c)) for c in cat_ids] + ["background"]
    title = f"Confusion (score >= {score_threshold:g}, IoU >= {iou_threshold:g})"
    return _plot_count_matrix(matrix, names, out_path, ylabel="ground truth", title=title)


def _plot_count_matrix(
    matrix: np.ndarray, names: Sequence[str], out_path: str | Path, *, ylabel: str, title: str
) -> Path:
    """A count matrix as a log-scaled heat map with its numbers (rows `ylabel`, columns predicted)."""
    plt = _pyplot()
    n = len(names)
    size = min(4 + 0.45 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set(xlabel="predicted", ylabel=ylabel)
    ax.set_title(title)
    if n <= 40:  # counts stop being legible beyond this
        dark = np.log1p(matrix) > np.log1p(matrix.max()) * 0.6  # same log scale as the colours
        for (r, c), v in np.ndenumerate(matrix):
            if v:
                ax.text(c, r, str(v), ha="center", va="center", fontsize=7, color="white" if dark[r, c] else "black")
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_report(
    result: EvalResult,
    out_dir: str | Path,
    *,
    coco_gt: Any,
    results: Sequence[dict[str, Any]],
    plots: bool = True,
    metrics_path: str | Path | None = None,
    score_threshold: float = 0.5,
) -> dict[str, Path]:
    """Write `metrics.json` (or `metrics_path`), `per_class.csv` and, with `plots`, the PR curves and confusion
    matrix into `out_dir`; returns `{name: path}` of what was written. Numbers first: a plot failure only logs."""
    out = Path(out_dir)
    written = {
        "metrics": write_metrics_json(result, metrics_path if metrics_path is not None else out / "metrics.json"),
        "per_class": write_per_class_csv(result, out / "per_class.csv"),
    }
    if plots:
        try:
            for path in plot_pr_curves(result, out):
                written[path.stem] = path
            written["confusion_matrix"] = plot_confusion_matrix(
                coco_gt, results, out / "confusion_matrix.png", score_threshold=score_threshold
            )
        except Exception:  # a report without a plot beats no report; the numbers are on disk already
            logger.exception("could not draw the evaluation plots in %s", out)
    return written


# -- species classifier ---------------------------------------------------------------------------------------------
def classifier_metrics(
    labels: Sequence[int], topk: Sequence[Sequence[int]], class_names: Sequence[str]
) -> dict[str, Any]:
    """A classifier run's `metrics.json`: `top1`, `top5` (more than 5 classes only), `per_class` accuracy and the
    confusion matrix (rows: true class, columns: predicted class, `class_names` order).

    `topk[i]` lists sample `i`'s predicted class indices, best first (at least one).
    """
    n = len(class_names)
    matrix = np.zeros((n, n), dtype=np.int64)
    top5_hits = 0
    for label, preds in zip(labels, topk, strict=True):
        matrix[int(label), int(preds[0])] += 1
        top5_hits += int(int(label) in [int(p) for p in preds[:5]])
    total = int(matrix.sum())
    counts = matrix.sum(axis=1)
    out: dict[str, Any] = {"top1": float(np.trace(matrix) / total) if total else 0.0, "num_samples": total}
    if n > 5:
        out["top5"] = top5_hits / total if total else 0.0
    out["per_class"] = [
        {
            "class_index": i,
            "name": str(class_names[i]),
            "count": int(counts[i]),
            "accuracy": float(matrix[i, i] / counts[i]) if counts[i] else -1.0,
        }
        for i in range(n)
    ]
    out["confusion_matrix"] = {"classes": [str(c) for c in class_names], "counts": matrix.tolist()}
    return out


def plot_class_confusion(metrics: dict[str, Any], out_path: str | Path, *, title: str = "Classifier confusion") -> Path:
    """Heat map of `classifier_metrics(...)["confusion_matrix"]` with counts (rows true, columns predicted)."""
    names = metrics["confusion_matrix"]["classes"]
    matrix = np.asarray(metrics["confusion_matrix"]["counts"], dtype=np.int64)
    return _plot_count_matrix(
        matrix, names, out_path, ylabel="true class", title=f"{title} (top-1 {metrics['top1']:.3f})"
    )
