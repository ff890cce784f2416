"""Species classifier preprocessing: birder's whole-image transform and the crop transform for a detected box.

birder's inference transform for these models is a bicubic, antialiased resize to the model size (centre-crop
ratio 1.0, so the centre crop is a no-op), scaling to [0, 1] and normalisation with the file's `rgb_stats`.
The crop transform puts a detection box through the same steps after widening it by a margin and making it
square, so a bird is seen by the classifier the way whole images were seen in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


def classifier_transform(
    size: tuple[int, int], rgb_stats: dict[str, Sequence[float]], center_crop: float = 1.0
) -> v2.Compose:
    """birder's `inference_preset`: PIL image -> normalised float tensor [3, H, W] at `size`."""
    base = (int(size[0] / center_crop), int(size[1] / center_crop))
    return v2.Compose(
        [
            v2.Resize(base, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(size),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(rgb_stats["mean"]), std=list(rgb_stats["std"])),
        ]
    )


def square_crop_box(
    box_xyxy: Sequence[float], image_size: tuple[int, int], *, margin: float = 0.15
) -> tuple[int, int, int, int]:
    """Widen a box by `margin` of its longer side on every side, make it square about its centre, clip to the image.

    `image_size` is (width, height). Returns integer pixel bounds (x0, y0, x1, y1), at least 1 px wide and high.
    Clipping at a border keeps the crop inside the image rather than padding: a bird at the edge is cut, not
    surrounded by grey the classifier never saw in training.
    """
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    width, height = image_size
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    side = min(side, float(max(width, height)))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left, top = cx - side / 2.0, cy - side / 2.0
    # Shift a square that overhangs one border back inside before clipping, so it stays as square as it can.
    left = min(max(left, 0.0), max(width - side, 0.0))
    top = min(max(top, 0.0), max(height - side, 0.0))
    right, bottom = min(left + side, width), min(top + side, height)
    # Round the start inside the image: a sub-pixel box at the far border must still give a 1 px crop.
    ix0, iy0 = min(int(round(left)), width - 1), min(int(round(top)), height - 1)
    ix1, iy1 = max(int(round(right)), ix0 + 1), max(int(round(bottom)), iy0 + 1)
    return ix0, iy0, min(ix1, width), min(iy1, height)


def crop_for_classifier(
    image: Image.Image,
    box_xyxy: Sequence[float],
    size: tuple[int, int],
    rgb_stats: dict[str, Sequence[float]],
    *,
    margin: float = 0.15,
) -> torch.Tensor:
    """Crop a detection from a PIL RGB image and prepare it for the species classifier: [3, H, W] float tensor."""
    x0, y0, x1, y1 = square_crop_box(box_xyxy, image.size, margin=margin)
    crop = image.crop((x0, y0, x1, y1))
    return classifier_transform(size, rgb_stats)(crop)


def crops_for_classifier(
    image: torch.Tensor,
    boxes_xyxy: torch.Tensor,
    size: tuple[int, int],
    rgb_stats: dict[str, Sequence[float]],
    *,
    margin: float = 0.15,
) -> torch.Tensor:
    """Batched crop transform on a uint8 tensor image [3, H, W]: returns [N, 3, size] normalised crops.

    Same geometry as `crop_for_classifier`; resizing runs on tensors so crops of a whole batch can be made on
    the device the image is on.
    """
    if boxes_xyxy.numel() == 0:
        return torch.empty((0, 3, *size), dtype=torch.float32, device=image.device)
    height, width = image.shape[-2:]
    mean = torch.tensor(rgb_stats["mean"], device=image.device).view(3, 1, 1)
    std = torch.tensor(rgb_stats["std"], device=image.device).view(3, 1, 1)
    crops = []
    for box in boxes_xyxy.tolist():
        x0, y0, x1, y1 = square_crop_box(box, (width, height), margin=margin)
        crop = image[:, y0:y1, x0:x1]
        crop = TF.resize(crop, list(size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        crops.append((crop.float() / 255.0 - mean) / std)
    return torch.stack(crops)
