"""COCO box evaluation: pycocotools' numbers, with input checked first so bad files fail with a readable message.

pycocotools is the reference everyone compares against, so the metric itself is never reimplemented here: we build
the ground-truth and detection `COCO` objects, run `COCOeval(gt, dt, "bbox")` with `evaluate(); accumulate();
summarize()`, and read its arrays. What this module adds is what pycocotools lacks:

- validation with messages that name the file, the offending ids and the fix (pycocotools asserts, raises
  `KeyError`, or silently ignores unknown ids): reading and checking the inputs live in
  `birddet.engine.coco_inputs` (`load_ground_truth`, `load_results`, re-exported here) and
  `birddet.engine.coco_checks`, so this module is the pycocotools glue and the summarising only;
- no console chatter (pycocotools prints from `COCO()`, `loadRes`, `evaluate`, `accumulate` and `summarize`);
- empty results (pycocotools' `loadRes([])` crashes on `anns[0]`) scored as zero recall and precision;
- per-class AP/AP50/AR100 averaged exactly as pycocotools' own `_summarize` averages (entries > -1);
- non-default `max_dets`: `summarize()` hardcodes `maxDets[0..2]` and the stat layout, so we compute the same 12
  numbers with the same semantics over the given values (see `_summarize_stats`).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from birddet.engine.coco_checks import _checked_columns, _Columns, _quiet_index
from birddet.engine.coco_inputs import load_ground_truth, load_results  # noqa: F401 (re-exported: tests and benchmarks use them)
from birddet.errors import InputError

logger = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
DEFAULT_MAX_DETS = (1, 10, 100)


@dataclass
class EvalResult:
    """What one evaluation produced.

    `stats` maps `STAT_NAMES` to pycocotools' `COCOeval.stats` values (-1 where pycocotools gives -1: no ground
    truth in that slice). `per_class` rows are `{category_id, name, num_gt, AP, AP50, AR100}` in pycocotools'
    category order (sorted ids); `num_gt` counts non-crowd, non-ignored boxes. `coco_eval` keeps the evaluated
    `COCOeval` (its `eval["precision"]` / `["recall"]` feed the PR plots).
    """

    stats: dict[str, float]
    per_class: list[dict[str, Any]] = field(default_factory=list)
    coco_eval: COCOeval | None = None


# -- detections -----------------------------------------------------------------------------------------------------
def _detections(coco_gt: COCO, dets: _Columns) -> COCO:
    """The detection `COCO` object that `coco_gt.loadRes(results)` would build for boxes, built quietly.

    Same content as `loadRes` for box results: the GT's images and categories, `area = w * h`, `id = index + 1`
    (pycocotools breaks score ties by this order), `iscrowd = 0`. We skip `loadRes` because it crashes on an empty
    list, prints, and writes `segmentation`/`area`/`id` into the caller's dicts; box IoU never reads `segmentation`.
    """
    anns = [
        {"image_id": i, "category_id": c, "bbox": b, "score": s, "area": a, "id": k, "iscrowd": 0}
        for k, (i, c, b, s, a) in enumerate(
            zip(dets.image_ids, dets.category_ids, dets.bboxes, dets.scores, dets.areas), start=1
        )
    ]
    dataset = {
        "info": coco_gt.dataset.get("info", {}),
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": anns,
    }
    return _quiet_index(dataset)


# -- evaluation -----------------------------------------------------------------------------------------------------
def _summarize_one(
    coco_eval: COCOeval,
    ap: bool,
    iou_thr: float | None = None,
    area: str = "all",
    max_det: int = 100,
    cat_index: int | None = None,
) -> float:
    """pycocotools' `COCOeval.summarize._summarize`, minus the print, plus an optional single category.

    Same selection (`iouThr == p.iouThrs` exactly, area by label, maxDets by value) and the same mean over entries
    > -1, so for the default parameters this is bit for bit `COCOeval.stats`.
    """
    p = coco_eval.params
    aind = [i for i, label in enumerate(p.areaRngLbl) if label == area]
    mind = [i for i, m in enumerate(p.maxDets) if m == max_det]
    s = coco_eval.eval["precision"] if ap else coco_eval.eval["recall"]  # [T,R,K,A,M] / [T,K,A,M]
    if iou_thr is not None:
        s = s[np.where(iou_thr == p.iouThrs)[0]]
    if cat_index is not None:
        s = s[:, :, [cat_index]] if ap else s[:, [cat_index]]
    s = s[:, :, :, aind, mind] if ap else s[:, :, aind, mind]
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _summarize_stats(coco_eval: COCOeval) -> list[float]:
    """The 12 numbers of `summarize()` for any three `maxDets`.

    pycocotools' `_summarizeDets` reads `maxDets[0]`, `[1]`, `[2]` by position (AP stats use `maxDets[2]`); we do
    the same, so with `max_dets=(1, 10, 300)` the stat named "AR100" is AR at 300 detections per image, exactly
    what `summarize()` would have reported (and labelled "maxDets=300" in its print). One deliberate difference:
    pycocotools' stats[0] calls `_summarize(1)` with its default `maxDets=100`, so it is -1 whenever 100 is not
    among the maxDets; we take AP at `maxDets[2]` like every other AP stat.
    """
    m = coco_eval.params.maxDets
    return [
        _summarize_one(coco_eval, True, max_det=m[2]),
        _summarize_one(coco_eval, True, iou_thr=0.5, max_det=m[2]),
        _summarize_one(coco_eval, True, iou_thr=0.75, max_det=m[2]),
        _summarize_one(coco_eval, True, area="small", max_det=m[2]),
        _summarize_one(coco_eval, True, area="medium", max_det=m[2]),
        _summarize_one(coco_eval, True, area="large", max_det=m[2]),
        _summarize_one(coco_eval, False, max_det=m[0]),
        _summarize_one(coco_eval, False, max_det=m[1]),
        _summarize_one(coco_eval, False, max_det=m[2]),
        _summarize_one(coco_eval, False, area="small", max_det=m[2]),
        _summarize_one(coco_eval, False, area="medium", max_det=m[2]),
        _summarize_one(coco_eval, False, area="large", max_det=m[2]),
    ]


def _num_gt(coco_gt: COCO) -> dict[int, int]:
    """Boxes per category that count towards recall: pycocotools ignores `iscrowd` and `ignore` ground truth."""
    counts: dict[int, int] = dict.fromkeys(coco_gt.getCatIds(), 0)
    for a in coco_gt.dataset["annotations"]:
        if not a.get("iscrowd", 0) and not a.get("ignore", 0):
            counts[a["category_id"]] = counts.get(a["category_id"], 0) + 1
    return counts


def _per_class(coco_gt: COCO, coco_eval: COCOeval) -> list[dict[str, Any]]:
    p = coco_eval.params
    m = p.maxDets[2] if len(p.maxDets) > 2 else p.maxDets[-1]
    counts = _num_gt(coco_gt)
    rows = []
    for k, cat_id in enumerate(p.catIds):  # precision's K axis follows params.catIds (sorted GT ids)
        cat = coco_gt.cats.get(cat_id, {})
        rows.append(
            {
                "category_id": int(cat_id),
                "name": str(cat.get("name", cat_id)),
                "num_gt": counts.get(cat_id, 0),
                "AP": _summarize_one(coco_eval, True, max_det=m, cat_index=k),
                "AP50": _summarize_one(coco_eval, True, iou_thr=0.5, max_det=m, cat_index=k),
                "AR100": _summarize_one(coco_eval, False, max_det=m, cat_index=k),
            }
        )
    return rows


def evaluate(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    *,
    iou_thrs: Sequence[float] | None = None,
    max_dets: Sequence[int] = DEFAULT_MAX_DETS,
    area_ranges: dict[str, tuple[float, float]] | None = None,
    per_class: bool = True,
    quiet: bool = True,
) -> EvalResult:
    """COCO box AP/AR of `results` against `coco_gt`: `COCOeval(gt, dt, "bbox")`, evaluate, accumulate, summarize.

    `results` are checked as `load_results` checks them (unknown image or category ids raise `InputError`; the
    trainer passes its detector's output straight here). With default parameters `stats` is `COCOeval.stats`
    itself. `max_dets` must hold three increasing values because pycocotools' stat layout reads them by position
    (AR1/AR10/AR100 mean `max_dets[0]`/`[1]`/`[2]`, AP uses `[2]`); other values are summarised with the same
    semantics as `summarize()`. `area_ranges` replaces pycocotools' `{all, small, medium, large}`; a stat whose
    label is missing is -1, as pycocotools reports a slice it has nothing for. `quiet=False` lets pycocotools print.
    """
    max_dets = [int(m) for m in max_dets]
    if len(max_dets) != 3 or max_dets[0] < 1 or not all(a < b for a, b in zip(max_dets, max_dets[1:])):
        raise InputError(
            f"max_dets must be three increasing positive counts (pycocotools' AR1/AR10/AR100 slots), got {max_dets}"
        )
    checked = _checked_columns(results, coco_gt, "results")
    if not checked.image_ids:
        # info, not warning: early in training an empty list is normal; `load_results` warns for user files
        logger.info("no detections to evaluate; every AP and AR is 0 where there is ground truth")
    coco_dt = _detections(coco_gt, checked)

    coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
    p = coco_eval.params
    default = iou_thrs is None and area_ranges is None and tuple(max_dets) == DEFAULT_MAX_DETS
    if iou_thrs is not None:
        p.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
    if area_ranges is not None:
        p.areaRngLbl = list(area_ranges)
        p.areaRng = [[float(lo), float(hi)] for lo, hi in area_ranges.values()]
    p.maxDets = max_dets

    out = contextlib.nullcontext() if not quiet else contextlib.redirect_stdout(io.StringIO())
    with out:
        coco_eval.evaluate()
        coco_eval.accumulate()
        if default:
            coco_eval.summarize()
            values = [float(v) for v in coco_eval.stats]
        else:
            values = _summarize_stats(coco_eval)
            coco_eval.stats = np.asarray(values)
            if not quiet:
                print("\n".join(f"{n:>6} = {v:0.3f}" for n, v in zip(STAT_NAMES, values)))
    stats = dict(zip(STAT_NAMES, values))
    rows = _per_class(coco_gt, coco_eval) if per_class else []
    return EvalResult(stats=stats, per_class=rows, coco_eval=coco_eval)
