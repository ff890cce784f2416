"""The checks every COCO input passes before pycocotools sees it, with errors that name the file, the ids and the fix.

pycocotools asserts, raises `KeyError`, or silently ignores unknown ids; these checks say instead what is wrong,
where, and how to fix it. They sit below both the file reading (`birddet.engine.coco_inputs`) and the evaluation
(`birddet.engine.evaluator`): `evaluate` runs the detection checks on what the trainer passes in memory as well as
on what `load_results` read from a file. Vectorised on the happy path; a per-item scan only runs to name the first
offender once a vectorised check has failed.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from birddet.errors import InputError

MAX_IDS_SHOWN = 5  # ids quoted in an error message before "+N more"


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


# -- detection columns ----------------------------------------------------------------------------------------------
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
