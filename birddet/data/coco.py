"""COCO detection annotations: read and validate once, then serve (image, target) pairs for torchvision detectors.

The file is read and checked by `birddet.data.coco_validation` (every structural problem at once; boxes slightly
outside their image clipped, bad ones dropped, both counted in a `ValidationReport`), and its categories are matched
to the model's by name (`birddet.data.categories`). This module is the torch side: `CocoDetection` turns a validated
file into decoded images and detector targets.

- `iscrowd=1` annotations stay in the raw data (the evaluator needs them to ignore matches) and are never training
  targets; they reach the detector labelled `CROWD_LABEL` so that it never samples them as background either.

Labels: torchvision wants contiguous labels 1..K with 0 = background; `CategoryMap` translates to and from the
model's category ids, and `align_categories` gives a file that numbers the same birds differently the model's
labels (see `birddet.data.categories`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

# re-exported: category maps and file validation lived here before they got modules of their own, and callers
# (tests, tools, the engine) import them from `birddet.data.coco`.
from birddet.data.categories import CategoryAlignment, CategoryMap, align_categories, format_categories
from birddet.data.coco_validation import (
    CLIP_TOLERANCE_FRAC,
    CLIP_TOLERANCE_PX,
    MAX_IDS_SHOWN,
    ValidationReport,
    check_box,
    escapes_root,
    fatal_message,
    first_ids,
    load_coco_dataset,
    validate_coco_file,
)
from birddet.data.images import ImageLoadError, load_image
from birddet.data.transforms import to_tensor
from birddet.errors import InputError

__all__ = [
    "CLIP_TOLERANCE_FRAC",
    "CLIP_TOLERANCE_PX",
    "CROWD_LABEL",
    "MAX_IDS_SHOWN",
    "CategoryAlignment",
    "is_ignore_region",
    "CategoryMap",
    "CocoDetection",
    "ValidationReport",
    "align_categories",
    "check_box",
    "escapes_root",
    "fatal_message",
    "first_ids",
    "format_categories",
    "load_coco_dataset",
    "validate_coco_file",
]

log = logging.getLogger(__name__)

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
        transform (`TrainTransform` brings the longest side to its `source_side`, the input size times the largest
        scale jitter, with the same area-averaging resize), so with `max_side` = that side the training pixels are
        the same as without the cache; boxes follow through `_raw_item`'s size check. Only for training sets:
        evaluation maps boxes back to the original size.

        The cache is filled here, in the calling process, so DataLoader workers forked later share its pages
        instead of each decoding again. An image that fails to decode is reported here and left out; training then
        skips it as it would without the cache. When the estimated size (from the JSON's image sizes) is over
        `max_bytes` (default: half the memory available now, where the OS tells), nothing is cached and a warning
        says so; returns whether it cached.
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
