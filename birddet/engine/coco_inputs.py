"""COCO ground truth and detections read from files (or parsed objects) and checked, for the evaluator.

`load_ground_truth` indexes a checked ground-truth dataset for pycocotools (quietly, never touching the caller's
dict); `load_results` reads a results list, or a COCO dataset whose annotations carry a score, and matches such a
dataset to the ground truth by `file_name` and category name. Apart from `birddet.engine.evaluator` because reading
and matching input files is its own concern (`birddet score`, eval and two-stage eval all read through here), while
the evaluator turns checked inputs into pycocotools' numbers. The checks themselves are in
`birddet.engine.coco_checks`.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from birddet.engine.coco_checks import (
    _checked_columns,
    _checked_ids,
    _finite_boxes,
    _ids_text,
    _is_int,
    _quiet_index,
    _read_json,
)
from birddet.errors import InputError

logger = logging.getLogger(__name__)


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
