"""Iterative box refinement at inference (`model.roi_heads.refine_steps`, birddet/models/box_refine.py): each pass
pools at the detected box and applies that box's own class's regression; training is untouched. That a run's
numbers with it are what a fresh `birddet eval` gives is in test_real_shapes.py, ONNX parity in test_export_onnx.py."""

from __future__ import annotations

import pytest
import torch
from test_trainer import tiny_config

from birddet.config import load_config
from birddet.errors import InputError
from birddet.models.box_refine import refine_boxes
from birddet.models.detector import build_detector

CATEGORIES = {1: "songbird", 2: "wader"}


def _detector(steps: int, *, shift: bool = True):  # noqa: ANN202
    torch.manual_seed(0)
    cfg = tiny_config(None)
    cfg.model.roi_heads.refine_steps = steps
    det = build_detector(cfg, CATEGORIES).eval()
    if shift:  # a regression that visibly moves every box: dx = +0.1 box widths for class 1, -0.1 for class 2
        pred = det.model.roi_heads.box_predictor.bbox_pred
        with torch.no_grad():
            pred.weight.zero_()
            pred.bias.zero_()
            pred.bias[4] = 1.0  # class 1's dx code; BoxCoder weight 10 -> 0.1 widths
            pred.bias[8] = -1.0  # class 2's dx code
    return det


def _features(det, image: torch.Tensor):  # noqa: ANN001, ANN202
    batch, _ = det.model.transform([image])
    return det.model.backbone(batch.tensors), batch.image_sizes


def test_each_pass_regresses_a_box_again_with_its_own_class_and_clips_it() -> None:
    det = _detector(0)
    features, shapes = _features(det, torch.rand(3, 128, 128))
    boxes = torch.tensor([[10.0, 10.0, 50.0, 30.0], [60.0, 20.0, 80.0, 60.0], [100.0, 0.0, 126.0, 40.0]])
    found = [{"boxes": boxes, "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([1, 2, 1])}]
    with torch.no_grad():
        once = refine_boxes(det.model.roi_heads, features, shapes, found)[0]
        twice = refine_boxes(det.model.roi_heads, features, shapes, [once])[0]
    # 40 px wide, class 1: +4 px; 20 px wide, class 2: -2 px; the third is pushed past the right edge and clipped.
    assert once["boxes"].tolist() == [
        pytest.approx([14.0, 10.0, 54.0, 30.0]),
        pytest.approx([58.0, 20.0, 78.0, 60.0]),
        pytest.approx([102.6, 0.0, 128.0, 40.0]),
    ]
    assert twice["boxes"][0].tolist() == pytest.approx([18.0, 10.0, 58.0, 30.0])  # from the refined box
    assert torch.equal(once["scores"], found[0]["scores"]) and torch.equal(once["labels"], found[0]["labels"])


def test_no_detection_in_an_image_passes_through() -> None:
    det = _detector(0)
    features, shapes = _features(det, torch.rand(3, 96, 128))
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    with torch.no_grad():
        out = refine_boxes(det.model.roi_heads, features, shapes, [empty])
    assert out[0]["boxes"].shape == (0, 4)


def test_the_detector_refines_at_inference_only() -> None:
    plain, refined = _detector(0), _detector(2)
    images = [torch.rand(3, 72, 128, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad(), plain.inference_caps(0.0, None), refined.inference_caps(0.0, None):
        got, first = refined(images), plain(images)
        batch, _ = plain.model.transform(images)  # by hand: the single regression, then two passes
        features = plain.model.backbone(batch.tensors)
        proposals, _ = plain.model.rpn(batch, features)
        found, _ = plain.model.roi_heads(features, proposals, batch.image_sizes)
        for _ in range(2):
            found = refine_boxes(plain.model.roi_heads, features, batch.image_sizes, found)
        expected = plain.model.transform.postprocess(found, batch.image_sizes, [im.shape[-2:] for im in images])
    assert sum(len(o["boxes"]) for o in got) > 0
    for g, e, f in zip(got, expected, first):
        torch.testing.assert_close(g["boxes"], e["boxes"])
        assert torch.equal(g["scores"], f["scores"])  # scores and labels as the single regression left them
        assert not torch.allclose(g["boxes"], f["boxes"])
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]), "labels": torch.tensor([1])} for _ in images]
    losses = {}
    for name, det in (("plain", plain), ("refined", refined)):
        det.train()
        torch.manual_seed(1)
        losses[name] = {k: v.item() for k, v in det(images, targets).items()}
    assert losses["plain"] == losses["refined"]  # training is the one head's, unchanged


def test_refine_steps_out_of_range_is_an_input_error_naming_the_key(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  roi_heads:\n    refine_steps: 4\n")
    with pytest.raises(InputError, match="refine_steps"):
        load_config(str(cfg))
