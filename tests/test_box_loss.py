"""The RoI heads' box loss options (models/box_loss.py): GIoU on the boxes, a loss weight, BoxCoder weights.

GIoU is computed from the encoded offsets against a unit reference box; the test checks that this equals
torchvision's GIoU loss on the real boxes decoded against 16:9-sized proposals, so the shortcut is exact.
"""

from __future__ import annotations

import torch
from test_detector import TINY, _targets, tiny_detector
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import generalized_box_iou_loss

from birddet.models.box_loss import giou_regression_loss


def test_giou_from_offsets_equals_giou_of_the_decoded_boxes() -> None:
    torch.manual_seed(0)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    n, classes = 12, 3
    proposals = torch.tensor([[20.0, 30.0, 180.0, 120.0]]).repeat(n, 1) + torch.rand(n, 4) * 40  # wide, like 16:9 RoIs
    proposals[:, 2:] += 60
    gt = proposals + torch.randn(n, 4) * 15
    targets = coder.encode_single(gt, proposals)
    labels = torch.tensor([0, 1, 2, 3, 1, 0, 2, 3, 1, 2, 0, 3])
    regression = torch.randn(n, (classes + 1) * 4) * 0.3
    loss = giou_regression_loss(regression, [labels], [targets], coder)

    pos = labels > 0
    pred = regression.reshape(n, -1, 4)[pos, labels[pos]]
    expected = generalized_box_iou_loss(coder.decode_single(pred, proposals[pos]), gt[pos], reduction="sum") / n
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_no_positive_roi_gives_a_zero_loss_that_still_backpropagates() -> None:
    regression = torch.randn(4, 8, requires_grad=True)
    loss = giou_regression_loss(
        regression, [torch.zeros(4, dtype=torch.int64)], [torch.zeros(4, 4)], BoxCoder((1, 1, 1, 1))
    )
    assert loss.item() == 0.0
    loss.backward()


def test_giou_and_weights_change_only_the_box_loss_and_train_the_box_regression() -> None:
    images, targets = _targets()
    base = tiny_detector().train()(images, targets)
    heads = dict(TINY["model"]["roi_heads"])
    weighted = tiny_detector(roi_heads={**heads, "box_loss_weight": 3.0}).train()(images, targets)
    torch.testing.assert_close(weighted["loss_box_reg"], 3.0 * base["loss_box_reg"])
    torch.testing.assert_close(weighted["loss_classifier"], base["loss_classifier"])

    det = tiny_detector(roi_heads={**heads, "box_loss": "giou"}).train()
    giou = det(images, targets)
    assert set(giou) == set(base) and giou["loss_box_reg"] != base["loss_box_reg"]
    torch.testing.assert_close(giou["loss_classifier"], base["loss_classifier"])
    # The GIoU loss trains the box regression and nothing of the classification output.
    giou["loss_box_reg"].backward()
    predictor = det.model.roi_heads.box_predictor
    assert predictor.bbox_pred.weight.grad.abs().sum() > 0
    assert predictor.cls_score.weight.grad is None or predictor.cls_score.weight.grad.abs().sum() == 0


def test_bbox_reg_weights_reach_torchvisions_box_coder_and_are_checked() -> None:
    heads = dict(TINY["model"]["roi_heads"])
    det = tiny_detector(roi_heads={**heads, "bbox_reg_weights": [20, 20, 10, 10]})
    assert det.model.roi_heads.box_coder.weights == (20.0, 20.0, 10.0, 10.0)
    assert tiny_detector().model.roi_heads.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    import pytest

    from birddet.errors import InputError

    with pytest.raises(InputError, match="4 numbers"):
        tiny_detector(roi_heads={**heads, "bbox_reg_weights": [20, 20, 10]})
