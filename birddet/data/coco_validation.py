"""Reading and validating a COCO detection file: every structural problem at once, bad boxes repaired or dropped.

Validation happens at load time so that a bad file fails in the first second with a message naming the ids, not
after an hour of training. Structural problems (malformed JSON, missing keys, wrong types, duplicate ids, unknown
image or category ids, file names escaping the image root, missing image files) raise `InputError`. Problems with
single boxes are repaired or dropped and counted in a `ValidationReport`:

- Box tolerance: an edge may lie outside the image by up to `max(2 px, 1 % of that image side)`; such boxes are
  clipped to the image (annotation tools often round or overshoot by a pixel). A box further outside is "far
  outside" and dropped: it means the annotation does not belong to this image size.
- NaN/infinite coordinates and non-positive width or height are dropped.
- Images without any usable box are kept as negatives (they teach the detector what is not a bird).

Apart from the dataset (`birddet.data.coco`) because checking a file needs no torch: `birddet check`, the format
converters (`check_box` is the one box rule they share with training), `split` and `stats` read files through here.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from birddet.errors import InputError

__all__ = [
    "CLIP_TOLERANCE_FRAC",
    "CLIP_TOLERANCE_PX",
    "MAX_IDS_SHOWN",
    "ValidationReport",
    "check_box",
    "escapes_root",
    "fatal_message",
    "first_ids",
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
