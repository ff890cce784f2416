"""Box tables (DeepForest / BirdDetector / aerial-survey CSVs) <-> COCO.

One row per box: `image_path,xmin,ymin,xmax,ymax,label` in any column order (a header row is required), boxes in
absolute pixels of the image as displayed, continuous coordinates (`xmax - xmin` is the width; DeepForest's
convention). Other column names are mapped with `columns={"image_path": "file", "label": "species", ...}`
(`--columns image_path=file,label=species`); extra columns are ignored.

A row whose four coordinates are all 0 or empty is an image without birds (DeepForest writes negatives that way),
and so is an image listed only in such rows. `image_path` is relative to the image root (`--images`); a bare file
name is looked up in the root. Rows naming a missing or unreadable image are listed and skipped.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from birddet.data.formats.builder import CocoBuilder, ConversionResult, relative_to_root
from birddet.data.images import ImageLoadError, image_size
from birddet.errors import InputError
from birddet.fileio import atomic_write_csv

__all__ = ["COLUMNS", "convert_csv", "parse_columns", "write_csv"]

COLUMNS = ("image_path", "xmin", "ymin", "xmax", "ymax", "label")


def parse_columns(spec: str | None) -> dict[str, str]:
    """`"image_path=file,label=species"` -> {"image_path": "file", "label": "species"}; keys must be known columns."""
    if not spec:
        return {}
    out = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in COLUMNS or not value:
            raise InputError(f"--columns {spec!r}: each item must be COLUMN=NAME with COLUMN one of {COLUMNS}")
        out[key] = value
    return out


def convert_csv(
    table: str | os.PathLike[str],
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    columns: dict[str, str] | None = None,
    classes: list[str] | None = None,
) -> ConversionResult:
    """Convert a box table into one COCO file; see the module docstring."""
    table, root = Path(table), Path(images)
    if not table.is_file():
        raise InputError(f"{table}: CSV file not found")
    if not root.is_dir():
        raise InputError(f"{root}: image folder not found (--images)")
    names = {c: (columns or {}).get(c, c) for c in COLUMNS}
    builder = CocoBuilder(str(table), classes)
    missing, bad_rows = [], []
    sizes: dict[str, tuple[int, int] | None] = {}
    with open(table, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        absent = [f"{c} (column {n!r})" if n != c else c for c, n in names.items() if n not in header]
        if absent:
            raise InputError(
                f"{table}: missing column(s) {', '.join(absent)}; the header is {header}. "
                "Map other names with --columns image_path=NAME,label=NAME,..."
            )
        for line, row in enumerate(reader, start=2):
            rel = (row[names["image_path"]] or "").strip()
            if rel not in sizes:
                sizes[rel] = _size(root / rel, missing)
            if sizes[rel] is None:
                continue
            width, height = sizes[rel]  # type: ignore[misc]
            image_id = builder.add_image(relative_to_root(root / rel, root), width, height)
            coords = [(row[names[k]] or "").strip() for k in ("xmin", "ymin", "xmax", "ymax")]
            if all(c in ("", "0", "0.0") for c in coords):
                continue  # a negative image
            label = (row[names["label"]] or "").strip()
            try:
                xyxy = tuple(float(c) for c in coords)
            except ValueError:
                xyxy = (math.nan,) * 4
            if not label:
                bad_rows.append(f"line {line}: no label")
                continue
            builder.add_box(image_id, label, xyxy, source=f"{table.name} line {line}")  # type: ignore[arg-type]
    builder.note("row(s) naming a missing or unreadable image, skipped", missing)
    builder.note("row(s) without a label, skipped", bad_rows)
    return builder.write(out, root.absolute(), f"CSV {table}")


def _size(path: Path, missing: list[str]) -> tuple[int, int] | None:
    try:
        return image_size(path)
    except ImageLoadError as e:
        missing.append(str(e))
        return None


def write_csv(coco: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Write `coco` as a DeepForest-style table (negatives as all-zero rows); used to export and by round trips."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in coco["images"]}
    for a in coco["annotations"]:
        if not a.get("iscrowd"):
            by_image[a["image_id"]].append(a)
    rows: list[list[Any]] = [list(COLUMNS)]
    for img in coco["images"]:
        anns = by_image[img["id"]]
        for a in anns:
            x, y, w, h = a["bbox"]
            rows.append([img["file_name"], repr(x), repr(y), repr(x + w), repr(y + h), names[a["category_id"]]])
        if not anns:
            rows.append([img["file_name"], "0", "0", "0", "0", ""])
    return atomic_write_csv(out, rows, lineterminator="\n")
