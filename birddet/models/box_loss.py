"""The RoI heads' box-regression loss: torchvision's smooth-L1 on encoded offsets, or GIoU on the boxes themselves.

COCO AP averages IoU thresholds from 0.5 to 0.95, so a detector that finds every bird but draws its boxes a few
pixels loose scores well at AP50 and poorly at AP. torchvision's Fast R-CNN loss (`fastrcnn_loss`) is smooth-L1 on
the (dx, dy, dw, dh) offsets scaled by `BoxCoder.weights`, which does not measure overlap; the generalised IoU loss
(Rezatofighi et al., CVPR 2019, arXiv 1902.09630) trains the quantity AP is scored on.

GIoU needs boxes, and torchvision's loss receives only the encoded offsets of each sampled RoI against its proposal.
IoU and GIoU are invariant under a per-box translation and axis scaling, so decoding the predicted and the target
offsets against the same unit reference box gives the same GIoU as decoding both against the proposal: no
proposal is needed, and the targets torchvision already computed (with our crowd-ignoring assignment) are used as
they are.

How it plugs in: torchvision's `RoIHeads.forward` computes its loss inline. The subclass below lets it run, reads
the sampled labels and targets (from `select_training_samples`) and the predictor's output (a forward hook), and
replaces `loss_box_reg`; the smooth-L1 kind only applies `box_loss_weight`. No parameter or state is added, so
checkpoints are unchanged and inference is torchvision's own.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN
from torchvision.ops import generalized_box_iou_loss

from birddet.models.ignore_regions import CrowdIgnoringRoIHeads

__all__ = ["BoxLossRoIHeads", "giou_regression_loss", "set_box_loss"]

BoxLoss = Literal["smooth_l1", "giou"]


def giou_regression_loss(
    box_regression: Tensor, labels: list[Tensor], regression_targets: list[Tensor], box_coder: Any
) -> Tensor:
    """GIoU loss of the positive RoIs' predicted boxes (their own class's regression) against their targets.

    Normalised like torchvision's `fastrcnn_loss`: summed over positives, divided by the number of sampled RoIs.
    """
    labels_all = torch.cat(labels, dim=0)
    targets = torch.cat(regression_targets, dim=0)
    pos = torch.where(labels_all > 0)[0]
    if pos.numel() == 0:
        return box_regression.sum() * 0.0
    per_class = box_regression.reshape(box_regression.shape[0], -1, 4)
    pred = per_class[pos, labels_all[pos]]
    unit = pred.new_tensor([0.0, 0.0, 1.0, 1.0]).expand(pos.numel(), 4)
    pred_boxes = box_coder.decode_single(pred, unit)
    target_boxes = box_coder.decode_single(targets[pos].to(pred.dtype), unit)
    return generalized_box_iou_loss(pred_boxes, target_boxes, reduction="sum") / labels_all.numel()


class BoxLossRoIHeads(CrowdIgnoringRoIHeads):
    """Crowd-ignoring RoI heads whose `loss_box_reg` is `box_loss` ("smooth_l1" or "giou") times `box_loss_weight`."""

    box_loss: BoxLoss = "smooth_l1"
    box_loss_weight: float = 1.0

    def select_training_samples(self, proposals: list[Tensor], targets: Any) -> Any:
        proposals, matched_idxs, labels, regression_targets = super().select_training_samples(proposals, targets)
        self._sampled = (labels, regression_targets)
        return proposals, matched_idxs, labels, regression_targets

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if not self.training or (self.box_loss == "smooth_l1" and self.box_loss_weight == 1.0):
            return super().forward(features, proposals, image_shapes, targets)
        captured: dict[str, Tensor] = {}
        hook = self.box_predictor.register_forward_hook(lambda _m, _i, out: captured.__setitem__("reg", out[1]))
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
        finally:
            hook.remove()
        labels, regression_targets = self._sampled
        del self._sampled
        if self.box_loss == "giou":
            losses["loss_box_reg"] = giou_regression_loss(captured["reg"], labels, regression_targets, self.box_coder)
        losses["loss_box_reg"] = losses["loss_box_reg"] * self.box_loss_weight
        return result, losses


def set_box_loss(model: FasterRCNN, kind: BoxLoss, weight: float) -> FasterRCNN:
    """Give a built detector's (crowd-ignoring) RoI heads the chosen box loss, in place; the state dict is unchanged."""
    if not isinstance(model.roi_heads, CrowdIgnoringRoIHeads):
        raise TypeError(f"expected CrowdIgnoringRoIHeads, got {type(model.roi_heads).__name__}")
    if kind not in ("smooth_l1", "giou"):
        raise ValueError(f"box loss must be 'smooth_l1' or 'giou', got {kind!r}")
    model.roi_heads.__class__ = BoxLossRoIHeads
    model.roi_heads.box_loss = kind
    model.roi_heads.box_loss_weight = float(weight)
    return model
