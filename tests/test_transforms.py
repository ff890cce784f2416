"""Train/eval transforms move boxes with the pixels and drop a box's label together with the box."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from birddet.data.transforms import build_eval_transforms, build_train_transforms


def _image(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_horizontal_flip_mirrors_box_and_keeps_label():
    # scale fixed at 1 and image already size x size: LSJ is a no-op, so only the flip acts.
    t = build_train_transforms(100, scale_range=(1.0, 1.0), hflip=1.0, color_jitter=0.0)
    image = _image(100, 100)
    out, boxes, labels = t(image, np.array([[10.0, 20.0, 30.0, 60.0]]), np.array([7]))
    assert out.shape == (3, 100, 100) and out.dtype == torch.float32
    np.testing.assert_allclose(boxes, [[70.0, 20.0, 90.0, 60.0]], atol=1e-4)
    assert labels.tolist() == [7]
    torch.testing.assert_close(out, torch.from_numpy(image[:, ::-1].copy()).permute(2, 0, 1).float() / 255)


def test_crop_that_removes_a_box_removes_its_label():
    # A 200x200 image at scale 1 is random-cropped to 100x100: exactly one of two far-apart boxes survives.
    t = build_train_transforms(200, scale_range=(1.0, 1.0), hflip=0.0, color_jitter=0.0)
    t_small = build_train_transforms(100, scale_range=(2.0, 2.0), hflip=0.0, color_jitter=0.0)
    boxes_in = np.array([[2.0, 2.0, 22.0, 22.0], [178.0, 178.0, 198.0, 198.0]])
    _, boxes, labels = t(_image(200, 200), boxes_in, np.array([1, 2]))
    assert labels.tolist() == [1, 2] and len(boxes) == 2
    seen = set()
    for _ in range(20):
        out, boxes, labels = t_small(_image(200, 200), boxes_in, np.array([1, 2]))
        assert out.shape == (3, 100, 100)
        assert len(boxes) == len(labels) <= 1
        seen.update(labels.tolist())
        assert ((boxes >= 0) & (boxes <= 100)).all()
    assert seen <= {1, 2}


def test_lsj_output_is_fixed_square_and_boxes_inside():
    t = build_train_transforms(64)
    for _ in range(10):
        out, boxes, labels = t(_image(90, 150), np.array([[10.0, 10.0, 120.0, 80.0]]), np.array([3]))
        assert out.shape == (3, 64, 64) and out.min() >= 0.0 and out.max() <= 1.0
        assert boxes.shape == (len(labels), 4) and labels.dtype == np.int64
        assert ((boxes >= 0) & (boxes <= 64)).all()


def test_empty_boxes_pass_through():
    out, boxes, labels = build_train_transforms(32)(_image(40, 50), np.zeros((0, 4)), np.zeros(0))
    assert out.shape == (3, 32, 32) and boxes.shape == (0, 4) and labels.shape == (0,)


def test_eval_transform_resizes_longest_side_and_reports_scale():
    t = build_eval_transforms(50)
    out, boxes, labels = t(_image(100, 80), np.array([[10.0, 10.0, 40.0, 50.0]]), np.array([3]))
    assert out.shape == (3, 50, 40)
    assert t.scale_for(100, 80) == pytest.approx(0.5)
    np.testing.assert_allclose(boxes, [[5.0, 5.0, 20.0, 25.0]], atol=1e-4)
    assert labels.tolist() == [3]
