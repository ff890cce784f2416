"""Pseudo-labels: `birddet predict` output turned into training annotations, optionally merged into ground truth.

The loop is: train on what is labelled, predict on unlabelled images, keep confident detections as labels, check
them (`birddet stats` gallery), train again. Rules:

- Input is `birddet predict`'s `coco.json` (or its output folder). Detections with `score >= min_score` become
  annotations; the prediction-only fields (`score`, species, roll-up) are dropped, the score is kept as
  `pseudo_score` so a later filter can still see it.
- With `merge`, images and categories are matched **by name**: an image by its `file_name` (exactly, else by its
  base name when exactly one ground-truth image has it), a category by its `name`. Predictions on images that the ground
  truth does not have are added as new images; categories the ground truth lacks are added with new ids.
- Ground truth wins: a pseudo-box of the same category that overlaps a ground-truth box with IoU >= `iou` (0.5) is
  dropped, since the person who labelled the image already decided about that bird. Ground-truth annotations are
  copied unchanged, ids included; new images and annotations get ids above the ground truth's largest.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import box_iou

from birddet import __version__
from birddet.data.coco_validation import _is_int, _is_number, load_coco_dataset
from birddet.errors import InputError
from birddet.fileio import atomic_write_json

__all__ = ["convert_predictions"]


def _read_predictions(src: Path) -> dict[str, Any]:
    path = src / "coco.json" if src.is_dir() else src
    if not path.is_file():
        raise InputError(f"{src}: no birddet predict output found (expected a coco.json, or a folder holding one)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from e
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise InputError(f"{path}: not a COCO file with images and annotations; pass birddet predict's coco.json")
    if data["annotations"] and not all(isinstance(a, dict) and "score" in a for a in data["annotations"]):
        raise InputError(f"{path}: annotations have no 'score'; this is not prediction output")
    _check_records(path, data)
    return data


_FIX = "this is not birddet predict output, or it was edited; run birddet predict again"


def _check_records(path: Path, data: dict[str, Any]) -> None:
    """Every field the conversion reads must be there with its type, or the first bad record is named (by its
    list position and id) in a one-line `InputError`; a hand-edited file must not end in a `KeyError`."""
    for n, img in enumerate(data["images"]):
        tag = f"images[{n}]" + (f" (id {img.get('id')!r})" if isinstance(img, dict) else "")
        if not isinstance(img, dict):
            raise InputError(f"{path}: {tag} is not an object; {_FIX}")
        if not _is_int(img.get("id")):
            raise InputError(f"{path}: {tag} has no integer 'id'; {_FIX}")
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise InputError(f"{path}: {tag} has no 'file_name'; {_FIX}")
        for key in ("width", "height"):
            if not _is_int(img.get(key)) or img[key] <= 0:
                raise InputError(f"{path}: {tag} needs a positive integer {key!r}, got {img.get(key)!r}; {_FIX}")
    for n, ann in enumerate(data["annotations"]):
        tag = f"annotations[{n}] (id {ann.get('id')!r})"
        for key in ("image_id", "category_id"):
            if not _is_int(ann.get(key)):
                raise InputError(f"{path}: {tag} needs an integer {key!r}, got {ann.get(key)!r}; {_FIX}")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_finite(v) for v in bbox):
            raise InputError(f"{path}: {tag} needs 'bbox' [x, y, width, height] of 4 numbers, got {bbox!r}; {_FIX}")
        if not _is_finite(ann["score"]):
            raise InputError(f"{path}: {tag} needs a numeric 'score', got {ann['score']!r}; {_FIX}")
    for n, cat in enumerate(data.get("categories") or []):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise InputError(f"{path}: categories[{n}] needs an integer 'id' and a string 'name', got {cat!r}; {_FIX}")


def _is_finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


def convert_predictions(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    min_score: float,
    merge: str | os.PathLike[str] | None = None,
    images: str | os.PathLike[str] | None = None,
    iou: float = 0.5,
) -> dict[str, Any]:
    """Write pseudo-labels (merged into `merge` when given) to `out`; returns counts and the image root."""
    if not 0.0 <= min_score <= 1.0:
        raise InputError(f"--min-score must be in [0, 1], got {min_score}")
    preds = _read_predictions(Path(src))
    pred_cats = {c["id"]: c["name"] for c in preds.get("categories", [])}
    if merge is not None:
        gt, _ = load_coco_dataset(merge, images or ".", check_files=False)
        root = images or gt.get("info", {}).get("image_root")
    else:
        gt = {"images": [], "annotations": [], "categories": []}
        root = images
    result: dict[str, Any] = {
        "info": {
            "description": f"birddet pseudo-labels (score >= {min_score}) from {src}"
            + (f" merged into {merge}" if merge else ""),
            "birddet_version": __version__,
            **({"image_root": str(Path(root).absolute())} if root else {}),
        },
        "images": list(gt["images"]),
        "annotations": list(gt["annotations"]),
        "categories": list(gt["categories"]),
    }
    cat_by_name = {c["name"]: c["id"] for c in result["categories"]}
    image_index = _ImageIndex(result["images"])
    next_img = max((i["id"] for i in result["images"]), default=0) + 1
    next_ann = max((a["id"] for a in result["annotations"]), default=0) + 1
    gt_boxes: dict[int, list[dict[str, Any]]] = {}
    for a in result["annotations"]:
        gt_boxes.setdefault(a["image_id"], []).append(a)

    pred_images = {img["id"]: img for img in preds["images"]}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in preds["annotations"]:
        if float(a["score"]) >= min_score:
            by_image.setdefault(a["image_id"], []).append(a)
    counts = {"kept": 0, "below_score": len(preds["annotations"]), "overlap_gt": 0, "new_images": 0}
    counts["below_score"] -= sum(len(v) for v in by_image.values())
    for pred_id, anns in sorted(by_image.items()):
        pimg = pred_images.get(pred_id)
        if pimg is None:
            raise InputError(f"{src}: annotation of unknown image id {pred_id}; the prediction file is damaged")
        target = image_index.find(pimg["file_name"])
        if target is None:
            target = {**{k: pimg[k] for k in ("file_name", "width", "height")}, "id": next_img}
            next_img += 1
            result["images"].append(target)
            image_index.add(target)
            counts["new_images"] += 1
        for a in anns:
            name = pred_cats.get(a["category_id"], str(a["category_id"]))
            if name not in cat_by_name:
                cat_by_name[name] = max(cat_by_name.values(), default=0) + 1
                result["categories"].append({"id": cat_by_name[name], "name": name})
            cid = cat_by_name[name]
            same = [g["bbox"] for g in gt_boxes.get(target["id"], []) if g["category_id"] == cid]
            if same and _max_iou(a["bbox"], same) >= iou:
                counts["overlap_gt"] += 1
                continue
            x, y, w, h = (float(v) for v in a["bbox"])
            result["annotations"].append(
                {"id": next_ann, "image_id": target["id"], "category_id": cid, "bbox": [x, y, w, h],
                 "area": w * h, "iscrowd": 0, "pseudo_score": float(a["score"])}
            )  # fmt: skip
            next_ann += 1
            counts["kept"] += 1
    atomic_write_json(out, result, indent=1)
    return {**counts, "out": str(out), "image_root": result["info"].get("image_root")}


def _max_iou(box: list[float], others: list[list[float]]) -> float:
    def xyxy(b: list[float]) -> list[float]:
        return [b[0], b[1], b[0] + b[2], b[1] + b[3]]

    ious = box_iou(
        torch.tensor([xyxy(box)], dtype=torch.float64), torch.tensor([xyxy(o) for o in others], dtype=torch.float64)
    )
    return float(ious.max())


class _ImageIndex:
    """Find a ground-truth image by file name, else by base name when that is unique."""

    def __init__(self, images: list[dict[str, Any]]) -> None:
        self.by_name: dict[str, dict[str, Any]] = {}
        self.by_base: dict[str, list[dict[str, Any]]] = {}
        for img in images:
            self.add(img)

    def add(self, img: dict[str, Any]) -> None:
        self.by_name[img["file_name"]] = img
        self.by_base.setdefault(Path(img["file_name"]).name, []).append(img)

    def find(self, file_name: str) -> dict[str, Any] | None:
        if file_name in self.by_name:
            return self.by_name[file_name]
        same = self.by_base.get(Path(file_name).name, [])
        return same[0] if len(same) == 1 else None
