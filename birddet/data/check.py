"""The validation report of a COCO split: what `birddet train` runs on both splits before step 1, and what
`birddet check` prints.

One function (`check_split`) finds every problem in a split instead of stopping at the first, so a user fixes a file
in one pass. What is fatal depends on the split's role:

- always fatal: malformed records, duplicate or unknown ids, file names escaping the image root, missing image
  files, and categories that the label map (the training file's, or a resumed checkpoint's) does not know, matched
  by name (`align_categories`: a val file may number the same birds differently), or two categories with one name;
- fatal for a validation split, a warning for a training split: boxes that validation would drop (NaN, zero or
  negative size, far outside the image) and image files whose header cannot be read. Training drops such a box or
  skips such an image and goes on (long runs skip and report, docs/your-files.md), but a validation split must be scored
  exactly as written: `birddet eval` scores the file itself, so a silently dropped box would make the run's
  metrics disagree with `birddet eval`, and an unreadable val image stops the first evaluation hours into a run;
- warnings: boxes clipped to the image, and (with `read_headers`) images whose real size differs from the JSON's
  `width`/`height` (the dataset then rescales their boxes, which is right only if the image was resized).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from birddet.data.categories import CategoryMap, align_categories
from birddet.data.coco_validation import (
    MAX_IDS_SHOWN,
    ValidationReport,
    escapes_root,
    fatal_message,
    first_ids,
    validate_coco_file,
)
from birddet.data.images import ImageLoadError, image_size
from birddet.errors import InputError

__all__ = ["SplitCheck", "check_split", "check_training_splits"]

ROLES = ("train", "val")


@dataclass
class SplitCheck:
    """The result of `check_split`: the validated data, what was found, and which findings are fatal."""

    role: str
    ann_file: str
    image_root: str
    data: dict[str, Any]
    report: ValidationReport
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    boxes_per_category: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        """A multi-line report: counts, then every fatal problem, then every warning."""
        r = self.report
        lines = [
            f"{self.ann_file} (checked as a {self.role} split; images under {self.image_root})",
            f"  {r.num_images} images ({r.num_negative_images} without boxes), {r.num_annotations} usable annotations "
            f"({r.num_crowd} crowd), {r.num_dropped} dropped, {len(r.clipped)} clipped",
        ]
        if self.boxes_per_category:
            per = ", ".join(f"{name}: {n}" for name, n in self.boxes_per_category.items())
            lines.append(f"  boxes per category: {per}")
        lines.append(f"  {len(self.errors)} fatal problem(s), {len(self.warnings)} warning(s)")
        lines += [f"  FATAL {e}" for e in self.errors]
        lines += [f"  warning {w}" for w in self.warnings]
        return "\n".join(lines)


def check_split(
    ann_file: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    *,
    role: str = "train",
    category_map: CategoryMap | None = None,
    check_files: bool = True,
    read_headers: bool = False,
) -> SplitCheck:
    """Validate one COCO split completely; never raises for problems inside the file (see the module docstring).

    `category_map` is the label map the detector will use; categories the file's annotations use outside it (by
    name) are fatal. Two categories with one name are fatal with or without it. `read_headers` opens every image
    header (no decoding) to find unreadable files and size mismatches.
    """
    if role not in ROLES:
        raise InputError(f"unknown split role {role!r}; use one of {ROLES}")
    data, report = validate_coco_file(ann_file, image_root, check_files=check_files)
    check = SplitCheck(
        role=role, ann_file=str(ann_file), image_root=str(image_root), data=data, report=report,
        errors=list(report.errors),
    )  # fmt: skip
    for ids, what in report.box_problems():
        line = f"{report.ann_file}: {len(ids)} annotation(s) {what}; annotation ids {first_ids(ids)}"
        if role == "val":
            check.errors.append(f"{line}; a validation split is scored as written, so fix or delete them")
        else:
            check.warnings.append(line)
    if report.clipped:
        check.warnings.append(
            f"{report.ann_file}: {len(report.clipped)} annotation(s) clipped to their image; annotation ids "
            f"{first_ids(report.clipped)}"
        )
    if category_map is not None:
        _check_categories_known(check, category_map)
    elif (own := _own_category_map(check)) is not None:  # two categories with one name, found by the same rule
        _check_categories_known(check, own, model_source=check.ann_file)
    if read_headers and Path(image_root).is_dir():
        _check_headers(check)
    names = {c["id"]: c["name"] for c in data["categories"] if isinstance(c, dict) and "id" in c}
    counts = Counter(names.get(a["category_id"], str(a["category_id"])) for a in data["annotations"])
    check.boxes_per_category = dict(sorted(counts.items()))
    return check


def _check_categories_known(check: SplitCheck, category_map: CategoryMap, model_source: str = "the model") -> None:
    """Match the split's categories to the label map by name (`align_categories`, the rule training and eval use);
    a used category the map lacks, or two categories with one name, is fatal."""
    names = {
        c["id"]: c["name"]
        for c in check.data["categories"]
        if isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)
    }  # bad records are already errors
    used: dict[int, list[int]] = {}
    for a in check.data["annotations"]:
        used.setdefault(a["category_id"], []).append(a["id"])
    try:
        alignment = align_categories(
            category_map, names, used=used, dataset_source=check.ann_file, model_source=model_source, strict=False
        )
    except InputError as e:  # two categories with one name
        check.errors.append(str(e))
        return
    if alignment.unknown:
        detail = "; ".join(f"category_id {c} in annotation ids {first_ids(used[c])}" for c in alignment.unknown)
        check.errors.append(
            f"{check.ann_file}: categories unknown to the model's label map ({detail}): {alignment.unknown_message()}"
        )


def _own_category_map(check: SplitCheck) -> CategoryMap | None:
    """The split's usable categories as a label map; None when it has none or repeats an id (already errors)."""
    cats = [
        c
        for c in check.data["categories"]
        if isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)
    ]
    try:
        return CategoryMap.from_categories(cats) if cats else None
    except InputError:
        return None


def _check_headers(check: SplitCheck) -> None:
    """Open every image header: unreadable files, and sizes that match neither the JSON nor its transpose."""
    root = Path(check.image_root)
    unreadable, mismatched = [], []
    for img in check.data["images"]:
        if not isinstance(img, dict) or not isinstance(img.get("file_name"), str) or escapes_root(img["file_name"]):
            continue
        path = root / img["file_name"]
        if not path.is_file():
            continue  # already reported as missing
        try:
            shown = image_size(path)
        except ImageLoadError as e:
            unreadable.append(f"{img.get('id')}: {e}")
            continue
        raw = image_size(path, apply_exif=False)
        expected = (img.get("width"), img.get("height"))
        if expected not in (shown, raw):
            mismatched.append(
                f"{img.get('id')}: {img['file_name']} is {shown[0]}x{shown[1]}, JSON {expected[0]}x{expected[1]}"
            )
    if unreadable:
        line = f"{check.ann_file}: {len(unreadable)} unreadable image(s): " + "; ".join(unreadable[:MAX_IDS_SHOWN])
        if check.role == "val":
            check.errors.append(f"{line}; evaluation cannot skip images, so remove them from the split")
        else:
            check.warnings.append(f"{line}; training will skip them")
    if mismatched:
        check.warnings.append(
            f"{check.ann_file}: {len(mismatched)} image(s) whose size differs from the JSON (their boxes are rescaled "
            f"to the real size): image ids {first_ids(mismatched)}"
        )


def check_training_splits(
    train: tuple[str, str], val: tuple[str, str], categories: dict[int, str] | None = None
) -> tuple[SplitCheck, SplitCheck]:
    """Validate the train and val splits before training; raise one `InputError` listing every fatal problem in both.

    `categories` (a resumed checkpoint's) fixes the label map; otherwise the training file's categories define it.
    Either way both splits are matched to it by name, so a split that numbers the same birds differently trains
    and scores correctly, and one with a bird the map lacks is fatal. Val image headers are read because evaluation
    cannot skip a bad image.
    """
    cmap = CategoryMap.from_dict(categories) if categories else None
    train_check = check_split(*train, role="train", category_map=cmap)
    if cmap is None:  # the training file's usable categories, even when it has other problems
        cmap = _own_category_map(train_check)
        if cmap is not None:
            try:
                align_categories(cmap, cmap.as_dict(), used=())
            except InputError:  # two categories with one name: already one of the training file's errors
                cmap = None
    val_check = check_split(*val, role="val", category_map=cmap, read_headers=True)
    errors = train_check.errors + val_check.errors
    for split, check in (("train", train_check), ("val", val_check)):
        if not check.data["images"]:
            errors.append(f"{check.ann_file}: the {split} split has no images")
    if errors:
        raise InputError(fatal_message(errors))
    return train_check, val_check
