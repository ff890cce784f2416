"""Crops of the boxes of a COCO split, for species-classifier training: a box's category is its class.

Each item is one non-crowd box: its image is decoded with `CocoDetection` (validation, EXIF orientation, files whose
stored size differs from the JSON), the box optionally jittered, and cut with `square_crops`, the crop rule predict
uses (margin, square, clip, bicubic resize). With augmentation off, an item is bit for bit the crop that
`birddet predict` hands the classifier for the same box. Flip and colour jitter then run on the uint8 crop
(albumentations), and the crop is normalised with the classifier's `rgb_stats`.

Classes are the categories of the training file, sorted by id; another split (val) is matched to them by name,
case-insensitively, so a val file may number its categories differently.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset
from torchvision.transforms import v2

from birddet.config import CropAugmentConfig
from birddet.data.coco import CocoDetection, align_categories, is_ignore_region
from birddet.data.images import ImageLoadError
from birddet.errors import InputError
from birddet.models.classifier import CROP_MARGIN, normalize_crops, square_crop_box, square_crops

__all__ = ["CocoCrops", "CropAugment", "KeepPixels"]

log = logging.getLogger(__name__)


class KeepPixels:
    """A `CocoDetection` transform that keeps the decoded image: uint8 [3, H, W] and boxes in its own pixels."""

    resize_only = False

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, Any, Any]:
        return torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).permute(2, 0, 1), boxes, labels


class CropAugment:
    """Training augmentation of one crop: box jitter before the crop rule, then flip and colour jitter.

    `pipeline` is the albumentations `Compose` (the trainer seeds it per sample); box jitter draws from NumPy's
    global RNG, which the trainer seeds per sample too.
    """

    def __init__(self, cfg: CropAugmentConfig) -> None:
        if not 0.0 <= cfg.box_jitter < 0.5:
            raise InputError(f"data.augment.box_jitter must be in [0, 0.5), got {cfg.box_jitter}")
        self.box_jitter = float(cfg.box_jitter)
        steps: list[A.BasicTransform] = []
        if cfg.hflip > 0:
            steps.append(A.HorizontalFlip(p=cfg.hflip))
        if cfg.color_jitter > 0:
            cj = float(cfg.color_jitter)
            steps.append(A.ColorJitter(brightness=cj, contrast=cj, saturation=cj, hue=0.0, p=0.8))
        self.pipeline = A.Compose(steps)
        # torchvision's policies draw from torch's RNG, which the trainer seeds per sample like NumPy's.
        self.auto_augment = {"none": None, "trivial": v2.TrivialAugmentWide, "randaugment": v2.RandAugment}[
            cfg.auto_augment
        ]
        self.auto_augment = self.auto_augment() if self.auto_augment is not None else None

    def jitter(self, box: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """Move each edge by up to `box_jitter` of the box's size, keeping at least 1 px inside the image."""
        if self.box_jitter <= 0:
            return box
        x0, y0, x1, y1 = box.tolist()
        w, h = x1 - x0, y1 - y0
        dx0, dy0, dx1, dy1 = np.random.uniform(-self.box_jitter, self.box_jitter, 4)
        nx0 = min(max(x0 + dx0 * w, 0.0), width - 1.0)
        ny0 = min(max(y0 + dy0 * h, 0.0), height - 1.0)
        nx1 = max(min(x1 + dx1 * w, float(width)), nx0 + 1.0)
        ny1 = max(min(y1 + dy1 * h, float(height)), ny0 + 1.0)
        return torch.tensor([nx0, ny0, nx1, ny1])

    def __call__(self, crop: torch.Tensor) -> torch.Tensor:
        """uint8 [3, H, W] -> augmented uint8 [3, H, W]."""
        if self.pipeline.transforms:
            out = self.pipeline(image=np.ascontiguousarray(crop.permute(1, 2, 0).numpy()))["image"]
            crop = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)
        return self.auto_augment(crop) if self.auto_augment is not None else crop


@dataclass(frozen=True)
class _CachedPatch:
    """One box's cached pixels: its final crop (`final`), or a patch of the image its jittered crops lie in."""

    pixels: torch.Tensor  # uint8 [3, h, w]
    box: torch.Tensor  # the box, xyxy in the image's own pixels
    offset: tuple[int, int]  # the patch's top-left corner in the image
    scale: float  # patch pixels per image pixel
    image_wh: tuple[int, int]
    final: bool


class CocoCrops(Dataset):
    """One item per non-crowd box of a COCO split: `(crop, label)`.

    - `crop`: float32 [3, size, size], normalised with `rgb_stats` (see `crop` for the uint8 pixels);
    - `label`: int, the index of the box's category in `class_names`.

    `class_names=None` takes the classes from this file (the training split) and checks that there are at least two
    and that each has boxes; otherwise this split's categories are matched to `class_names` by name (case-insensitive)
    and a category name outside them is an error listing both sets.

    A training split (`skip_bad_images=True`) replaces a crop whose image cannot be decoded by the next crop and
    records it in `skipped`; a validation split raises instead.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike[str],
        image_root: str | os.PathLike[str],
        *,
        size: int,
        rgb_stats: dict[str, Sequence[float]] | None = None,
        class_names: Sequence[str] | None = None,
        augment: CropAugment | None = None,
        skip_bad_images: bool = True,
        margin: float = CROP_MARGIN,
    ) -> None:
        self.source = CocoDetection(ann_file, image_root, KeepPixels(), skip_bad_images=False)
        self.ann_file = self.source.ann_file
        self.size = (int(size), int(size))
        # Set before the first item is read; a trainer fills it in once the weights file says what it is.
        self.rgb_stats = {k: list(v) for k, v in rgb_stats.items()} if rgb_stats else {}
        self.transforms = augment
        self.skip_bad_images = skip_bad_images
        self.margin = margin
        # two categories with one name (case-insensitively) are refused by `CocoDetection` already
        names = {int(c["id"]): str(c["name"]) for c in self.source.coco["categories"]}
        if class_names is None:
            self.class_names = [names[cid] for cid in sorted(names)]
        else:
            self.class_names = list(class_names)
        label_of = self._labels_by_category(names, class_names is None)
        # (image index, box index within the image's training boxes (`is_ignore_region`), class label)
        self.items: list[tuple[int, int, int]] = []
        for i, image_id in enumerate(self.source.image_ids):
            anns = [a for a in self.source.anns_by_image[image_id] if not is_ignore_region(a)]
            self.items.extend((i, k, label_of[a["category_id"]]) for k, a in enumerate(anns))
        if not self.items:
            raise InputError(f"{self.ann_file} has no boxes to crop (every image is empty or crowd-only)")
        if class_names is None:
            self._check_every_class_has_boxes()
        self.skipped: dict[str, str] = {}
        # data.cache_crops (`cache_crops`): item index -> cached pixels, see `_CachedPatch`.
        self.patch_cache: dict[int, _CachedPatch] = {}

    def _labels_by_category(self, names: dict[int, str], defines_classes: bool) -> dict[int, int]:
        """Category id -> class index, matched by name with the rule every split and checkpoint uses
        (`align_categories`: case-insensitive, one name per class)."""
        if defines_classes and len(self.class_names) < 2:
            raise InputError(
                f"{self.ann_file} has {len(self.class_names)} categor{'y' if len(self.class_names) == 1 else 'ies'} "
                f"({', '.join(map(repr, self.class_names)) or 'none'}); a classifier needs at least two classes. "
                "Label boxes with their species (or add a 'not a bird' class)"
            )
        used = {a["category_id"] for a in self.source.coco["annotations"] if not is_ignore_region(a)}
        alignment = align_categories(
            dict(enumerate(self.class_names)),
            names,
            used=used,
            model_source="the classifier",
            dataset_source=str(self.ann_file),
            strict=False,
        )
        if alignment.unknown:
            raise InputError(
                f"{self.ann_file} has boxes of categories the classifier does not know: "
                f"{', '.join(sorted(alignment.unknown.values()))}; the classifier's classes are "
                f"{', '.join(self.class_names)}. Category names are matched case-insensitively: rename them, or "
                "train on a split that has them"
            )
        return alignment.to_model  # a class index is the classifier's "category id"

    def _check_every_class_has_boxes(self) -> None:
        counts = self.class_counts()
        empty = [name for name, n in zip(self.class_names, counts) if n == 0]
        if empty:
            raise InputError(
                f"{self.ann_file}: class(es) {', '.join(map(repr, empty))} have no boxes to train on; add examples "
                "or remove those categories from the file"
            )

    def class_counts(self) -> list[int]:
        """Number of crops per class, in `class_names` order."""
        counts = [0] * len(self.class_names)
        for _, _, label in self.items:
            counts[label] += 1
        return counts

    @property
    def labels(self) -> list[int]:
        return [label for _, _, label in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def cache_crops(self, *, threads: int | None = None) -> None:
        """Decode every image once and keep, per box, only the pixels its crops can come from (`data.cache_crops`).

        Why: a species crop of a 1920 px photo costs a full JPEG decode, about three times the forward and backward
        pass of a small ViT at 64 px (27 ms against 9 ms of CPU per crop on the realistic preset), so without a
        cache the classifier spends most of its time budget decoding. Per box this keeps:

        - without augmentation (validation): the final crop itself, bit for bit what predict hands the classifier;
        - with augmentation (training): the square around the box that any jittered crop lies in, shrunk so that
          the largest crop is at most twice the crop size. The crop rule still runs per sample in the image's own
          frame (`square_crop_box` with the image's size), so jitter, margin and border shifts are unchanged; only
          the resize now starts from the shrunk patch (at most 4x the crop's pixels kept per box).

        Filled here, in the calling process, so DataLoader workers forked later share it. Bad images are reported
        and left out as the uncached path would.
        """
        from concurrent.futures import ThreadPoolExecutor

        by_image: dict[int, list[int]] = {}
        for index, (image_index, _, _) in enumerate(self.items):
            by_image.setdefault(image_index, []).append(index)

        def load(image_index: int) -> list[tuple[int, _CachedPatch]]:
            try:
                image, target = self.source[image_index]
            except ImageLoadError as err:
                log.warning("skipping a bad image's crops: %s", err)
                self.skipped[str(self.source.image_path(image_index))] = str(err)
                return []
            return [(i, self._patch(image, target["boxes"][self.items[i][1]])) for i in by_image[image_index]]

        with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
            for entries in pool.map(load, sorted(by_image)):  # decoding and resizing release the GIL
                self.patch_cache.update(entries)
        log.info(
            "data.cache_crops: %d crops of %s kept (%.0f MiB)",
            len(self.patch_cache), self.ann_file, sum(p.pixels.nbytes for p in self.patch_cache.values()) / 2**20,
        )  # fmt: skip

    def _patch(self, image: torch.Tensor, box: torch.Tensor) -> _CachedPatch:
        height, width = image.shape[-2:]
        if self.transforms is None:
            crop = square_crops(image, box[None], self.size, margin=self.margin)[0]
            return _CachedPatch(crop, box, (0, 0), 1.0, (width, height), final=True)
        x0, y0, x1, y1 = box.tolist()
        reach = max(x1 - x0, y1 - y0) * self.transforms.box_jitter  # how far a jittered edge can move
        px0, py0, px1, py1 = square_crop_box((x0 - reach, y0 - reach, x1 + reach, y1 + reach), (width, height),
                                             margin=self.margin + 2 * self.transforms.box_jitter)  # fmt: skip
        patch = image[:, py0:py1, px0:px1]
        scale = min(1.0, 2 * self.size[0] / max(px1 - px0, py1 - py0))
        if scale < 1.0:
            out = [max(1, round((py1 - py0) * scale)), max(1, round((px1 - px0) * scale))]
            patch = TF.resize(patch, out, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        return _CachedPatch(patch.contiguous(), box.clone(), (px0, py0), scale, (width, height), final=False)

    def _cached_crop(self, cached: _CachedPatch) -> torch.Tensor:
        """A (jittered) crop from a cached patch: the crop rule in the image's frame, mapped into the patch."""
        if cached.final:
            return cached.pixels
        width, height = cached.image_wh
        box = self.transforms.jitter(cached.box, width, height) if self.transforms is not None else cached.box
        x0, y0, x1, y1 = square_crop_box(box.tolist(), (width, height), margin=self.margin)
        ph, pw = cached.pixels.shape[-2:]
        ox, oy = cached.offset
        s = cached.scale
        cx0 = min(max(int(round((x0 - ox) * s)), 0), pw - 1)
        cy0 = min(max(int(round((y0 - oy) * s)), 0), ph - 1)
        cx1 = min(max(int(round((x1 - ox) * s)), cx0 + 1), pw)
        cy1 = min(max(int(round((y1 - oy) * s)), cy0 + 1), ph)
        crop = cached.pixels[:, cy0:cy1, cx0:cx1]
        return TF.resize(crop, list(self.size), interpolation=TF.InterpolationMode.BICUBIC, antialias=True)

    def crop(self, index: int) -> torch.Tensor:
        """The uint8 crop [3, size, size] of item `index` (augmented when the dataset has an augmentation)."""
        cached = self.patch_cache.get(index)
        if cached is not None:
            crop = self._cached_crop(cached)
            return self.transforms(crop) if self.transforms is not None else crop
        image_index, k, _ = self.items[index]
        image, target = self.source[image_index]
        box = target["boxes"][k]
        if self.transforms is not None:
            box = self.transforms.jitter(box, image.shape[-1], image.shape[-2])
        crop = square_crops(image, box[None], self.size, margin=self.margin)[0]
        return self.transforms(crop) if self.transforms is not None else crop

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for attempt in range(len(self) if self.skip_bad_images else 1):
            i = (index + attempt) % len(self)
            try:
                crop = self.crop(i)
            except ImageLoadError as err:
                if not self.skip_bad_images:
                    raise
                path = str(self.source.image_path(self.items[i][0]))
                if path not in self.skipped:
                    log.warning("skipping a crop of a bad image (using the next crop instead): %s", err)
                self.skipped[path] = str(err)
                continue
            return normalize_crops(crop[None], self.rgb_stats)[0], self.items[i][2]
        raise InputError(f"{self.ann_file}: no image in the dataset could be decoded; see the warnings above")
