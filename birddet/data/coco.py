"""COCO detection annotations: read and validate once, then serve (image, target) pairs for torchvision detectors.

Validation happens at load time so that a bad file fails in the first second with a message naming the ids, not
after an hour of training. Structural problems (malformed JSON, missing keys, wrong types, duplicate ids, unknown
image or category ids, file names escaping the image root, missing image files) raise `InputError`. Problems with
single boxes are repaired or dropped and counted in a `ValidationReport`:

- Box tolerance: an edge may lie outside the image by up to `max(2 px, 1 % of that image side)`; such boxes are
  clipped to the image (annotation tools often round or overshoot by a pixel). A box further outside is "far
  outside" and dropped: it means the annotation does not belong to this image size.
- NaN/infinite coordinates and non-positive width or height are dropped.
- Images without any usable box are kept as negatives (they teach the detector what is not a bird).
- `iscrowd=1` annotations stay in the raw data (the evaluator needs them to ignore matches) and are never training
  targets; they reach the detector labelled `CROWD_LABEL` so that it never samples them as background either.

Labels: torchvision wants contiguous labels 1..K with 0 = background; `CategoryMap` translates to and from the
model's category ids (a COCO id may be 0: it is never confused with the background label). Wherever a model's
categories meet another file's (a val split, a resumed checkpoint's train split, `birddet eval`'s ground truth, a
results file in `birddet score`), `align_categories` matches them by name, never by id: ids follow the name, and
detections are written with the scored file's own ids, which are what every output file uses.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from birddet.data.images import ImageLoadError, load_image
from birddet.data.transforms import to_tensor
from birddet.errors import InputError

__all__ = [
    "CROWD_LABEL",
    "CategoryAlignment",
    "is_ignore_region",
    "CategoryMap",
    "CocoDetection",
    "ValidationReport",
    "align_categories",
    "escapes_root",
    "first_ids",
    "format_categories",
    "load_coco_dataset",
    "validate_coco_file",
]

log = logging.getLogger(__name__)

#: Absolute tolerance (pixels) for boxes outside the image; the relative one is `CLIP_TOLERANCE_FRAC` of the side.
CLIP_TOLERANCE_PX = 2.0
CLIP_TOLERANCE_FRAC = 0.01
#: How many offending ids an error or warning lists before saying "and N more".
MAX_IDS_SHOWN = 10


# ---------------------------------------------------------------------------------------------------------------------
# Category map


@dataclass
class CategoryMap:
    """Dataset category ids <-> contiguous detector labels (1..K; 0 is background, as torchvision requires).

    `coco_ids[i]` and `names[i]` belong to label `i + 1`.
    """

    coco_ids: list[int]
    names: list[str]

    def __post_init__(self) -> None:
        if len(self.coco_ids) != len(self.names):
            raise InputError(f"category map: {len(self.coco_ids)} ids but {len(self.names)} names")
        if len(set(self.coco_ids)) != len(self.coco_ids):
            raise InputError(f"category map: duplicate category ids in {self.coco_ids}")
        self._label_of = {cid: i + 1 for i, cid in enumerate(self.coco_ids)}

    @classmethod
    def from_categories(cls, categories: list[dict[str, Any]] | Mapping[int | str, str]) -> CategoryMap:
        """Build from a COCO `categories` list; sorted by id so the same file always gives the same labels.

        A `{coco_id: name}` mapping (a checkpoint's `categories`) is accepted too and handed to `from_dict`.
        """
        if isinstance(categories, Mapping):
            return cls.from_dict(categories)
        cats = sorted(categories, key=lambda c: int(c["id"]))
        return cls(coco_ids=[int(c["id"]) for c in cats], names=[str(c["name"]) for c in cats])

    @classmethod
    def from_dict(cls, d: Mapping[int | str, str]) -> CategoryMap:
        """Inverse of `as_dict`; keys may be strings after a JSON round trip."""
        try:
            items = sorted((int(k), str(v)) for k, v in d.items())
        except (TypeError, ValueError) as e:
            raise InputError(f"category map: keys must be integer category ids, got {list(d)[:MAX_IDS_SHOWN]}") from e
        return cls(coco_ids=[k for k, _ in items], names=[v for _, v in items])

    @property
    def num_classes(self) -> int:
        """Number of detector classes including background (K + 1), i.e. torchvision's `num_classes`."""
        return len(self.coco_ids) + 1

    def to_label(self, coco_id: int) -> int:
        try:
            return self._label_of[int(coco_id)]
        except KeyError:
            raise InputError(f"category id {coco_id} is not one of the known categories {self.coco_ids}") from None

    def to_coco_id(self, label: int) -> int:
        self._check_label(label)
        return self.coco_ids[int(label) - 1]

    def name(self, label: int) -> str:
        self._check_label(label)
        return self.names[int(label) - 1]

    def as_dict(self) -> dict[int, str]:
        """COCO id -> name, the form stored in checkpoints."""
        return dict(zip(self.coco_ids, self.names))

    def _check_label(self, label: int) -> None:
        if not 1 <= int(label) <= len(self.coco_ids):
            raise ValueError(f"label {label} is outside 1..{len(self.coco_ids)} (0 is background)")


def _name_key(name: str) -> str:
    """Category names are compared case-insensitively ("Robin" in one file is "robin" in another)."""
    return str(name).casefold()


def format_categories(categories: Mapping[int, str], limit: int = 20) -> str:
    """`{1: 'gull', 2: 'robin'}`, cut after `limit` entries, for error messages that list a category map."""
    items = sorted(categories.items())
    shown = ", ".join(f"{cid}: {name!r}" for cid, name in items[:limit])
    return "{" + shown + (f", ... ({len(items)} in all)" if len(items) > limit else "") + "}"


def _ids_by_name(categories: Mapping[int, str], source: str) -> dict[str, int]:
    """Name key -> category id; two categories with one name are an error, since a name must mean one class."""
    out: dict[str, int] = {}
    for cid, name in sorted(categories.items()):
        key = _name_key(name)
        if key in out:
            raise InputError(
                f"{source}: categories {out[key]} ({categories[out[key]]!r}) and {cid} ({name!r}) have the same name "
                "(names are matched case-insensitively); give each class one category"
            )
        out[key] = cid
    return out


@dataclass
class CategoryAlignment:
    """A model's categories matched to a dataset's by name: what `align_categories` returns.

    - `to_dataset`: model category id -> the dataset's id for the same name (what pycocotools scores against);
    - `unscored`: the model's categories the dataset does not have; their detections are left out of scoring;
    - `unknown`: dataset categories its annotations use that the model does not know (only non-empty with
      `strict=False`; a caller that collects problems turns `unknown_message()` into its error).
    """

    model: CategoryMap
    dataset: dict[int, str]
    to_dataset: dict[int, int]
    unscored: dict[int, str]
    unknown: dict[int, str]
    model_source: str
    dataset_source: str
    to_model: dict[int, int] = field(init=False, repr=False)  # dataset id -> model id (the names both have)

    def __post_init__(self) -> None:
        self.to_model = {d: m for m, d in self.to_dataset.items()}

    @property
    def renumbered(self) -> dict[int, int]:
        """Model id -> dataset id for the shared names whose ids differ."""
        return {m: d for m, d in self.to_dataset.items() if m != d}

    def label(self, dataset_id: int) -> int:
        """The detector label (1..K) of a dataset category id: the model's label for the same name."""
        try:
            model_id = self.to_model[int(dataset_id)]
        except KeyError:
            raise InputError(
                f"{self.dataset_source}: category id {dataset_id} "
                f"({self.dataset.get(int(dataset_id), 'not in its categories')!r}) has no category of the same name "
                f"in {self.model_source} {format_categories(self.model.as_dict())}"
            ) from None
        return self.model.to_label(model_id)

    def dataset_results(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """COCO results in the model's category ids -> the dataset's ids; results of `unscored` categories are left
        out. Unchanged (the same list) when the ids already agree."""
        if not self.renumbered and not self.unscored:
            return results
        out = []
        for r in results:
            cid = self.to_dataset.get(int(r["category_id"]))
            if cid is not None:
                out.append({**r, "category_id": cid})
        return out

    def unknown_message(self) -> str:
        """Why `unknown` is fatal, listing both category maps."""
        shown = ", ".join(f"{cid} ({name!r})" for cid, name in sorted(self.unknown.items()))
        return (
            f"{self.dataset_source} has categories {self.model_source} was not trained on: {shown} "
            f"({self.model_source} has {format_categories(self.model.as_dict())}, {self.dataset_source} has "
            f"{format_categories(self.dataset)}); a category is matched by its name (case-insensitively), not by its "
            "id: rename them to the model's names, or use a model trained on them"
        )

    def log(self, logger: logging.Logger | None = None) -> None:
        """Say how the ids were matched: a renumbering as info, model categories left out of scoring as a warning
        (nothing when both sides number the same names the same way)."""
        logger = logger or log
        if self.renumbered:
            names = self.model.as_dict()
            pairs = ", ".join(f"{names[m]!r} {m} -> {d}" for m, d in sorted(self.renumbered.items()))
            logger.info(
                "%s numbers its categories differently from %s; matched by name, detections are written with the "
                "dataset's ids: %s", self.dataset_source, self.model_source, pairs,
            )  # fmt: skip
        if self.unscored:
            shown = ", ".join(f"{cid} ({name!r})" for cid, name in sorted(self.unscored.items()))
            logger.warning(
                "%s has categories %s lacks: %s; their detections are left out of scoring",
                self.model_source, self.dataset_source, shown,
            )  # fmt: skip


def align_categories(
    model: Mapping[int, str] | CategoryMap,
    dataset: Mapping[int, str],
    *,
    used: Collection[int] | None = None,
    model_source: str = "the model",
    dataset_source: str = "the dataset",
    strict: bool = True,
) -> CategoryAlignment:
    """Match a model's `{id: name}` to a dataset's `{id: name}` by name: the one rule wherever two category maps meet.

    Why names: files converted separately number their classes in their own order (sorted names, say), so equal ids
    can mean different birds and equal names with different ids are common. Ids follow the name: training labels
    of a file come from the model's category of the same name, and detections are written with the dataset's id
    for their name, since the dataset's own ids are what pycocotools scores. Model categories the dataset lacks are
    `unscored`. A dataset category that its annotations use (`used`; all of them when None) and the model does not
    know is an `InputError` listing both maps (or, with `strict=False`, recorded in `unknown`). Two categories with
    one name on either side are an `InputError`.
    """
    cmap = model if isinstance(model, CategoryMap) else CategoryMap.from_dict(model)
    dataset = {int(k): str(v) for k, v in dataset.items()}
    model_ids = _ids_by_name(cmap.as_dict(), model_source)
    dataset_ids = _ids_by_name(dataset, dataset_source)
    to_dataset = {mid: dataset_ids[key] for key, mid in model_ids.items() if key in dataset_ids}
    unscored = {mid: name for mid, name in cmap.as_dict().items() if mid not in to_dataset}
    used_ids = set(dataset) if used is None else {int(c) for c in used}
    unknown = {
        cid: name for cid, name in sorted(dataset.items()) if cid in used_ids and _name_key(name) not in model_ids
    }
    alignment = CategoryAlignment(
        model=cmap,
        dataset=dataset,
        to_dataset=to_dataset,
        unscored=unscored,
        unknown=unknown,
        model_source=model_source,
        dataset_source=dataset_source,
    )
    if unknown and strict:
        raise InputError(alignment.unknown_message())
    return alignment


# ---------------------------------------------------------------------------------------------------------------------
# Validation report


@dataclass
class ValidationReport:
    """Everything load-time validation found in one file: fatal problems (`errors`) and repaired/dropped boxes.

    Validation never stops at the first problem: a user fixing a file wants the whole list at once. `errors` holds one
    line per kind of structural problem (with the first ids); box repairs are lists of annotation ids. Whether a
    dropped box is fatal depends on the split: training drops it and goes on, while a validation split must be scored
    exactly as written (see `birddet.data.check`).
    """

    ann_file: str = ""
    num_images: int = 0
    num_annotations: int = 0
    num_negative_images: int = 0
    num_crowd: int = 0
    errors: list[str] = field(default_factory=list)
    clipped: list[int] = field(default_factory=list)
    dropped_nonfinite: list[int] = field(default_factory=list)
    dropped_nonpositive: list[int] = field(default_factory=list)
    dropped_far_outside: list[int] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """One human-readable line per kind of dropped or repaired box (empty when the file was clean)."""
        out = []
        for ids, what in self.box_problems():
            out.append(f"{self.ann_file}: {len(ids)} annotation(s) {what}; annotation ids {first_ids(ids)}")
        if self.clipped:
            out.append(
                f"{self.ann_file}: {len(self.clipped)} annotation(s) clipped: bbox slightly outside its image "
                f"(<= {CLIP_TOLERANCE_PX:g} px or {CLIP_TOLERANCE_FRAC:.0%}); annotation ids {first_ids(self.clipped)}"
            )
        return out

    def box_problems(self) -> list[tuple[list[int], str]]:
        """(annotation ids, what) for each kind of dropped box that occurred."""
        kinds = (
            (self.dropped_nonfinite, "dropped: NaN or infinite bbox values"),
            (self.dropped_nonpositive, "dropped: bbox width or height <= 0"),
            (self.dropped_far_outside, "dropped: bbox far outside its image (wrong image size or coordinates?)"),
        )
        return [(ids, what) for ids, what in kinds if ids]

    @property
    def num_dropped(self) -> int:
        return len(self.dropped_nonfinite) + len(self.dropped_nonpositive) + len(self.dropped_far_outside)

    def summary(self) -> str:
        head = (
            f"{self.ann_file}: {self.num_images} images ({self.num_negative_images} without boxes), "
            f"{self.num_annotations} annotations ({self.num_crowd} crowd), {self.num_dropped} dropped, "
            f"{len(self.clipped)} clipped"
        )
        return "\n".join([head, *self.warnings])

    def raise_if_fatal(self) -> None:
        if self.errors:
            raise InputError(fatal_message(self.errors))


def fatal_message(errors: list[str]) -> str:
    """All fatal problems in one message (the CLI prints it on one line)."""
    return f"{len(errors)} problem(s) to fix: " + " | ".join(errors)


def first_ids(ids: list[Any]) -> str:
    shown = ", ".join(str(i) for i in ids[:MAX_IDS_SHOWN])
    more = len(ids) - MAX_IDS_SHOWN
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"


# ---------------------------------------------------------------------------------------------------------------------
# Loading and validation


def load_coco_dataset(
    ann_file: str | os.PathLike[str], image_root: str | os.PathLike[str], *, check_files: bool = True
) -> tuple[dict[str, Any], ValidationReport]:
    """Read and validate a COCO detection file, raising `InputError` listing every structural problem.

    Returns the parsed dataset (the original dict; each kept annotation gets a `bbox` clipped to its image; dropped
    annotations are removed from `annotations`) and a report of what was repaired or dropped.
    """
    data, report = validate_coco_file(ann_file, image_root, check_files=check_files)
    report.raise_if_fatal()
    for line in report.warnings:
        log.warning(line)
    return data, report


def validate_coco_file(
    ann_file: str | os.PathLike[str], image_root: str | os.PathLike[str], *, check_files: bool = True
) -> tuple[dict[str, Any], ValidationReport]:
    """Like `load_coco_dataset` but never raises for problems inside the file: they are all in `report.errors`.

    An unreadable file (missing, not JSON, not an object) still raises, since nothing else can be checked.
    """
    ann_file = Path(ann_file)
    data = _read_json(ann_file)
    where = str(ann_file)
    report = ValidationReport(ann_file=where)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            hint = ' (use "annotations": [] for a set without boxes)' if key == "annotations" else ""
            report.errors.append(f"{where}: missing top-level key {key!r}{hint}")
            data[key] = []
        elif not isinstance(data[key], list):
            report.errors.append(f"{where}: {key!r} must be a list, got {type(data[key]).__name__}")
            data[key] = []

    images = _validate_images(where, data["images"], report.errors)
    categories = _validate_categories(where, data["categories"], report.errors)
    report.num_images = len(images)
    data["annotations"] = _validate_annotations(where, data["annotations"], images, categories, report)
    report.num_annotations = len(data["annotations"])
    with_boxes = {a["image_id"] for a in data["annotations"] if not a.get("iscrowd", 0)}
    report.num_negative_images = sum(1 for i in images if i not in with_boxes)
    _check_file_names(where, Path(image_root), list(images.values()), check_files, report.errors)
    return data, report


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text; is this really a COCO JSON file? ({e})") from e
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: expected a JSON object with images/annotations/categories, got {type(data).__name__}"
        )
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _collect(where: str, problems: list[str], what: str, errors: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - MAX_IDS_SHOWN} more)" if len(problems) > MAX_IDS_SHOWN else ""
        errors.append(f"{where}: {what}: " + "; ".join(problems[:MAX_IDS_SHOWN]) + more)


def _unique_by_id(where: str, items: list[dict[str, Any]], kind: str, errors: list[str]) -> dict[int, dict[str, Any]]:
    """id -> record for records with an integer id; duplicates are an error (the first record is kept)."""
    out: dict[int, dict[str, Any]] = {}
    dups = []
    for it in items:
        if not isinstance(it, dict) or not _is_int(it.get("id")):
            continue
        if it["id"] in out:
            dups.append(it["id"])
        else:
            out[it["id"]] = it
    if dups:
        errors.append(f"{where}: duplicate {kind} ids {first_ids(sorted(set(dups)))}; every {kind} id must be unique")
    return out


def _validate_images(where: str, images: list[Any], errors: list[str]) -> dict[int, dict[str, Any]]:
    """Check each image record's keys and types; returns image id -> record for the usable ones."""
    problems = []
    usable = []
    for n, img in enumerate(images):
        if not isinstance(img, dict):
            problems.append(f"images[{n}] is not an object")
            continue
        tag = f"image id {img.get('id')!r} (images[{n}])"
        bad = []
        if not _is_int(img.get("id")):
            bad.append(f"{tag}: 'id' must be an integer")
        if not isinstance(img.get("file_name"), str) or not img.get("file_name"):
            bad.append(f"{tag}: 'file_name' must be a non-empty string")
        for key in ("width", "height"):
            v = img.get(key)
            if not _is_int(v) or v <= 0:
                bad.append(f"{tag}: {key!r} must be a positive integer, got {v!r}")
        problems.extend(bad)
        if not bad:
            usable.append(img)
    _collect(where, problems, "invalid image records", errors)
    return _unique_by_id(where, usable, "image", errors)


def _validate_categories(where: str, categories: list[Any], errors: list[str]) -> dict[int, dict[str, Any]]:
    problems = []
    for n, cat in enumerate(categories):
        if not isinstance(cat, dict):
            problems.append(f"categories[{n}] is not an object")
            continue
        if not _is_int(cat.get("id")):
            problems.append(f"categories[{n}]: 'id' must be an integer, got {cat.get('id')!r}")
        if not isinstance(cat.get("name"), str):
            problems.append(f"categories[{n}] (id {cat.get('id')!r}): 'name' must be a string")
    _collect(where, problems, "invalid category records", errors)
    if not categories:
        errors.append(f"{where}: 'categories' is empty; a detector needs at least one category")
    return _unique_by_id(where, categories, "category", errors)


def _validate_annotations(
    where: str,
    annotations: list[Any],
    images: dict[int, dict[str, Any]],
    categories: dict[int, dict[str, Any]],
    report: ValidationReport,
) -> list[dict[str, Any]]:
    """Check structure (into `report.errors`) and box geometry (repairing/dropping into `report`).

    Returns the kept annotations: structurally sound ones whose box survived.
    """
    problems = []
    sound = []
    for n, ann in enumerate(annotations):
        found = _annotation_structure_problems(n, ann, images, categories)
        problems.extend(found)
        if not found:
            sound.append(ann)
    _collect(where, problems, "invalid annotations", report.errors)
    unique = _unique_by_id(where, [a for a in annotations if isinstance(a, dict)], "annotation", report.errors)

    kept = []
    for ann in sound:
        if unique.get(ann["id"]) is not ann:  # a duplicate id: already an error, do not count its box twice
            continue
        img = images[ann["image_id"]]
        box = check_box(ann, img["width"], img["height"], report)
        if box is None:
            continue
        ann["bbox"] = box
        if ann.get("iscrowd", 0):
            report.num_crowd += 1
        kept.append(ann)
    return kept


def _annotation_structure_problems(n: int, ann: Any, images: dict[int, Any], categories: dict[int, Any]) -> list[str]:
    if not isinstance(ann, dict):
        return [f"annotations[{n}] is not an object"]
    tag = f"annotation id {ann.get('id')!r} (annotations[{n}])"
    out = []
    if not _is_int(ann.get("id")):
        out.append(f"{tag}: 'id' must be an integer")
    if not _is_int(ann.get("image_id")):
        out.append(f"{tag}: 'image_id' must be an integer, got {ann.get('image_id')!r}")
    elif ann["image_id"] not in images:
        out.append(f"{tag}: unknown image_id {ann['image_id']} (not in 'images')")
    if not _is_int(ann.get("category_id")):
        out.append(f"{tag}: 'category_id' must be an integer, got {ann.get('category_id')!r}")
    elif ann["category_id"] not in categories:
        out.append(
            f"{tag}: unknown category_id {ann['category_id']} (known: {sorted(categories)[:MAX_IDS_SHOWN]}); "
            "add it to 'categories' or fix the annotation"
        )
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) or v is None for v in bbox):
        out.append(f"{tag}: 'bbox' must be a list of 4 numbers [x, y, width, height], got {bbox!r}")
    if ann.get("iscrowd", 0) not in (0, 1, True, False):
        out.append(f"{tag}: 'iscrowd' must be 0 or 1, got {ann.get('iscrowd')!r}")
    return out


def check_box(ann: dict[str, Any], width: int, height: int, report: ValidationReport) -> list[float] | None:
    """Return the (possibly clipped) COCO bbox, or None after recording why it was dropped.

    `None` inside a bbox is how Python's json reads a NaN written by some tools as null, so it counts as NaN.
    """
    x, y, w, h = (math.nan if v is None else float(v) for v in ann["bbox"])
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        report.dropped_nonfinite.append(ann["id"])
        return None
    if w <= 0 or h <= 0:
        report.dropped_nonpositive.append(ann["id"])
        return None
    x1, y1, x2, y2 = x, y, x + w, y + h
    tol_x = max(CLIP_TOLERANCE_PX, CLIP_TOLERANCE_FRAC * width)
    tol_y = max(CLIP_TOLERANCE_PX, CLIP_TOLERANCE_FRAC * height)
    if x1 < -tol_x or y1 < -tol_y or x2 > width + tol_x or y2 > height + tol_y:
        report.dropped_far_outside.append(ann["id"])
        return None
    cx1, cy1 = max(x1, 0.0), max(y1, 0.0)
    cx2, cy2 = min(x2, float(width)), min(y2, float(height))
    if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:  # entirely in the tolerance band: nothing of it is in the image
        report.dropped_far_outside.append(ann["id"])
        return None
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        report.clipped.append(ann["id"])
    return [cx1, cy1, cx2 - cx1, cy2 - cy1]


def escapes_root(file_name: str) -> bool:
    """True for absolute paths (POSIX or Windows style) and for any `..` component."""
    if PurePosixPath(file_name).is_absolute() or PureWindowsPath(file_name).is_absolute():
        return True
    if PureWindowsPath(file_name).drive:
        return True
    parts = file_name.replace("\\", "/").split("/")
    return ".." in parts


def _check_file_names(
    where: str, root: Path, images: list[dict[str, Any]], check_files: bool, errors: list[str]
) -> None:
    """Refuse names that leave `root`; optionally check that every image file exists."""
    escaping = [f"{img['id']}: {img['file_name']!r}" for img in images if escapes_root(img["file_name"])]
    if escaping:
        errors.append(
            f"{where}: file_name escapes the image root {root} (absolute path or '..') for image ids "
            f"{first_ids(escaping)}; make file names relative to the image root"
        )
    if not check_files:
        return
    if not root.is_dir():
        errors.append(f"{where}: image root {root} is not a directory; check --images / data.*.images")
        return
    inside = [img for img in images if not escapes_root(img["file_name"])]
    missing = [f"{img['id']}: {img['file_name']}" for img in inside if not (root / img["file_name"]).is_file()]
    if missing:
        errors.append(
            f"{where}: {len(missing)} image file(s) not found under {root}: {first_ids(missing)}; "
            "check the image root (--images / data.*.images) or remove those images from the JSON"
        )


# ---------------------------------------------------------------------------------------------------------------------
# Dataset


#: Label of crowd boxes in training targets: not a class, a region the detector must not sample as background.
CROWD_LABEL = -1


def is_ignore_region(ann: Mapping[str, Any]) -> bool:
    """Whether a training annotation is an ignore region (a crowd box) rather than a box to learn.

    `iscrowd: 1` marks two things that evaluation treats alike (pycocotools ignores detections on them) but training
    must not: a box around a crowd (a flock), which as a positive would teach one box around many birds, and a VOC
    `difficult` bird (`convert voc` writes `iscrowd: 1, difficult: 1`), which is one real bird. Difficult birds are
    trained as positives, as detectron2's VOC loader does; `benchmarks/crowd_boxes.py` measured positives at val AP50
    0.757 against 0.414 for ignoring them and 0.213 for today's background (docs/data-formats.md). Crowd boxes are
    ignore regions (`birddet.models.ignore_regions`).
    """
    return bool(ann.get("iscrowd", 0)) and not ann.get("difficult", 0)


class CocoDetection(Dataset):
    """A COCO detection set as torchvision detectors want it.

    `dataset[i]` returns `(image, target)`:
      - `image`: float32 tensor `[3, H, W]` in [0, 1], not normalised (the detector's transform normalises);
      - `target["boxes"]`: float32 `[N, 4]` xyxy in pixels of the transformed image, crowd boxes last;
      - `target["labels"]`: int64 `[N]` contiguous labels (see `CategoryMap`), `CROWD_LABEL` for crowd boxes;
      - `target["image_id"]`: int, the COCO image id; `target["orig_size"]`: `(h, w)` of the image's frame;
      - `target["scale"]`: `(sy, sx)` = transformed size / frame size, present when the transform only resizes
        (no transform, or `build_eval_transforms`); divide predicted boxes by it to get frame coordinates.

    An image's frame is the JSON's `height` x `width` (`frame`), whatever size the file decodes to: the ground
    truth is in that frame and pycocotools scores results against it, so every result for an annotated split must
    be in it too. When the file differs (a dataset resized after labelling, a JSON written for the displayed size),
    the boxes are mapped onto the decoded pixels for the transform (`_raw_item`), and the evaluation runner maps
    detections back from the transformed image to `orig_size` with one factor per axis.

    `validated` is `(data, report)` from a validation already run on `ann_file` (`birddet.data.check`), so the
    trainer reads and checks each file once.

    `category_map` is the model's (a checkpoint's, or the training file's for a val split); this file's categories
    are matched to it by name (`category_alignment`, see `align_categories`), so a file that numbers the same birds
    differently still gets the model's labels, and a category its boxes use that the model lacks is an `InputError`.

    `transforms(image_uint8_hwc, boxes_xyxy, labels) -> (image_tensor, boxes, labels)` (see `data.transforms`).

    Bad images at training time: a file that fails to decode is logged, recorded in `self.skipped`
    (path -> reason; per process, so with DataLoader workers the log is the complete record) and replaced by the
    next index that decodes, so one corrupt file does not end a long run. Pass `skip_bad_images=False` (evaluation)
    to raise `ImageLoadError` instead, since a substitute would be scored under the wrong image id
    (`engine.runner.run_detector` refuses a dataset that substitutes).
    """

    def __init__(
        self,
        ann_file: str | os.PathLike[str],
        image_root: str | os.PathLike[str],
        transforms: Any = None,
        *,
        category_map: CategoryMap | None = None,
        check_files: bool = True,
        skip_bad_images: bool = True,
        validated: tuple[dict[str, Any], ValidationReport] | None = None,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_root = Path(image_root)
        self.transforms = transforms
        self.skip_bad_images = skip_bad_images
        if validated is None:
            validated = load_coco_dataset(self.ann_file, self.image_root, check_files=check_files)
        self.coco, self.report = validated
        self.category_map = category_map or CategoryMap.from_categories(self.coco["categories"])
        self.category_alignment = align_categories(
            self.category_map,
            {c["id"]: c["name"] for c in self.coco["categories"]},
            used={a["category_id"] for a in self.coco["annotations"]},
            dataset_source=str(self.ann_file),
        )
        self.images = {img["id"]: img for img in self.coco["images"]}
        self.image_ids: list[int] = sorted(self.images)
        self.anns_by_image: dict[int, list[dict[str, Any]]] = {i: [] for i in self.image_ids}
        for ann in self.coco["annotations"]:
            self.anns_by_image[ann["image_id"]].append(ann)
        self.skipped: dict[str, str] = {}
        self.pixel_cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.image_ids)

    def frame(self, index: int) -> tuple[int, int]:
        """`(height, width)` of image `index` as the JSON gives it: the frame its ground truth and results are in."""
        info = self.images[self.image_ids[index]]
        return int(info["height"]), int(info["width"])

    def aspect_ratios(self) -> list[float]:
        """Width / height of each image from the JSON (no decoding), in `image_ids` order, for aspect grouping."""
        return [self.images[i]["width"] / self.images[i]["height"] for i in self.image_ids]

    def image_path(self, index: int) -> Path:
        return self.image_root / self.images[self.image_ids[index]]["file_name"]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if not self.skip_bad_images:
            return self._load_item(index)
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                return self._load_item(i)
            except ImageLoadError as e:
                path = str(self.image_path(i))
                if path not in self.skipped:
                    log.warning("skipping bad image (using the next one instead): %s", e)
                self.skipped[path] = str(e)
        raise InputError(f"{self.ann_file}: no image in the dataset could be decoded; see the warnings above")

    def _load_item(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.image_ids[index]
        pixels, boxes, labels = self._raw_item(index)
        frame_h, frame_w = self.frame(index)  # not the decoded size: cached pixels are shrunk, files may be resized
        image, boxes_t, labels_t, resized_only = self._apply_transforms(pixels, boxes, labels, self._extra_items())
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes_t, dtype=np.float32)).reshape(-1, 4),
            "labels": torch.as_tensor(np.asarray(labels_t, dtype=np.int64)).reshape(-1),
            "image_id": int(image_id),
            "orig_size": (frame_h, frame_w),
        }
        if resized_only:
            target["scale"] = (image.shape[-2] / frame_h, image.shape[-1] / frame_w)
        return image, target

    def _raw_item(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decoded pixels with their xyxy boxes (in those pixels) and labels, before any transform."""
        image_id = self.image_ids[index]
        info = self.images[image_id]
        pixels = self.pixel_cache.get(index)
        if pixels is None:
            pixels = self._load_pixels(index)
        boxes, labels = self._targets(image_id)
        if (pixels.shape[1], pixels.shape[0]) != (info["width"], info["height"]):
            boxes = _rescale_boxes(boxes, (info["width"], info["height"]), (pixels.shape[1], pixels.shape[0]))
        return pixels, boxes, labels

    def _extra_items(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Other random samples for a transform that mixes images (mosaic, copy-paste); none for the others.

        Drawn from NumPy's global RNG, which the trainer seeds per sample; an undecodable one is left out (the
        transform copes with fewer), since the sample itself is fine.
        """
        count = int(getattr(self.transforms, "extra_images", 0))
        items = []
        for j in np.random.randint(len(self), size=count) if count else ():
            try:
                items.append(self._raw_item(int(j)))
            except ImageLoadError as e:
                self.skipped[str(self.image_path(int(j)))] = str(e)
        return items

    def cache_pixels(self, max_side: int, *, max_bytes: int | None = None, threads: int | None = None) -> bool:
        """Decode every image once and keep it in RAM, shrunk to `max_side` on its longest side (YOLO's `cache=ram`).

        Why: on a CPU, decoding and shrinking a 1920 px photo costs about as much per sample as a fifth of a training
        step at 192 px, and a mosaic needs four photos per sample. The shrink is the first step of the training
        transform (`TrainTransform` brings the longest side to the input size with the same area-averaging resize),
        so with `max_side` = the input size the training pixels are the same as without the cache; boxes follow
        through `_raw_item`'s size check. Only for training sets: evaluation maps boxes back to the original size.

        The cache is filled here, in the calling process, so DataLoader workers forked later share its pages
        instead of each decoding again. An image that fails to decode is reported here and left out; training then
        skips it as it would without the cache. When the estimated size (from the JSON's image sizes) is over `max_bytes` (default: half the
        memory available now, where the OS tells), nothing is cached and a warning says so; returns whether it cached.
        """
        from concurrent.futures import ThreadPoolExecutor

        from birddet.data.transforms import build_eval_transforms

        need = sum(_cached_bytes(self.images[i]["width"], self.images[i]["height"], max_side) for i in self.image_ids)
        limit = max_bytes if max_bytes is not None else _half_available_memory()
        if limit is not None and need > limit:
            log.warning(
                "data.cache_images: %s would need %.1f GiB of RAM for %d images at %d px, over the %.1f GiB allowed; "
                "training goes on without the cache (lower model.image_size or free memory to use it)",
                self.ann_file, need / 2**30, len(self), max_side, limit / 2**30,
            )  # fmt: skip
            return False
        shrink = build_eval_transforms(max_side).resize_image

        def load(index: int) -> tuple[int, np.ndarray | None]:
            try:
                return index, shrink(self._load_pixels(index))
            except ImageLoadError as e:
                log.warning("skipping bad image (training uses the next one instead): %s", e)
                self.skipped[str(self.image_path(index))] = str(e)
                return index, None

        with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
            for index, pixels in pool.map(load, range(len(self))):  # Pillow and OpenCV release the GIL
                if pixels is not None:
                    self.pixel_cache[index] = pixels
        log.info(
            "data.cache_images: %d images of %s kept decoded at %d px (%.0f MiB)",
            len(self.pixel_cache), self.ann_file, max_side, sum(p.nbytes for p in self.pixel_cache.values()) / 2**20,
        )  # fmt: skip
        return True

    def _load_pixels(self, index: int) -> np.ndarray:
        """Decode to uint8 HWC; undo the EXIF rotation when the JSON size matches the raw (unrotated) pixels."""
        path = self.image_path(index)
        info = self.images[self.image_ids[index]]
        img = load_image(path)
        expected = (info["width"], info["height"])
        if img.size != expected and img.size == expected[::-1]:
            raw = load_image(path, apply_exif=False)
            if raw.size == expected:
                return np.asarray(raw)
        if img.size != expected:
            log.warning(
                "%s: image is %dx%d but %s says %dx%d (image id %d); its boxes are rescaled to the file for "
                "training, and evaluation reports detections in the JSON's %dx%d",
                path, *img.size, self.ann_file, *expected, info["id"], *expected,
            )  # fmt: skip
        return np.asarray(img)

    def _targets(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """An image's boxes as xyxy float32 plus their contiguous labels: the training targets first, then the
        crowd boxes (`is_ignore_region`; VOC difficult birds are targets) labelled `CROWD_LABEL`.

        Crowd boxes are no targets, but they travel with the targets through every transform so that the detector
        can keep anchors and proposals on them out of the background sample (`birddet.models.ignore_regions`).
        Dropping them, as torchvision's references do, left those birds' pixels to be learnt as background.
        Targets come first so that the k-th annotation that is no ignore region is box k (`CocoCrops` relies on it).
        """
        anns = self.anns_by_image[image_id]
        anns = [a for a in anns if not is_ignore_region(a)] + [a for a in anns if is_ignore_region(a)]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = [CROWD_LABEL if is_ignore_region(a) else self.category_alignment.label(a["category_id"]) for a in anns]
        return boxes, np.array(labels, dtype=np.int64)

    def _apply_transforms(
        self, pixels: np.ndarray, boxes: np.ndarray, labels: np.ndarray, extra: list[Any]
    ) -> tuple[torch.Tensor, Any, Any, bool]:
        """The transformed image, boxes and labels, and whether the transform only resized (none does not even that)."""
        if self.transforms is None:
            return to_tensor(pixels), boxes, labels, True
        if extra:
            image, boxes_t, labels_t = self.transforms(pixels, boxes, labels, extra)
        else:
            image, boxes_t, labels_t = self.transforms(pixels, boxes, labels)
        return image, boxes_t, labels_t, bool(getattr(self.transforms, "resize_only", False))

    @staticmethod
    def collate_fn(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        """Keep images as a list: detection images differ in size and torchvision batches them itself."""
        images, targets = zip(*batch) if batch else ((), ())
        return list(images), list(targets)


def _cached_bytes(width: int, height: int, max_side: int) -> int:
    """Bytes of an RGB image once its longest side is brought to `max_side` (the training transform's first step)."""
    f = max_side / max(width, height)
    return max(1, round(width * f)) * max(1, round(height * f)) * 3


def _half_available_memory() -> int | None:
    """Half of the memory the OS says is available now, or None where it does not say (the cache is then unlimited)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return None


def _rescale_boxes(boxes: np.ndarray, from_wh: tuple[int, int], to_wh: tuple[int, int]) -> np.ndarray:
    """Map boxes annotated on an image of size `from_wh` onto the same image stored at `to_wh`."""
    sx, sy = to_wh[0] / from_wh[0], to_wh[1] / from_wh[1]
    return boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
