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


def test_scale_jitter_above_one_keeps_the_photo_sharp():
    """A sample shown at twice the input scale is cut from the photo brought to twice the size, not from a
    photo brought to the input size and upsampled: fine detail (feather edges, box borders) stays as sharp as at
    scale 1, where evaluation sees it."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)  # detail at every scale
    box = np.array([[100.0, 100.0, 700.0, 500.0]])

    def edge_strength(scale: float) -> float:
        t = build_train_transforms(64, scale_range=(scale, scale), hflip=0.0, color_jitter=0.0)
        out, _, _ = t(photo, box, np.array([1]))
        valid = out[:, :40, :]  # rows 48+ are padding at scale 1 (a 64 x 48 photo)
        return float((valid[:, :, 1:] - valid[:, :, :-1]).abs().mean())

    assert build_train_transforms(64, scale_range=(0.5, 2.0)).source_side == 128
    assert build_train_transforms(64, scale_range=(0.5, 0.8)).source_side == 64
    # Bilinear upsampling by 2 of the scale-1 photo roughly halves the neighbour differences (0.5x measured).
    assert edge_strength(2.0) > 0.8 * edge_strength(1.0)


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


# -- mosaic and copy-paste ---------------------------------------------------------------------------------------------
#: Each label's solid colour; the background is a grey none of them is close to, and not the mosaic's pad colour.
LABEL_COLOURS = {1: (230, 20, 20), 2: (20, 230, 20), 3: (20, 20, 230), 4: (230, 230, 20), 5: (230, 20, 230)}
BACKGROUND = (60, 60, 60)


def _painted(h: int, w: int, boxes: list[tuple[int, int, int, int]], labels: list[int]) -> tuple[np.ndarray, ...]:
    """An image whose boxes are filled with their label's colour: a box's pixels say which label they belong to."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BACKGROUND
    for (x0, y0, x1, y1), lab in zip(boxes, labels):
        img[y0:y1, x0:x1] = LABEL_COLOURS[lab]
    return img, np.array(boxes, np.float32), np.array(labels, np.int64)


def _colour_mask(img: np.ndarray, label: int) -> np.ndarray:
    return np.abs(img.astype(int) - np.array(LABEL_COLOURS[label])).max(-1) < 40


def test_mosaic_keeps_every_box_on_its_pixels_with_its_label():
    # Four photos of different shapes (16:9, portrait, square, 4:3), one label per photo-box so a colour names a box.
    items = [
        _painted(180, 320, [(40, 30, 120, 90)], [1]),
        _painted(320, 180, [(20, 200, 150, 300)], [2]),
        _painted(200, 200, [(100, 10, 190, 60)], [3]),
        _painted(240, 320, [(10, 150, 90, 230), (200, 20, 300, 120)], [4, 5]),
    ]
    t = build_train_transforms(128, scale_range=(1.0, 1.0), hflip=0.0, color_jitter=0.0, mosaic=1.0)
    assert t.extra_images == 3
    boxes_seen, labels_seen = 0, set()
    for seed in range(12):
        np.random.seed(seed)
        out, boxes, labels = t(*items[0], extra=items[1:])
        img = (out.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert img.shape == (128, 128, 3) and len(boxes) == len(labels)
        for box, lab in zip(boxes, labels):
            x0, y0, x1, y1 = box
            # The box is exactly where its colour is: its pixels are its label's colour...
            inner = img[int(np.ceil(y0)) + 1 : int(y1) - 1, int(np.ceil(x0)) + 1 : int(x1) - 1]
            assert not inner.size or _colour_mask(inner, int(lab)).mean() > 0.97
            # ...and it is tight: the colour's extent in the whole image matches the box to within 1.5 px.
            ys, xs = np.nonzero(_colour_mask(img, int(lab)))
            np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box, atol=1.5)
            boxes_seen += 1
            labels_seen.add(int(lab))
        # Every colour that shows most of its box (scaled as the tile was) has its box and label.
        for lab in LABEL_COLOURS:
            src = next(it for it in items if lab in it[2])
            full = src[1][list(src[2]).index(lab)]
            tile_scale = 128 / max(src[0].shape[:2])
            area = (full[2] - full[0]) * (full[3] - full[1]) * tile_scale**2
            if _colour_mask(img, lab).sum() > 0.6 * area:
                assert lab in labels.tolist()
    assert boxes_seen >= 20  # the check above ran on plenty of boxes
    assert len(labels_seen) >= 4  # ...from at least three of the four photos


def test_mosaic_is_off_for_the_last_epochs():
    t = build_train_transforms(64, mosaic=1.0, mosaic_off_epochs=2)
    t.set_epoch(7, 10)
    assert t.extra_images == 3
    t.set_epoch(8, 10)
    assert t.extra_images == 0
    image, boxes, labels = _painted(100, 100, [(10, 10, 50, 50)], [1])
    out, _, _ = t(image, boxes, labels)  # no other images needed once mosaic is off
    assert out.shape == (3, 64, 64)


def test_defaults_leave_todays_pipeline_unchanged():
    t = build_train_transforms(64)
    assert t.extra_images == 0 and t.mosaic_pipeline is None
    names = [type(s).__name__ for s in t.pipeline.transforms]
    assert names == ["LongestMaxSize", "RandomScale", "PadIfNeeded", "RandomCrop", "HorizontalFlip", "ColorJitter"]


def test_copy_paste_adds_source_birds_at_their_relative_size_without_overlap():
    from birddet.data.transforms import PASTE_MAX_COVER, paste_boxes

    target = _painted(200, 300, [(10, 10, 60, 60)], [1])
    # The source photo is twice as large: its 80x60 bird becomes 40x30 in the target.
    source = _painted(400, 600, [(100, 100, 180, 160), (400, 200, 480, 280)], [2, 3])
    np.random.seed(0)
    image, boxes, labels = paste_boxes(*target, source)
    assert labels.tolist()[0] == 1 and sorted(labels.tolist()[1:]) == [2, 3]
    for box, lab in zip(boxes[1:], labels[1:]):
        w, h = box[2] - box[0], box[3] - box[1]
        assert (w, h) == pytest.approx((40, 30) if lab == 2 else (40, 40), abs=1.0)
        inner = image[int(box[1]) + 2 : int(box[3]) - 2, int(box[0]) + 2 : int(box[2]) - 2]
        assert _colour_mask(inner, int(lab)).mean() > 0.97
    from birddet.data.transforms import covered_fraction

    for i in range(1, len(boxes)):  # each paste covers (box only, here) at most PASTE_MAX_COVER of every earlier box
        assert covered_fraction(boxes[i], boxes[:i]).max() <= PASTE_MAX_COVER
    assert _colour_mask(image, 1)[10:60, 10:60].all()  # the original bird is untouched


def test_copy_paste_never_buries_a_small_bird_under_a_large_paste():
    """A 12 px bird under a 90 px paste has IoU < 0.02 with it; the paste (its feathered margin included) must not lie
    over the bird, or the bird's box and label would sit on pixels that now show another bird."""
    from birddet.data.transforms import PASTE_MARGIN, covered_fraction, paste_boxes

    small = (60, 40, 72, 52)
    target = _painted(120, 200, [small], [1])  # a 200 x 120 photo with one 12 px bird
    source = _painted(120, 200, [(20, 10, 110, 100)], [2])  # a 90 px bird, the same size in the target
    for seed in range(40):
        np.random.seed(seed)
        image, boxes, labels = paste_boxes(*target, source)
        assert _colour_mask(image, 1)[40:52, 60:72].all(), f"seed {seed}: the small bird was painted over"
        for box in boxes[1:]:
            w, h = box[2] - box[0], box[3] - box[1]
            patch = np.array([box[0] - PASTE_MARGIN * w, box[1] - PASTE_MARGIN * h, box[2] + PASTE_MARGIN * w,
                              box[3] + PASTE_MARGIN * h])  # fmt: skip
            assert covered_fraction(patch, np.array([small], np.float32)).max() <= 0.05 + 1e-6


def test_dataset_hands_mosaic_its_other_images(tmp_path):
    from birddet.data.coco import CocoDetection
    from birddet.data.synthetic import make_synthetic_coco

    paths = make_synthetic_coco(tmp_path, num_train=6, num_val=0, seed=1)
    t = build_train_transforms(96, scale_range=(1.0, 1.0), mosaic=1.0, copy_paste=1.0)
    ds = CocoDetection(paths["train"], paths["images"], t)
    assert t.extra_images == 4
    counts = []
    for i in range(len(ds)):
        np.random.seed(i)
        image, target = ds[i]
        assert image.shape == (3, 96, 96)
        b = target["boxes"]
        assert ((b >= 0) & (b <= 96)).all() and (b[:, 2:] > b[:, :2]).all()
        assert len(target["labels"]) == len(b)
        counts.append(len(b))
    # A mosaic with pasted birds holds more birds than the 0-4 of a single synthetic image, on average.
    single = [len(a) for a in ds.anns_by_image.values()]
    assert np.mean(counts) > np.mean(single)


def test_bad_augment_settings_are_input_errors_naming_the_key(tmp_path):
    from birddet.engine.trainer import train
    from birddet.errors import InputError
    from tests.test_trainer import tiny_config

    cfg = tiny_config(tmp_path / "data")
    cfg.data.augment.mosaic = 1.5
    with pytest.raises(InputError, match=r"data.augment: mosaic is a probability in \[0, 1\], got 1.5"):
        train(cfg, tmp_path / "run")
