"""Test-time augmentation: detect in the image and in its mirror (`model.tta: flip`), and at more test squares
(`model.tta_sizes`); fuse the boxes of every view.

A detector's box edges carry regression noise that differs between an image and its mirror. Averaging the two
estimates of each bird tightens its box, which COCO AP at IoU 0.75-0.95 rewards; a bird found in one view only is
kept as found. The fusion is weighted box fusion on two views (Solovyev et al., "Weighted boxes fusion",
arXiv 1910.13302) reduced to what two NMS-ed views need: class-aware NMS over both views picks one box per bird, and
its coordinates become the score-weighted mean of every box of that class overlapping it above the NMS threshold
(its counterparts in the other views; within one view NMS has already left no such pair). Scores are the kept box's.

More squares add views of another kind: at a larger square a bird of a few pixels covers more of the ViT's 16-px
patches and is found and boxed where the test square misses it, while a smaller square places a large bird at the
pyramid level and anchor its training saw most (the multi-scale testing of the R-CNN family, e.g. Cascade R-CNN's
and ViTDet's). The same fusion merges them.

Measured on the realistic preset (from_scratch at 10 CPU minutes): docs/training.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torchvision.ops import batched_nms, box_iou

from birddet.errors import InputError

Detections = list[dict[str, torch.Tensor]]


def override_tta(model_config: Any, tta: str | None) -> None:
    """`--tta` of eval, predict and two-stage scoring: one run's whole test-time augmentation. "none" is one view at
    the test square, "flip" the image and its mirror at the test square (what an exported graph runs, so a
    checkpoint and its export compare under it); None keeps the checkpoint's setting, `model.tta_sizes` included."""
    if tta is not None:
        model_config.tta, model_config.tta_sizes = tta, []


def unflip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """xyxy boxes found in the mirrored image -> the same boxes in the original image of `width` pixels."""
    out = boxes.clone()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def fuse_views(views: list[dict[str, torch.Tensor]], *, iou_threshold: float, max_dets: int) -> dict[str, torch.Tensor]:
    """One torchvision detection dict from several views of one image (boxes already in the image's frame)."""
    boxes = torch.cat([v["boxes"] for v in views])
    scores = torch.cat([v["scores"] for v in views])
    labels = torch.cat([v["labels"] for v in views])
    if boxes.numel() == 0:
        return {"boxes": boxes, "scores": scores, "labels": labels}
    keep = batched_nms(boxes.float(), scores.float(), labels, iou_threshold)[:max_dets]  # sorted by score
    same = (labels[keep, None] == labels[None, :]) & (box_iou(boxes[keep].float(), boxes.float()) > iou_threshold)
    same[torch.arange(len(keep)), keep] = True  # a kept box always counts itself (even a degenerate one)
    weights = same.float() * scores.float()[None, :]
    total = weights.sum(dim=1, keepdim=True)
    # A bird seen once, or with nothing to weigh, keeps its box exactly as found.
    averaged = (same.sum(dim=1, keepdim=True) > 1) & (total > 0)
    fused = torch.where(averaged, (weights @ boxes.float()) / total.clamp_min(1e-12), boxes[keep].float())
    return {"boxes": fused.to(boxes.dtype), "scores": scores[keep], "labels": labels[keep]}


def set_square(transform: Any, side: int) -> None:
    """Make torchvision's `GeneralizedRCNNTransform` resize every image's longest side to `side` and pad it to a
    `side` square: the one way the test square, a TTA square and an export's square are set."""
    transform.min_size, transform.max_size, transform.size_divisible = (side,), side, side


@contextlib.contextmanager
def _at_square(model: torch.nn.Module, side: int | None) -> Iterator[None]:
    """torchvision's transform of `model` resizing and padding to a `side` square while the block runs (as is for
    None: the square the model was set to)."""
    if side is None:
        yield
        return
    transform = getattr(model, "transform", None)
    if transform is None:  # an exported graph has its square built in
        raise InputError(
            f"a test square of {side} px needs the PyTorch checkpoint: an exported graph runs at the square it was "
            "exported at (export at another one with `birddet export --image-size`)"
        )
    saved = (transform.min_size, transform.max_size, transform.size_divisible)
    set_square(transform, side)
    try:
        yield
    finally:
        transform.min_size, transform.max_size, transform.size_divisible = saved


def detect_with_tta(
    model: Callable[[list[torch.Tensor]], Detections],
    images: list[torch.Tensor],
    *,
    squares: Sequence[int | None],
    flip: bool,
    iou_threshold: float,
    max_dets: int,
) -> Detections:
    """`model`'s detections of each image at every square in `squares` (None: the model's own), and of its mirror
    too with `flip`, fused into one set per image (torchvision's eval-mode contract in and out: float `[3, H, W]`
    images, per-image dicts of xyxy `boxes`, `scores`, `labels`)."""
    views: list[Detections] = [[] for _ in images]
    for side in squares:
        with _at_square(model, side):  # type: ignore[arg-type]
            for per_image, found in zip(views, model(images), strict=True):
                per_image.append(found)
            if flip:
                mirrored = model([image.flip(-1) for image in images])
                for per_image, image, found in zip(views, images, mirrored, strict=True):
                    per_image.append({**found, "boxes": unflip_boxes(found["boxes"], int(image.shape[-1]))})
    return [fuse_views(v, iou_threshold=iou_threshold, max_dets=max_dets) for v in views]


def detect_as_configured(model: Any, images: list[torch.Tensor], model_config: Any) -> Detections:
    """`detect_with_tta` with the views a `ModelConfig` asks for: its test square (the one `model` is set to), then
    each other square of `tta_sizes` once; the mirror of each under `tta: flip`; fused at the RoI heads' NMS
    threshold and box cap."""
    m = model_config
    squares = [None, *dict.fromkeys(side for side in m.tta_sizes if side != m.test_square)]
    return detect_with_tta(
        model,
        images,
        squares=squares,
        flip=m.tta == "flip",
        iou_threshold=float(m.roi_heads.nms_thresh),
        max_dets=int(model.roi_heads.detections_per_img),
    )
