"""Crowd and VOC-difficult boxes as ignore regions: never sampled as background by the RPN or the RoI heads.

COCO `iscrowd=1` boxes (a box over a flock) and VOC `<difficult>` birds (which `convert voc` turns into `iscrowd`)
are not training targets, but their pixels are in the image. torchvision's samplers know only the targets, so
anchors and proposals on those birds fell below the background threshold and were trained as "not a bird", while
evaluation (pycocotools) ignores detections on them. The rule here is the evaluator's: an anchor or proposal whose
intersection with a crowd box covers at least `CROWD_IOA_THRESHOLD` of its own area (what pycocotools uses as the
IoU against an `iscrowd` region, and the loosest threshold of its AP) is neither positive nor negative (label -1,
which torchvision's `BalancedPositiveNegativeSampler` skips). Positives and their regression targets come from the
other boxes exactly as in torchvision; a proposal that matches a real bird stays positive even on a crowd region.

Why ignore rather than train them as positives (detectron2's VOC loader does the latter): `iscrowd=1` holds both
kinds and the file cannot tell them apart, and a crowd box over a flock is not one bird: as a positive it would
teach, and at deployment predict, flock-sized boxes. Ignoring is right for both. Measured with
`benchmarks/crowd_boxes.py` (quickstart config, 128 synthetic training photos, 30 % of their 245 boxes marked, 80
steps, one seed; val AP50 / AP where those birds are normal boxes): sampled as background (before) 0.213 / 0.067,
ignored 0.414 / 0.141, trained as positives 0.757 / 0.333. Positives won there because the marked boxes were clean,
ordinary single birds, 30 % more positives; that is the best case for training them and says nothing about flock
boxes. Data whose `difficult` flags mark ordinary birds should clear the flag (docs/data-formats.md).

How the crowd boxes reach the samplers: `CocoDetection` puts them in `target["boxes"]` after the real boxes, with
the reserved label `CROWD_LABEL`, so every transform (crops, flips, mosaic, `GeneralizedRCNNTransform`'s resize)
moves them with the image like any box. The two overrides below split them off again; nothing else of torchvision's
`RegionProposalNetwork` / `RoIHeads` is changed.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import box_area

from birddet.data.coco import CROWD_LABEL

__all__ = [
    "CROWD_IOA_THRESHOLD",
    "CrowdIgnoringRPN",
    "CrowdIgnoringRoIHeads",
    "crowd_coverage",
    "ignore_crowd_regions",
]

#: An anchor/proposal with at least this share of its area inside a crowd box is not sampled as background.
CROWD_IOA_THRESHOLD = 0.5


def crowd_coverage(crowd: Tensor, boxes: Tensor) -> Tensor:
    """`[N]`: for each xyxy box, the largest share of its own area that lies inside one of the `crowd` boxes."""
    if crowd.numel() == 0 or boxes.numel() == 0:
        return boxes.new_zeros(boxes.shape[0])
    lt = torch.max(crowd[:, None, :2], boxes[None, :, :2])
    rb = torch.min(crowd[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)  # [M, N]
    return (inter / box_area(boxes).clamp(min=1e-6)).max(dim=0).values


def _split(boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(is_target mask, target boxes, crowd boxes) of one image."""
    real = labels != CROWD_LABEL
    return real, boxes[real], boxes[~real]


class CrowdIgnoringRPN(RegionProposalNetwork):
    """torchvision's RPN; anchors that are background by IoU but lie on a crowd box get label -1 (not sampled)."""

    def assign_targets_to_anchors(
        self, anchors: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        splits = [_split(t["boxes"], t["labels"]) for t in targets]
        real_targets = [{**t, "boxes": b, "labels": t["labels"][r]} for t, (r, b, _) in zip(targets, splits)]
        labels, matched_gt_boxes = super().assign_targets_to_anchors(anchors, real_targets)
        for labels_per_image, anchors_per_image, (_, _, crowd) in zip(labels, anchors, splits):
            if crowd.numel():
                on_crowd = crowd_coverage(crowd, anchors_per_image) >= CROWD_IOA_THRESHOLD
                labels_per_image[(labels_per_image == 0.0) & on_crowd] = -1.0
        return labels, matched_gt_boxes


class CrowdIgnoringRoIHeads(RoIHeads):
    """torchvision's RoI heads; proposals that are background by IoU but lie on a crowd box get label -1.

    `select_training_samples` indexes the image's full box list (crowd boxes included) with the returned matched
    indices, so they are translated back to positions in that list.
    """

    def assign_targets_to_proposals(
        self, proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        matched_idxs, labels = [], []
        for proposals_in_image, boxes, box_labels in zip(proposals, gt_boxes, gt_labels):
            real, real_boxes, crowd = _split(boxes, box_labels)
            (idx,), (lab,) = super().assign_targets_to_proposals([proposals_in_image], [real_boxes], [box_labels[real]])
            if real_boxes.numel():
                idx = torch.nonzero(real).squeeze(1)[idx]
            if crowd.numel():
                on_crowd = crowd_coverage(crowd, proposals_in_image) >= CROWD_IOA_THRESHOLD
                lab[(lab == 0) & on_crowd] = -1
            matched_idxs.append(idx)
            labels.append(lab)
        return matched_idxs, labels


def ignore_crowd_regions(model: FasterRCNN) -> FasterRCNN:
    """Switch a built `FasterRCNN`'s RPN and RoI heads to the crowd-ignoring subclasses, in place.

    The subclasses add no parameters or state (same `state_dict`), only the two target-assignment overrides, so
    swapping the class of the modules torchvision built keeps every constructor argument as given.
    """
    if type(model.rpn) is not RegionProposalNetwork or type(model.roi_heads) is not RoIHeads:
        raise TypeError(
            f"expected torchvision's RegionProposalNetwork and RoIHeads, got {type(model.rpn).__name__} and "
            f"{type(model.roi_heads).__name__}"
        )
    model.rpn.__class__ = CrowdIgnoringRPN
    model.roi_heads.__class__ = CrowdIgnoringRoIHeads
    return model
