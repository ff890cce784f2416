"""The report's pictures: each shown image shrunk to a preview, and (two-stage eval) crops of chosen boxes.

Each image is decoded once (`birddet.data.images.load_image`: EXIF rotation, any mode to 8-bit RGB, pixel caps), its
preview written as a JPEG of at most `PREVIEW_SIDE` pixels on the long side, and the requested crops cut from the
full-resolution pixels. An image that cannot be read costs only its preview: the failure is recorded on the image
and the page shows a placeholder. Decoding runs in a small thread pool (Pillow releases the GIL while it decodes
and resizes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from birddet.data.images import load_image
from birddet.errors import InputError
from birddet.fileio import atomic_path
from birddet.report.inputs import ReportImage

PREVIEW_SIDE = 800  # sharp enough for the detail view on a laptop screen, ~50-100 KB a JPEG
CROP_SIDE = 160
CROP_MARGIN = 0.15  # context around a box, as the species classifier sees it (models/classifier.py)
JPEG_QUALITY = 80


def _save_jpeg(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        img.save(tmp, format="JPEG", quality=JPEG_QUALITY)


def _crop(img: Image.Image, xywh: Sequence[float]) -> Image.Image:
    """The normalised box widened by `CROP_MARGIN` on each side, clipped to the image, shrunk to `CROP_SIDE`."""
    w, h = img.size
    x, y, bw, bh = xywh
    mx, my = bw * CROP_MARGIN, bh * CROP_MARGIN
    left, top = max(0.0, x - mx) * w, max(0.0, y - my) * h
    right, bottom = min(1.0, x + bw + mx) * w, min(1.0, y + bh + my) * h
    crop = img.crop((int(left), int(top), max(int(left) + 1, int(right)), max(int(top) + 1, int(bottom))))
    crop.thumbnail((CROP_SIDE, CROP_SIDE), Image.Resampling.BILINEAR)
    return crop


def make_assets(
    image: ReportImage, preview: Path, crops: dict[int, Path], out_dir: Path
) -> tuple[str | None, str | None]:
    """Write `image`'s preview (and the crops of its boxes `crops`: box index -> path); return (preview path
    relative to `out_dir`, or None, and the reason it could not be made). Pixel boxes are normalised here, by the
    decoded size (the frame predict wrote them in)."""
    if image.path is None:
        return None, "image location unknown"
    try:
        # Crops need the full pixels; a preview alone decodes a JPEG at a reduced scale, several times faster.
        img = load_image(image.path, draft=None if crops else PREVIEW_SIDE)
    except (InputError, OSError, ValueError) as exc:
        return None, " ".join(str(exc).split())
    w, h = img.size
    if not image.normalised:
        for box in image.boxes:
            x, y, bw, bh = box.xywh
            box.xywh = (x / w, y / h, bw / w, bh / h)
        image.normalised = True
    image.width, image.height = image.width or w, image.height or h
    for index, path in crops.items():
        _save_jpeg(_crop(img, image.boxes[index].xywh), path)
    img.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.BILINEAR)
    _save_jpeg(img, preview)
    return preview.relative_to(out_dir).as_posix(), None


def make_all_assets(
    images: Sequence[ReportImage], out_dir: Path, crops: dict[int, dict[int, Path]], workers: int | None = None
) -> list[tuple[str | None, str | None]]:
    """`make_assets` for every image (previews named `previews/<n>.jpg`, so odd file names never reach a URL)."""
    workers = workers or min(4, os.cpu_count() or 1)

    def one(n: int) -> tuple[str | None, str | None]:
        return make_assets(images[n], out_dir / "previews" / f"{n}.jpg", crops.get(n, {}), out_dir)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(images))))
