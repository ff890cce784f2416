"""COCO box evaluation: pycocotools' numbers, with input checked first so bad files fail with a readable message.

pycocotools is the reference everyone compares against, so the metric itself is never reimplemented here: we build
the ground-truth and detection `COCO` objects, run `COCOeval(gt, dt, "bbox")` with `evaluate(); accumulate();
summarize()`, and read its arrays. What this module adds is what pycocotools lacks:

- validation with messages that name the file, the offending ids and the fix (pycocotools asserts, raises
  `KeyError`, or silently ignores unknown ids);
- no console chatter (pycocotools prints from `COCO()`, `loadRes`, `evaluate`, `accumulate` and `summarize`);
- empty results (pycocotools' `loadRes([])` crashes on `anns[0]`) scored as zero recall and precision;
- per-class AP/AP50/AR100 averaged exactly as pycocotools' own `_summarize` averages (entries > -1);
- non-default `max_dets`: `summarize()` hardcodes `maxDets[0..2]` and the stat layout, so we compute the same 12
  numbers with the same semantics over the given values (see `_summarize_stats`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from birddet.errors import InputError

logger = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
DEFAULT_MAX_DETS = (1, 10, 100)
MAX_IDS_SHOWN = 5  # ids quoted in an error message before "+N more"


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


# -- helpers --------------------------------------------------------------------------------------------------------
def _ids_text(ids: Iterable[Any]) -> str:
    """`1, 2, 3, 4, 5 (+7 more; 12 in total)`: enough to find the problem without flooding the terminal."""
    ids = list(ids)
    shown = ", ".join(str(i) for i in ids[:MAX_IDS_SHOWN])
    if len(ids) > MAX_IDS_SHOWN:
        shown += f" (+{len(ids) - MAX_IDS_SHOWN} more; {len(ids)} in total)"
    return shown


def _read_json(path: str | Path, what: str, hint: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found; {hint}")
    try:
        with path.open("rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); {hint}") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 JSON text file; {hint}") from e


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _duplicates(ids: Sequence[Any]) -> list[Any]:
    seen: set[Any] = set()
    dups: dict[Any, None] = {}  # ordered set: report in file order
    for i in ids:
        if i in seen:
            dups[i] = None
        seen.add(i)
    return list(dups)


def _finite_boxes(boxes: Sequence[Any]) -> tuple[np.ndarray | None, int | None]:
    """Boxes as an `[N, 4]` float64 array, or `(None, index of the first bad box)`.

    Vectorised on the happy path (one `np.asarray`), per-box only to locate the culprit once something failed.
    """
    if len(boxes) == 0:
        return np.zeros((0, 4)), None
    try:
        arr = np.asarray(boxes)
    except (ValueError, TypeError):  # ragged: find the culprit below
        arr = None
    # dtype kind guards against what float() would quietly accept: "12.5" strings and booleans
    if arr is not None and arr.ndim == 2 and arr.shape[1] == 4 and arr.dtype.kind in "iuf":
        arr = arr.astype(np.float64, copy=False)
        ok = np.isfinite(arr).all(axis=1)
        if ok.all():
            return arr, None
        return None, int(np.argmin(ok))
    for i, b in enumerate(boxes):
        if not isinstance(b, list | tuple) or len(b) != 4:
            return None, i
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in b):
            return None, i
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), None


def _quiet_index(dataset: dict[str, Any]) -> COCO:
    """A `COCO` over `dataset` without pycocotools' "creating index..." prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


# -- ground truth ---------------------------------------------------------------------------------------------------
def load_ground_truth(source: str | Path | dict[str, Any]) -> COCO:
    """Read and check a COCO ground-truth dataset, and index it for pycocotools.

    Checks happen before pycocotools sees the data because pycocotools' own failures are an `AssertionError` or a
    `KeyError: 'iscrowd'` deep inside `evaluateImg`. Annotations without `iscrowd` get 0 and those without `area`
    get `w * h` (pycocotools reads both unconditionally); the caller's dict is never modified (pycocotools'
    `_prepare` writes an `ignore` flag into every ground-truth annotation, so we hand it copies).
    """
    if isinstance(source, str | Path):
        where = str(source)
        data = _read_json(source, "ground-truth", "pass a COCO dataset JSON (images, annotations, categories)")
    else:  # already parsed
        where, data = "ground truth", source
    if not isinstance(data, dict):
        raise InputError(
            f"{where}: ground truth must be a JSON object with images, annotations and categories, "
            f"got a {type(data).__name__}"
        )
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise InputError(
                f"{where}: missing top-level key {key!r}; a COCO dataset needs images, annotations, categories"
            )
        if not isinstance(data[key], list):
            raise InputError(f"{where}: {key!r} must be a list, got {type(data[key]).__name__}")

    image_ids = _checked_ids(data["images"], "images", "image", where)
    cat_ids = _checked_ids(data["categories"], "categories", "category", where)
    anns = data["annotations"]
    _checked_ids(anns, "annotations", "annotation", where)

    known_images, known_cats = set(image_ids), set(cat_ids)
    for a in anns:
        for key in ("image_id", "category_id", "bbox"):
            if key not in a:
                raise InputError(
                    f"{where}: annotation id {a['id']} has no {key!r}; every annotation needs image_id, category_id, bbox"
                )
        for key in ("image_id", "category_id"):
            if not _is_int(a[key]):
                raise InputError(f"{where}: annotation id {a['id']} has {key} {a[key]!r}; it must be an integer id")
        if a["image_id"] not in known_images:
            raise InputError(
                f"{where}: annotation id {a['id']} names image_id {a['image_id']!r}, which is not in 'images'; "
                "fix the image_id or add the image"
            )
        if a["category_id"] not in known_cats:
            raise InputError(
                f"{where}: annotation id {a['id']} names category_id {a['category_id']!r}, which is not in "
                "'categories'; fix the category_id or add the category"
            )
    _, bad = _finite_boxes([a["bbox"] for a in anns])
    if bad is not None:
        raise InputError(
            f"{where}: annotation id {anns[bad]['id']} has bbox {anns[bad]['bbox']!r}; "
            "a bbox must be four finite numbers [x, y, width, height]"
        )

    fixed = []
    for a in anns:
        a = dict(a)
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
        fixed.append(a)
    dataset = {**data, "annotations": fixed}
    return _quiet_index(dataset)


def _checked_ids(items: list[Any], key: str, noun: str, where: str) -> list[Any]:
    """The `id` of each object in `items`, after checking each is an object with an integer id and ids are unique."""
    ids = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(f"{where}: {key}[{i}] must be an object, got {type(item).__name__}")
        if "id" not in item:
            raise InputError(f"{where}: {key}[{i}] has no 'id'; every {noun} needs a unique integer id")
        if not _is_int(item["id"]):
            raise InputError(f"{where}: {key}[{i}] has id {item['id']!r}; {noun} ids must be integers")
        ids.append(item["id"])
    dups = _duplicates(ids)
    if dups:
        raise InputError(f"{where}: duplicate {noun} ids {_ids_text(dups)}; each {noun} needs a unique id")
    return ids


# -- detections -----------------------------------------------------------------------------------------------------
def load_results(
    source: str | Path | list[Any] | dict[str, Any], coco_gt: COCO, *, gt_where: str = "the ground truth"
) -> list[dict[str, Any]]:
    """Read and check detections against `coco_gt`; returns the `[{image_id, category_id, bbox, score}]` dicts.

    Accepts the COCO results format (a list) or a COCO dataset whose `annotations` carry a `score` (what
    `birddet predict` and some other tools write). A plain list must use the ground truth's image and category ids.
    A dataset is matched to the ground truth like any two files that meet (`_match_images`, `align_categories`):
    images by `file_name` where both sides have names (its image ids are its own: predict numbers images 1..N in
    sorted order, converters in theirs), categories by name where both sides have names; its detections of
    categories the ground truth lacks are left out, with a log line. `gt_where` names the ground truth in messages.

    The returned dicts are the input's own (not copies: a million small dicts cost more than the checks) unless a
    dataset's ids had to be translated, and nothing here or in `evaluate` modifies them, unlike pycocotools'
    `loadRes`. Checks are vectorised so a 500k-detection file costs a fraction of the evaluation itself. Empty
    results are allowed (a detector that found nothing scores zero) and only warn.
    """
    if isinstance(source, str | Path):
        where = str(source)
        data = _read_json(source, "results", "pass a COCO results list [{image_id, category_id, bbox, score}]")
    else:  # already parsed
        where, data = "results", source
    if isinstance(data, dict):
        if "annotations" not in data or not isinstance(data["annotations"], list):
            raise InputError(
                f"{where}: a results object must be a COCO dataset with an 'annotations' list (each with a score); "
                "or pass a COCO results list [{image_id, category_id, bbox, score}]"
            )
        data = _to_ground_truth_ids(data, coco_gt, where, gt_where)
    elif not isinstance(data, list):
        raise InputError(
            f"{where}: results must be a list [{{image_id, category_id, bbox, score}}], got {type(data).__name__}"
        )
    _checked_columns(data, coco_gt, where)
    results = list(data)  # the caller's dicts, checked; never modified here (evaluate builds its own)
    if not results:
        msg = f"{where}: no detections; every AP and AR will be 0"
        warnings.warn(msg, stacklevel=2)
        logger.warning(msg)
    return results


def _to_ground_truth_ids(data: dict[str, Any], coco_gt: COCO, where: str, gt_where: str) -> list[Any]:
    """The annotations of a results dataset with the ground truth's image and category ids (see `load_results`)."""
    anns = data["annotations"]
    image_map = _match_images(data, coco_gt, where, gt_where)
    alignment = None
    gt_cats = coco_gt.dataset["categories"]
    cats = data.get("categories")
    if isinstance(cats, list) and cats and _named(cats, "name") and _named(gt_cats, "name"):
        from birddet.data.coco import align_categories

        _checked_ids(cats, "categories", "category", where)
        alignment = align_categories(
            {c["id"]: c["name"] for c in cats},
            {c["id"]: c["name"] for c in gt_cats},
            used={a["category_id"] for a in coco_gt.dataset["annotations"]},
            model_source=where,
            dataset_source=gt_where,
        )
        alignment.log(logger)
        if not alignment.renumbered and not alignment.unscored:
            alignment = None
    if image_map is None and alignment is None:
        return anns
    out = []
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or _id_key(a.get("image_id")) is None or _id_key(a.get("category_id")) is None:
            out.append(a)  # `_checked_columns` says what is wrong with it
            continue
        a = dict(a)
        if image_map is not None:
            if _id_key(a["image_id"]) not in image_map:
                raise InputError(
                    f"{where}: result {i} names image_id {a['image_id']!r}, which is not in its 'images'; every "
                    "detection of a COCO dataset must refer to one of its images"
                )
            a["image_id"] = image_map[_id_key(a["image_id"])]
        if alignment is not None:
            cid = _id_key(a["category_id"])
            if cid not in alignment.model.as_dict():
                raise InputError(
                    f"{where}: result {i} names category_id {a['category_id']!r}, which is not in its 'categories'; "
                    "every detection of a COCO dataset must refer to one of its categories"
                )
            if cid not in alignment.to_dataset:
                continue  # a category the ground truth lacks: left out of scoring (logged above)
            a["category_id"] = alignment.to_dataset[cid]
        out.append(a)
    return out


def _id_key(value: Any) -> int | None:
    """An id as a dict key: ints, and floats holding one (tools that write every number as a float); else None."""
    if _is_int(value):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _named(items: list[Any], key: str) -> bool:
    """Every record is an object with an integer id and a string `key` (`name` of categories, `file_name` of images)."""
    return all(isinstance(i, dict) and _is_int(i.get("id")) and isinstance(i.get(key), str) for i in items)


def _match_images(data: dict[str, Any], coco_gt: COCO, where: str, gt_where: str) -> dict[int, int] | None:
    """Results image id -> ground-truth image id, matched by `file_name`; None to keep the results' own ids.

    Exact relative paths first, then a basename that is unique in the ground truth, for results written
    from another root (`predict` run on `photos/val` names `a.jpg` what the ground truth calls `val/a.jpg`). The ids
    are kept when one side has no names, or when no name matches at all but every image id is the ground truth's
    (logged: the names then tell nothing). Otherwise an image with detections that matches nothing is an error.
    """
    images = data.get("images")
    gt_images = coco_gt.dataset["images"]
    if not isinstance(images, list) or not images or not _named(images, "file_name"):
        return None
    if not _named(gt_images, "file_name"):
        return None
    from birddet.data.formats.predictions import _ImageIndex  # the pseudo-label merge matches names the same way

    _checked_ids(images, "images", "image", where)
    index = _ImageIndex(gt_images)
    mapping: dict[int, int] = {}
    exact = 0
    unmatched: list[dict[str, Any]] = []
    for img in images:
        found = index.find(img["file_name"])
        if found is None:
            unmatched.append(img)
            continue
        mapping[img["id"]] = found["id"]
        exact += img["file_name"] in index.by_name
    twice = [gt for gt, n in Counter(mapping.values()).items() if n > 1]
    if twice:
        names = [img["file_name"] for img in images if mapping.get(img["id"]) in twice]
        raise InputError(
            f"{where}: several images match one image of {gt_where} by file_name or basename ({_ids_text(names)}); "
            "give each image a name that tells which ground-truth image it is"
        )
    with_dets = {_id_key(a.get("image_id")) for a in data["annotations"] if isinstance(a, dict)} - {None}
    lost = [img for img in unmatched if img["id"] in with_dets]
    gt_ids = {img["id"] for img in gt_images}
    if lost and not mapping:
        results_ids = {img["id"] for img in images}
        if with_dets <= gt_ids and with_dets <= results_ids:
            logger.warning(
                "%s: no file_name matches %s (e.g. %s), so images are matched by id; check that both number the "
                "same images the same way", where, gt_where, _ids_text([img["file_name"] for img in lost]),
            )  # fmt: skip
            return None
        raise InputError(
            f"{where}: neither image file names nor image ids match {gt_where}: file names "
            f"{_ids_text([img['file_name'] for img in lost])} are not in it (it has e.g. "
            f"{_ids_text([img['file_name'] for img in gt_images])}), and image ids "
            f"{_ids_text(sorted(with_dets - gt_ids))} are not its ids. Score against the "
            "ground truth of the images the results were made from"
        )
    if lost:
        raise InputError(
            f"{where}: {len(lost)} image(s) with detections match no file_name of {gt_where}, exactly or by a unique "
            f"basename: {_ids_text([img['file_name'] for img in lost])} (it has e.g. "
            f"{_ids_text([img['file_name'] for img in gt_images])}); {len(mapping)} image(s) did match. Score "
            "against the ground truth of the images the results were made from"
        )
    missing = len(gt_ids - set(mapping.values()))
    logger.info(
        "%s: images matched to %s by file_name (%d exact, %d by unique basename)%s%s",
        where, gt_where, exact, len(mapping) - exact,
        f"; {missing} ground-truth image(s) are not in the results and count as having no detections"
        if missing else "",
        f"; {len(unmatched)} result image(s) without detections are not in the ground truth" if unmatched else "",
    )  # fmt: skip
    return mapping


RESULT_KEYS = ("image_id", "category_id", "bbox", "score")


@dataclass
class _Columns:
    """Validated detections, column-wise: what `_detections` turns into pycocotools annotations."""

    image_ids: list[Any]
    category_ids: list[Any]
    bboxes: list[list[float]]
    scores: list[Any]
    areas: list[float]


def _checked_columns(anns: list[Any], coco_gt: COCO, where: str) -> _Columns:
    """Validate detections against `coco_gt`, column by column.

    The happy path is four list comprehensions and a few numpy checks (~1 s per million detections); a per-item
    scan only runs to name the first offender once a vectorised check has failed. Values that are already what
    pycocotools reads (Python ints, lists of numbers) are passed on untouched, so it computes exactly what it would
    compute from the file itself.
    """
    if not anns:
        return _Columns([], [], [], [], [])
    try:
        columns = {key: [a[key] for a in anns] for key in RESULT_KEYS}
    except (KeyError, TypeError):
        for i, a in enumerate(anns):
            if not isinstance(a, dict):
                raise InputError(f"{where}: result {i} must be an object, got {type(a).__name__}") from None
            missing = [k for k in RESULT_KEYS if k not in a]
            if missing:
                raise InputError(
                    f"{where}: result {i} has no {', '.join(repr(k) for k in missing)}; "
                    "each result needs image_id, category_id, bbox [x, y, w, h], score"
                ) from None
        raise

    image_ids = _int_column(columns["image_id"], "image_id", where)
    cat_ids = _int_column(columns["category_id"], "category_id", where)
    unknown_images = np.setdiff1d(np.unique(image_ids), np.asarray(coco_gt.getImgIds(), dtype=np.int64))
    if unknown_images.size:
        raise InputError(
            f"{where}: image ids {_ids_text(unknown_images.tolist())} are not in the ground truth; "
            "results must refer to the ground truth's images (wrong --gt file?)"
        )
    unknown_cats = np.setdiff1d(np.unique(cat_ids), np.asarray(coco_gt.getCatIds(), dtype=np.int64))
    if unknown_cats.size:
        raise InputError(
            f"{where}: category ids {_ids_text(unknown_cats.tolist())} are not in the ground truth; "
            "map labels back to the dataset's category ids"
        )
    boxes, bad = _finite_boxes(columns["bbox"])
    if boxes is None:
        raise InputError(
            f"{where}: result {bad} (image_id {anns[bad]['image_id']}) has bbox {anns[bad]['bbox']!r}; "
            "a bbox must be four finite numbers [x, y, width, height]"
        )
    _float_column(columns["score"], "score", where, anns)

    def native(values: list[Any], arr: np.ndarray) -> list[Any]:
        # 3.0 ids (tools that write every number as a float) become ints; ints stay the caller's objects
        return values if arr.dtype.kind != "f" and all(type(v) is int for v in values[:1]) else arr.tolist()

    bboxes = columns["bbox"]
    if not all(type(b) is list for b in bboxes):  # pycocotools' maskUtils.iou accepts lists, not tuples
        bboxes = boxes.tolist()
    return _Columns(
        image_ids=native(columns["image_id"], image_ids),
        category_ids=native(columns["category_id"], cat_ids),
        bboxes=bboxes,
        scores=columns["score"],
        # loadRes: area = w * h; float64 products equal Python's, so area-range membership is the same
        areas=(boxes[:, 2] * boxes[:, 3]).tolist(),
    )


def _int_column(values: list[Any], key: str, where: str) -> np.ndarray:
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):
        arr = np.asarray(values, dtype=object)
    if arr.ndim == 1 and arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.ndim == 1 and arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)  # 3.0 from tools that write every number as a float
    for i, v in enumerate(values):
        if not (_is_int(v) or (isinstance(v, float) and v.is_integer())):
            raise InputError(f"{where}: result {i} has {key} {v!r}; {key} must be an integer id")
    raise InputError(f"{where}: {key} must be integer ids")  # unreachable unless numpy disagrees with the scan


def _float_column(values: list[Any], key: str, where: str, anns: list[Any]) -> np.ndarray:
    try:
        arr = np.asarray(values)
        ok = arr.ndim == 1 and arr.dtype.kind in "iuf" and bool(np.isfinite(arr).all())
    except (ValueError, TypeError):
        ok = False
    if ok:
        return arr.astype(np.float64, copy=False)
    for i, v in enumerate(values):
        if not (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)):
            raise InputError(
                f"{where}: result {i} (image_id {anns[i]['image_id']}) has {key} {v!r}; {key} must be a finite number"
            )
    raise InputError(f"{where}: {key} must be finite numbers")


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
