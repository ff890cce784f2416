"""Horizontal-flip test-time augmentation (`model.tta: flip`): detect in the image and in its mirror, fuse the boxes.

A detector's box edges carry regression noise that differs between an image and its mirror. Averaging the two
estimates of each bird tightens its box, which COCO AP at IoU 0.75-0.95 rewards; a bird found in one view only is
kept as found. The fusion is weighted box fusion on two views (Solovyev et al., "Weighted boxes fusion",
arXiv 1910.13302) reduced to what two NMS-ed views need: class-aware NMS over both views picks one box per bird, and
its coordinates become the score-weighted mean of every box of that class overlapping it above the NMS threshold
(its counterpart in the other view; within one view NMS has already left no such pair). Scores are the kept box's.

Measured on the realistic preset (from_scratch at 10 CPU minutes): docs/training.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.ops import batched_nms, box_iou

Detections = list[dict[str, torch.Tensor]]


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


def detect_with_flip(
    model: Callable[[list[torch.Tensor]], Detections],
    images: list[torch.Tensor],
    *,
    iou_threshold: float,
    max_dets: int,
) -> Detections:
    """`model`'s detections of each image fused with those of its mirror (torchvision's eval-mode contract in and out:
    float `[3, H, W]` images, per-image dicts of xyxy `boxes`, `scores`, `labels`)."""
    plain = model(images)
    mirrored = model([image.flip(-1) for image in images])
    fused = []
    for image, a, b in zip(images, plain, mirrored, strict=True):
        b = {**b, "boxes": unflip_boxes(b["boxes"], int(image.shape[-1]))}
        fused.append(fuse_views([a, b], iou_threshold=iou_threshold, max_dets=max_dets))
    return fused
