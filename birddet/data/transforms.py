"""Training and evaluation transforms (albumentations), returning what `CocoDetection` hands the detector.

Every transform is a callable `t(image, boxes, labels) -> (image_tensor, boxes, labels)`:
  - `image`: uint8 `H x W x 3` numpy array; `boxes`: float `[N, 4]` xyxy pixels; `labels`: `[N]` ints;
  - returns a float32 tensor `[3, H', W']` in [0, 1] (not normalised: torchvision's detector transform does that),
    boxes `float32 [M, 4]` xyxy in the new image's pixels and `int64 [M]` labels, M <= N.

Boxes and labels travel together through albumentations (`label_fields=["labels"]`), so a box that a crop removes
takes its label with it.

Training uses ViTDet's large-scale jitter (LSJ, arXiv 2203.16527 / 2012.07177): resize the longest side to
`size * s` with `s ~ U(scale_range)`, pad (bottom/right, mean grey) to at least `size x size`, random-crop exactly
`size x size`, then horizontal flip and colour jitter. Hue is not jittered: colour is often what tells bird
species apart. A box keeps its place only if at least `MIN_VISIBILITY` of its area and `MIN_BOX_SIDE` px per side
survive the crop: a sliver of a wing is a worse target than none.

Evaluation resizes the longest side to `size` and keeps the aspect ratio, without padding: torchvision's
`GeneralizedRCNNTransform` pads batches itself, and an unpadded image lets the scale be read off its shape.
`EvalTransform.scale_for(h, w)` gives the factor; the dataset also stores it per image as `target["scale"]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

__all__ = ["EvalTransform", "TrainTransform", "build_eval_transforms", "build_train_transforms", "to_tensor"]

#: ImageNet mean in 0..255: padding with it becomes ~0 after the detector's normalisation, i.e. "no signal".
PAD_FILL = (124, 116, 104)
#: Fraction of a box's area that must survive a crop for the box (and its label) to be kept.
MIN_VISIBILITY = 0.3
#: Boxes thinner than this many pixels after a transform are dropped (they cannot be regressed meaningfully).
MIN_BOX_SIDE = 2.0


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 `HxWx3` -> float32 `[3, H, W]` in [0, 1]."""
    # np.require copies read-only arrays (e.g. from PIL) that torch.from_numpy would warn about.
    return torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).permute(2, 0, 1).float().div_(255.0)


class _AlbumentationsDetectionTransform:
    """Runs an albumentations pipeline on (image, xyxy boxes, labels) and converts the result for the detector."""

    #: True when the transform only rescales (no crop/pad/flip), so boxes map back by a plain scale factor.
    resize_only = False

    def __init__(self, pipeline: A.Compose) -> None:
        self.pipeline = pipeline

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        out = self.pipeline(image=image, bboxes=boxes, labels=labels)
        out_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        out_labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        return to_tensor(out["image"]), out_boxes, out_labels


class TrainTransform(_AlbumentationsDetectionTransform):
    """LSJ + flip + colour jitter to a fixed `size x size` square (see module docstring)."""


class EvalTransform(_AlbumentationsDetectionTransform):
    """Longest side -> `size`, aspect kept, no padding; boxes map back to the original by `1 / scale_for(h, w)`."""

    resize_only = True

    def __init__(self, pipeline: A.Compose, size: int) -> None:
        super().__init__(pipeline)
        self.size = size

    def scale_for(self, height: int, width: int) -> float:
        """Resize factor applied to an image of the given original size (new longest side / old longest side)."""
        return self.size / max(height, width)

    def resize_image(self, image: np.ndarray) -> np.ndarray:
        """The image part of the transform alone (`HxWx3` uint8 or float32 in [0, 1]): what `predict` uses, so a
        photo gives the same pixels, hence the same detections, in `birddet predict` and `birddet eval`."""
        return _longest_side(self.size)(image=image)["image"]


def _longest_side(size: int) -> A.LongestMaxSize:
    """Longest side -> `size`. Shrinking uses pixel-area averaging: a 20-Mpx photo brought to 1024 px with plain
    bilinear sampling aliases (feathers turn to moire, small birds flicker in and out)."""
    return A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_LINEAR, area_for_downscale="image", p=1.0)


def _bbox_params(min_visibility: float) -> A.BboxParams:
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        min_visibility=min_visibility,
        min_width=MIN_BOX_SIDE,
        min_height=MIN_BOX_SIDE,
        clip=True,  # float round-off at the image edge must not make albumentations reject a valid box
        filter_invalid_bboxes=True,
    )


def build_train_transforms(
    size: int,
    *,
    scale_range: Sequence[float] = (0.1, 2.0),
    hflip: float = 0.5,
    color_jitter: float = 0.4,
) -> TrainTransform:
    """ViTDet large-scale jitter to `size x size`, horizontal flip with probability `hflip`, colour jitter.

    `color_jitter` is the brightness/contrast/saturation strength (0 disables it); hue is left alone.
    """
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {tuple(scale_range)}")
    steps: list[A.BasicTransform] = [
        _longest_side(size),
        # RandomScale's limits are offsets from 1: factor ~ U(1 + lo', 1 + hi').
        A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR, p=1.0),
        A.PadIfNeeded(
            min_height=size, min_width=size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=PAD_FILL
        ),
        A.RandomCrop(height=size, width=size, p=1.0),
    ]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if color_jitter > 0:
        cj = float(color_jitter)
        steps.append(A.ColorJitter(brightness=cj, contrast=cj, saturation=cj, hue=0.0, p=0.8))
    return TrainTransform(A.Compose(steps, bbox_params=_bbox_params(MIN_VISIBILITY)))


def build_eval_transforms(size: int) -> EvalTransform:
    """Resize the longest side to `size`, keep the aspect ratio, no padding (see module docstring)."""
    steps = [_longest_side(size)]
    return EvalTransform(A.Compose(steps, bbox_params=_bbox_params(0.0)), size)
