"""What every converter shares: a COCO dataset built image by image, boxes checked by the loader's own rule, and an
atomic write that records the image root.

Boxes go through `birddet.data.coco_validation.check_box`, the rule training applies: clipped when an edge is at most
`max(2 px, 1 %)` outside the image, dropped (and reported by annotation id) when NaN, empty or further outside. A
converted file therefore holds exactly the boxes training will use, and the report says which ones were touched.

The image root is the folder every `file_name` is relative to. It goes into the output's `info.image_root` (an
absolute path) and is printed, so `birddet train ... data.train.images=<root>` and `birddet check --images <root>`
work without guessing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from birddet import __version__
from birddet.data.coco_validation import ValidationReport, check_box, first_ids
from birddet.errors import InputError
from birddet.fileio import atomic_write_json

__all__ = ["ConversionResult", "CocoBuilder", "relative_to_root"]


@dataclass
class ConversionResult:
    """What a conversion wrote and what it had to repair or skip, for the command to print."""

    path: Path
    image_root: Path
    num_images: int
    num_annotations: int
    num_negative: int
    categories: dict[int, str]
    report: ValidationReport
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        cats = ", ".join(f"{i}: {n}" for i, n in self.categories.items())
        lines = [
            f"{self.path}: {self.num_images} images ({self.num_negative} without boxes), "
            f"{self.num_annotations} boxes, categories {{{cats}}}",
            f"image root: {self.image_root}  (use data.train.images={self.image_root} / --images {self.image_root})",
            *self.notes,
        ]
        return "\n".join(lines)


class CocoBuilder:
    """Accumulates images, categories and boxes; `write` checks nothing more, everything was checked on the way in.

    `classes` fixes category ids to `1..K` in the given order (so separately converted splits agree); otherwise
    categories get ids `1..K` in order of `sorted(names)` when written, deterministic whatever the file order.
    """

    def __init__(self, where: str, classes: Iterable[str] | None = None) -> None:
        self.where = where
        self.fixed = list(classes) if classes is not None else None
        self.images: list[dict[str, Any]] = []
        self.anns: list[dict[str, Any]] = []  # category_id holds the *name* until `write`
        self.report = ValidationReport(ann_file=where)
        self.notes: list[str] = []
        self._image_ids: dict[str, int] = {}
        self._sources: dict[int, str] = {}

    def add_image(self, file_name: str, width: int, height: int, **extra: Any) -> int:
        """Register an image (once per file name) and return its id."""
        if file_name in self._image_ids:
            return self._image_ids[file_name]
        image_id = len(self.images) + 1
        self.images.append(
            {"id": image_id, "file_name": file_name, "width": int(width), "height": int(height), **extra}
        )
        self._image_ids[file_name] = image_id
        return image_id

    def add_box(
        self,
        image_id: int,
        name: str,
        xyxy: tuple[float, float, float, float],
        *,
        source: str,
        iscrowd: int = 0,
        difficult: bool = False,
    ) -> None:
        """Add a box given in continuous pixel coordinates (x1, y1, x2, y2) of the image as displayed.

        `source` says where the box came from in the input ("a.xml object 2", "labels/a.txt line 3"): dropped boxes
        have no id in the output, so the report names them by source.
        """
        if self.fixed is not None and name not in self.fixed:
            raise InputError(f"{self.where}: class {name!r} is not in --classes {self.fixed}; add it or fix the label")
        img = self.images[image_id - 1]
        x1, y1, x2, y2 = (float(v) for v in xyxy)
        ann = {"id": len(self.anns) + 1, "image_id": image_id, "category_id": name, "bbox": [x1, y1, x2 - x1, y2 - y1]}
        self._sources[ann["id"]] = source
        box = check_box(ann, img["width"], img["height"], self.report)
        if box is None:
            self.anns.append({**ann, "dropped": True})  # keeps ids stable so the report's ids are the file's ids
            return
        ann["bbox"] = box
        ann["area"] = box[2] * box[3]
        ann["iscrowd"] = int(iscrowd)
        if difficult:  # one real bird, hard to see: scored as ignored, trained as a positive (`is_ignore_region`)
            ann["iscrowd"], ann["difficult"] = 1, 1
        self.anns.append(ann)

    def category_ids(self) -> dict[str, int]:
        names = self.fixed if self.fixed is not None else sorted({a["category_id"] for a in self.anns})
        return {name: i + 1 for i, name in enumerate(names)}

    def to_dict(self, image_root: Path, source: str) -> dict[str, Any]:
        ids = self.category_ids()
        anns = [{**a, "category_id": ids[a["category_id"]]} for a in self.anns if not a.get("dropped")]
        return {
            "info": {
                "description": f"converted by birddet {__version__} from {source}",
                "image_root": str(image_root),
                "birddet_version": __version__,
            },
            "images": self.images,
            "annotations": anns,
            "categories": [{"id": i, "name": n} for n, i in ids.items()],
        }

    def write(self, out: str | os.PathLike[str], image_root: Path, source: str) -> ConversionResult:
        if not self.images:
            raise InputError(f"{self.where}: no images found to convert; check the path and the layout")
        data = self.to_dict(image_root, source)
        atomic_write_json(out, data, indent=1)
        with_boxes = {a["image_id"] for a in data["annotations"] if not a.get("iscrowd")}
        self.report.num_images = len(data["images"])
        self.report.num_annotations = len(data["annotations"])
        for ids, what in self.report.box_problems():
            self.note(f"box(es) {what}", [self._sources[i] for i in ids])
        self.note(
            "box(es) slightly outside their image, clipped (annotation ids in the output: "
            f"{first_ids(self.report.clipped)})",
            [self._sources[i] for i in self.report.clipped],
        )
        return ConversionResult(
            path=Path(out),
            image_root=image_root,
            num_images=len(data["images"]),
            num_annotations=len(data["annotations"]),
            num_negative=len(data["images"]) - len(with_boxes),
            categories={c["id"]: c["name"] for c in data["categories"]},
            report=self.report,
            notes=self.notes,
        )

    def note(self, what: str, items: list[str]) -> None:
        """Record a skipped/repaired kind of item (shown with the first few names) for the summary."""
        if items:
            self.notes.append(f"{self.where}: {len(items)} {what}: {first_ids(items)}")


def relative_to_root(path: Path, root: Path) -> str:
    """`path` relative to `root` with `/` separators; an image outside the root is an error (it could not load)."""
    try:  # abspath, not resolve: a symlinked image inside the root stays inside it
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        raise InputError(
            f"image {path} is outside the image root {root}; pass an --images folder that contains every image"
        ) from None
