"""Annotated images: boxes and labels drawn with PIL only, so the pipeline needs no plotting stack.

Labels say what a person reviewing camera-trap images needs: the most specific name the classifier is
confident about (common name when known, else scientific name, else a higher taxon from the roll-up, else
the detector category) and its score. Each number follows the name it belongs to: after a species or taxon it is
the classifier's probability, after the detector's category the detection score. A box whose species is uncertain
shows both: ``bird 0.91 · robin? 0.36``. Line width and font size scale with the image so labels stay
readable on both thumbnails and 24-megapixel frames; labels are kept inside the image and never cover each
other (a label that fits nowhere is left out; its box is still drawn).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from birddet.fileio import atomic_path
from birddet.pipeline.results import Detection
from birddet.pipeline.taxonomy import Taxonomy

# Tableau-like palette: distinct hues that stay visible on foliage, sky and snow.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)


def label_for(detection: Detection, taxonomy: Taxonomy | None, use_common_names: bool = True) -> tuple[str, int]:
    """The label text of a detection and a stable colour key (same species -> same colour across images).

    A roll-up above species wins over the top-1 species because it is the honest answer when the species is
    uncertain; the rank is shown so "Spinus (genus)" is not mistaken for a species. When the classifier named no
    taxon at all (:attr:`Detection.species_uncertain`, e.g. a classifier trained on one's own crops, which has no
    ranks to roll up to), the box is what the detector says, with its detection score, and the top species follows
    as a guess with its probability: ``"bird 0.91 · sanhaco_da_amazonia? 0.36"``; the colour is the detector
    category's.
    """
    rollup = detection.rollup
    top = detection.top_classification()
    detected = f"{detection.category_name} {detection.score:.2f}"
    if top is not None and detection.species_uncertain:
        guess = _species_label(top.class_index, taxonomy, use_common_names)
        return f"{detected} · {guess}? {top.score:.2f}", detection.category_id
    if rollup is not None and rollup.rank != "species":
        return f"{rollup.name} ({rollup.rank}) {rollup.score:.2f}", zlib.crc32(rollup.name.encode())
    if top is not None:
        return f"{_species_label(top.class_index, taxonomy, use_common_names)} {top.score:.2f}", top.class_index
    return detected, detection.category_id


def _species_label(class_index: int, taxonomy: Taxonomy | None, use_common_names: bool) -> str:
    if taxonomy is None:
        return f"class {class_index}"
    return taxonomy.taxon(class_index).label(use_common_names)


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _text_colour(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


Rect = tuple[float, float, float, float]


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(
    boxes: Sequence[Rect], label_sizes: Sequence[tuple[float, float]], image_size: tuple[int, int]
) -> list[Rect | None]:
    """Where each box's label goes (`x0, y0, x1, y1`), or None when every spot would cover another label.

    Boxes are served in the order given (put the most confident first). Candidate spots, in order: above the box,
    inside its top edge, below it, inside its bottom edge, each left-aligned then right-aligned with the box, each
    shifted to stay inside the image. A flock of 1,000 birds gets labels where they fit and boxes everywhere,
    rather than a slab of overlapping text; a grid of cells keeps the overlap check near-linear.
    """
    width, height = image_size
    placed: list[Rect | None] = []
    cell = max(1.0, max((h for _, h in label_sizes), default=1.0), max((w for w, _ in label_sizes), default=1.0))
    grid: dict[tuple[int, int], list[Rect]] = {}

    def cells(r: Rect) -> list[tuple[int, int]]:
        return [
            (i, j)
            for i in range(int(r[0] // cell), int(r[2] // cell) + 1)
            for j in range(int(r[1] // cell), int(r[3] // cell) + 1)
        ]

    for (x1, y1, x2, y2), (tw, th) in zip(boxes, label_sizes, strict=True):
        spot = None
        for ly in (y1 - th, y1, y2, y2 - th):
            for lx in (x1, x2 - tw):
                cx = min(max(lx, 0.0), max(width - tw, 0.0))
                cy = min(max(ly, 0.0), max(height - th, 0.0))
                rect = (cx, cy, cx + tw, cy + th)
                if not any(_overlaps(rect, other) for c in cells(rect) for other in grid.get(c, ())):
                    spot = rect
                    break
            if spot is not None:
                break
        if spot is not None:
            for c in cells(spot):
                grid.setdefault(c, []).append(spot)
        placed.append(spot)
    return placed


def line_width(image_size: tuple[int, int]) -> int:
    """Box outline width: 2 px up to a 600 px short side, then a 300th of it (10 px on a 4,000 x 3,000 photo,
    50 px on a 20,000 x 15,000 survey image), so boxes stay visible when the picture is viewed whole."""
    return max(2, round(min(image_size) / 300))


def draw_detections(
    image: Image.Image,
    detections: Sequence[Detection],
    taxonomy: Taxonomy | None,
    *,
    use_common_names: bool = True,
) -> Image.Image:
    """Return an RGB copy of ``image`` with each detection's box and label drawn; ``image`` is untouched.

    Boxes are in the displayed image's pixels (``Detection.box_xyxy``), so ``image`` must already have its
    EXIF orientation applied. All boxes are drawn first, then labels in order of decreasing score where they
    cover no other label and stay inside the image (see :func:`place_labels`); a box whose label fits nowhere
    keeps its outline only.
    """
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    width, height = out.size
    short = min(width, height)
    line = line_width((width, height))
    font = _font(max(12, short // 40))
    pad = max(2, line)
    draw = ImageDraw.Draw(out)
    order = sorted(range(len(detections)), key=lambda i: -detections[i].score)
    boxes: list[Rect] = []
    texts: list[tuple[str, tuple[int, int, int], tuple[float, float, float, float]]] = []
    for i in order:
        det = detections[i]
        x1, y1, x2, y2 = (float(v) for v in det.box_xyxy)
        x1, x2 = sorted((min(max(x1, 0.0), width - 1.0), min(max(x2, 0.0), width - 1.0)))
        y1, y2 = sorted((min(max(y1, 0.0), height - 1.0), min(max(y2, 0.0), height - 1.0)))
        text, key = label_for(det, taxonomy, use_common_names)
        colour = PALETTE[key % len(PALETTE)]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        boxes.append((x1, y1, x2, y2))
        texts.append((text, colour, draw.textbbox((0, 0), text, font=font)))
    sizes = [(r - lft + 2 * pad, b - t + 2 * pad) for _, _, (lft, t, r, b) in texts]
    for spot, (text, colour, (left, top, _, _)) in zip(place_labels(boxes, sizes, (width, height)), texts):
        if spot is None:
            continue
        lx, ly = spot[0], spot[1]
        draw.rectangle(spot, fill=colour)
        draw.text((lx + pad - left, ly + pad - top), text, fill=_text_colour(colour), font=font)
    return out


def save_annotated(
    image: Image.Image,
    detections: Sequence[Detection],
    out_path: str | os.PathLike[str],
    taxonomy: Taxonomy | None,
    *,
    use_common_names: bool = True,
) -> Path:
    """Draw detections and save atomically to ``out_path``; the format follows its extension (JPEG q=90)."""
    target = Path(out_path)
    fmt = Image.registered_extensions().get(target.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format from {target.name!r}; use .jpg or .png")
    annotated = draw_detections(image, detections, taxonomy, use_common_names=use_common_names)
    with atomic_path(target) as tmp:
        options = {"quality": 90} if fmt == "JPEG" else {}
        annotated.save(tmp, format=fmt, **options)
    return target
