"""Training on windows of big images (`data.tile`): the training-side twin of tiled prediction.

A 6,000 px survey photo shrunk to `model.image_size` for training teaches the detector birds 6x smaller than the
ones tiled prediction will show it. `TiledCocoDetection` serves windows cut from each image in its own pixels,
with the same geometry as prediction (`birddet.pipeline.tiling.tile_windows`), so training and inference see
birds at one scale.

The window list is computed once, in `__init__`, from the COCO file alone (image sizes and boxes; nothing is
decoded), and it depends only on the file and `(size, overlap, min_visibility, negatives, seed)`. Item `i` is
therefore the same window on every run, which keeps the trainer's per-sample seeding and mid-epoch resume exact.
An image that is a raster (a GeoTIFF orthomosaic, `birddet.data.rasters.is_raster_path`) is never decoded whole:
each item reads its window from the file, so a 2-Gpx orthomosaic trains in the memory of its windows.
A window is a training item when at least one box is at least `min_visibility` inside it; a window that holds no
part of any box is a negative, and a seeded `negatives` fraction of those is kept, so the detector also learns
empty water and sand; a window that holds only slivers of birds is left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from birddet.data.coco import CocoDetection
from birddet.data.images import ImageLoadError
from birddet.data.rasters import RasterImage, is_raster_path
from birddet.errors import InputError
from birddet.pipeline.tiling import tile_windows

__all__ = ["TiledCocoDetection", "Window", "plan_windows"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """One training item: window `box` (x0, y0, x1, y1, original pixels) of the base dataset's image `index`."""

    index: int
    box: tuple[int, int, int, int]
    negative: bool


def visible_fraction(boxes: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """`[N]` fraction of each xyxy box's area inside `window` (0 for degenerate boxes)."""
    x0, y0, x1, y1 = window
    iw = (np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0)).clip(min=0)
    ih = (np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0)).clip(min=0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.where(area > 0, iw * ih / np.maximum(area, 1e-9), 0.0)


def plan_windows(
    dataset: CocoDetection, size: int, overlap: float, min_visibility: float, negatives: float, seed: int
) -> list[Window]:
    """The deterministic list of training windows over `dataset` (see the module docstring)."""
    rng = np.random.default_rng([seed, 0x7115])
    plan: list[Window] = []
    for index, image_id in enumerate(dataset.image_ids):
        info = dataset.images[image_id]
        boxes, _ = dataset._targets(image_id)
        for window in tile_windows(int(info["width"]), int(info["height"]), size, overlap).tolist():
            win = (window[0], window[1], window[2], window[3])
            vis = visible_fraction(boxes, win) if len(boxes) else np.zeros(0)
            if (vis >= min_visibility).any():
                plan.append(Window(index, win, negative=False))
            elif not (vis > 0).any() and rng.random() < negatives:
                plan.append(Window(index, win, negative=True))
    return plan


class TiledCocoDetection(torch.utils.data.Dataset):
    """Windows of a `CocoDetection`'s images as training items; returns what `CocoDetection` returns.

    `dataset[i]` is `(image, target)` for window `windows[i]`: the crop goes through the base dataset's transforms
    with the boxes that are at least `min_visibility` inside it (clipped to the window); `target["orig_size"]` is
    the window's size and `target["window"]` its place in the image. Bad images are skipped as `CocoDetection`
    skips them (the next window that decodes stands in, and the file is recorded in `skipped`).
    """

    def __init__(
        self,
        base: CocoDetection,
        *,
        size: int,
        overlap: float = 0.25,
        min_visibility: float = 0.5,
        negatives: float = 0.1,
        seed: int = 0,
    ) -> None:
        if size < 32:
            raise InputError(f"data.tile.size must be at least 32 px, got {size}")
        if not 0.0 <= overlap < 1.0:
            raise InputError(f"data.tile.overlap must be in [0, 1), got {overlap}")
        if not 0.0 < min_visibility <= 1.0:
            raise InputError(f"data.tile.min_visibility must be in (0, 1], got {min_visibility}")
        if not 0.0 <= negatives <= 1.0:
            raise InputError(f"data.tile.negatives must be in [0, 1], got {negatives}")
        self.base = base
        self.min_visibility = min_visibility
        self._rasters: dict[Path, RasterImage] = {}
        self.windows = plan_windows(base, size, overlap, min_visibility, negatives, seed)
        if not self.windows:
            raise InputError(
                f"{base.ann_file}: no {size} px window holds a bird at min_visibility {min_visibility}; "
                "check the annotations or lower data.tile.min_visibility"
            )
        log.info(
            "tiled training: %d windows of %d px (%d negatives) from %d images",
            len(self.windows), size, sum(w.negative for w in self.windows), len(base),
        )  # fmt: skip

    # what the trainer reads from a CocoDetection
    @property
    def transforms(self) -> Any:
        return self.base.transforms

    @property
    def category_map(self) -> Any:
        return self.base.category_map

    @property
    def skipped(self) -> dict[str, str]:
        return self.base.skipped

    def __len__(self) -> int:
        return len(self.windows)

    def aspect_ratios(self) -> list[float]:
        return [(w.box[2] - w.box[0]) / (w.box[3] - w.box[1]) for w in self.windows]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                return self._load_item(i)
            except ImageLoadError as e:
                path = str(self.base.image_path(self.windows[i].index))
                if path not in self.base.skipped:
                    log.warning("skipping bad image (using the next window instead): %s", e)
                self.base.skipped[path] = str(e)
        raise InputError(f"{self.base.ann_file}: no image in the dataset could be decoded; see the warnings above")

    def _raster(self, path: Path) -> RasterImage:
        """The open raster at `path`, kept per process (each DataLoader worker opens its own)."""
        raster = self._rasters.get(path)
        if raster is None:
            raster = self._rasters[path] = RasterImage(path)
        return raster

    def _load_item(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        w = self.windows[i]
        base = self.base
        image_id = base.image_ids[w.index]
        info = base.images[image_id]
        path = base.image_path(w.index)
        raster = self._raster(path) if is_raster_path(path) else None
        if raster is None:
            pixels, boxes, labels = base._raw_item(w.index)  # boxes already in the decoded pixels
            h, wd = pixels.shape[:2]
        else:  # a GeoTIFF orthomosaic: only this window is read, the raster is never decoded whole
            boxes, labels = base._targets(image_id)
            h, wd = raster.height, raster.width
            if (wd, h) != (info["width"], info["height"]):
                sx, sy = wd / info["width"], h / info["height"]
                boxes = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
        x0, y0, x1, y1 = w.box
        if (wd, h) != (info["width"], info["height"]):  # the file disagrees with the JSON: windows are JSON pixels
            sx, sy = wd / info["width"], h / info["height"]
            x0, y0, x1, y1 = round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)
        box = (x0, y0, x1, y1)
        if raster is None:
            crop = np.ascontiguousarray(pixels[y0:y1, x0:x1])
        else:
            crop = raster.read_array(box)
        keep = visible_fraction(boxes, box) >= self.min_visibility if len(boxes) else np.zeros(0, dtype=bool)
        local = boxes[keep] - np.array([x0, y0, x0, y0], dtype=np.float32)
        local[:, 0::2] = local[:, 0::2].clip(0, x1 - x0)
        local[:, 1::2] = local[:, 1::2].clip(0, y1 - y0)
        # No mixing partners (data.augment.mosaic / copy-paste): they would be whole images, not windows.
        image, boxes_t, labels_t, _ = base._apply_transforms(crop, local, labels[keep], [])
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes_t, dtype=np.float32)).reshape(-1, 4),
            "labels": torch.as_tensor(np.asarray(labels_t, dtype=np.int64)).reshape(-1),
            "image_id": int(image_id),
            "orig_size": (int(y1 - y0), int(x1 - x0)),
            "window": box,
        }
        return image, target

    @staticmethod
    def collate_fn(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        return CocoDetection.collate_fn(batch)
