"""Species-classifier preprocessing: birder's whole-image transform and the square crop around a detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from birder.data.transforms.classification import inference_preset
from PIL import Image

from birddet.models.classifier import classifier_transform, crop_for_classifier, crops_for_classifier, square_crop_box

STATS = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus a few sharp-edged blobs and mild noise: resampling differences stay photo-sized."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / width * 200, yy / height * 180, (xx + yy) / (width + height) * 220], axis=-1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 60)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, size=3)
    img += rng.normal(0, 4, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB")


@pytest.mark.parametrize(("size", "center_crop"), [((384, 384), 1.0), ((256, 320), 1.0), ((224, 224), 0.875)], ids=str)
def test_classifier_transform_equals_birder_inference_preset(size: tuple[int, int], center_crop: float) -> None:
    image = photo_like(500, 333)
    ours = classifier_transform(size, STATS, center_crop)(image)
    theirs = inference_preset(size, STATS, center_crop)(image)
    assert ours.shape == (3, *size) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


# (box, image (w, h), margin) -> expected crop; worked out by hand in the comments.
@pytest.mark.parametrize(
    ("box", "image_size", "margin", "expected"),
    [
        # 100x50 box: side 100 * 1.3 = 130 about centre (150, 125).
        ((100, 100, 200, 150), (1000, 800), 0.15, (85, 60, 215, 190)),
        # no margin: the longer side, 100, about the same centre.
        ((100, 100, 200, 150), (1000, 800), 0.0, (100, 75, 200, 175)),
        # top-left corner: a 65 px square shifted inside rather than cut.
        ((0, 0, 50, 30), (1000, 800), 0.15, (0, 0, 65, 65)),
        # bottom-right corner: shifted back to end at the border.
        ((950, 770, 1000, 800), (1000, 800), 0.15, (935, 735, 1000, 800)),
        # box wider than the image allows: side capped at max(w, h), clipped to the image.
        ((0, 0, 1000, 800), (1000, 800), 0.15, (0, 0, 1000, 800)),
        # sub-pixel box: at least one pixel.
        ((10.2, 10.2, 10.4, 10.4), (1000, 800), 0.15, (10, 10, 11, 11)),
        # tall box in a portrait image, margin 0.25: side 300 * 1.5 = 450 about (300, 400).
        ((280, 250, 320, 550), (600, 900), 0.25, (75, 175, 525, 625)),
    ],
)
def test_square_crop_box_geometry(
    box: tuple[float, ...], image_size: tuple[int, int], margin: float, expected: tuple[int, int, int, int]
) -> None:
    assert square_crop_box(box, image_size, margin=margin) == expected


def test_square_crop_box_is_square_and_inside_the_image_wherever_there_is_room() -> None:
    rng = np.random.default_rng(0)
    width, height = 640, 480
    for _ in range(200):
        x0, y0 = rng.uniform(0, width - 2), rng.uniform(0, height - 2)
        x1, y1 = rng.uniform(x0 + 1, min(x0 + 200, width)), rng.uniform(y0 + 1, min(y0 + 200, height))
        cx0, cy0, cx1, cy1 = square_crop_box((x0, y0, x1, y1), (width, height))
        assert 0 <= cx0 < cx1 <= width and 0 <= cy0 < cy1 <= height
        assert abs((cx1 - cx0) - (cy1 - cy0)) <= 1  # rounding only: 200 * 1.3 < 480
        assert cx0 <= x0 + 0.5 and cy0 <= y0 + 0.5 and cx1 >= x1 - 0.5 and cy1 >= y1 - 0.5  # the box is inside


def test_square_crop_box_of_subpixel_box_at_far_border_is_one_pixel() -> None:
    assert square_crop_box((999.9, 799.9, 1000, 800), (1000, 800)) == (999, 799, 1000, 800)


def test_crops_for_classifier_match_pil_crops() -> None:
    image = photo_like(640, 480, seed=1)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
    boxes = torch.tensor([[100.0, 120.0, 260.0, 200.0], [0.0, 0.0, 40.0, 90.0], [500.0, 300.0, 640.0, 480.0]])
    crops = crops_for_classifier(tensor, boxes, (224, 224), STATS)
    assert crops.shape == (3, 3, 224, 224) and crops.dtype == torch.float32
    for crop, box in zip(crops, boxes.tolist()):
        reference = crop_for_classifier(image, box, (224, 224), STATS)
        assert (crop - reference).abs().mean() < 0.005  # PIL vs tensor bicubic: ~1e-4; a 4 px shift: ~0.1
    empty = crops_for_classifier(tensor, torch.zeros(0, 4), (224, 224), STATS)
    assert empty.shape == (0, 3, 224, 224)


def test_crop_for_classifier_normalises_the_cropped_region_only() -> None:
    # Left half black, right half white: a crop inside the white half is uniformly (1 - mean) / std.
    array = np.zeros((200, 400, 3), dtype=np.uint8)
    array[:, 200:] = 255
    crop = crop_for_classifier(Image.fromarray(array), (260, 60, 340, 140), (64, 64), STATS, margin=0.1)
    expected = torch.tensor([(1 - m) / s for m, s in zip(STATS["mean"], STATS["std"])]).view(3, 1, 1).expand(3, 64, 64)
    torch.testing.assert_close(crop, expected, rtol=0, atol=1e-5)
