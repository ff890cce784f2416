"""Dataset statistics for `birddet stats`: what is in a COCO split, plots of it, a gallery, and suggested sizes.

Numbers come from the JSON (no image is decoded except the few drawn in the gallery):

- images, boxes per class, negatives, boxes per image;
- box size as `sqrt(w * h)` in pixels and relative to the image (`sqrt(box area / image area)`), and COCO's
  small / medium / large bins (area below 32^2, below 96^2, above; pycocotools' `areaRng`, on the original pixels);
- image sizes and aspect ratios (width / height), box aspect ratios.

Suggestions, each with a one-line reason:

- `model.image_size` (the longest side the detector sees): the smallest multiple of 32 at which 90 % of boxes are at
  least `MIN_BOX_PX` (16 px, one ViT patch) after resizing, at least 256, at most 1536 and at most the images' median
  longest side (upscaling adds pixels but no detail). When even that leaves many birds tiny, tiling is the better
  tool, and the reason line says so.
- `model.rpn.anchor_sizes` (one per pyramid level, doubling, as in ViTDet): the first near the 5th percentile of box
  sizes at the suggested image size, so the finest level covers the smallest birds and the coarsest the largest.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from birddet.data.coco_validation import load_coco_dataset
from birddet.data.images import ImageLoadError, load_image
from birddet.fileio import atomic_path, atomic_write_json

__all__ = ["compute_stats", "suggest_sizes", "write_stats"]

MIN_BOX_PX = 16.0
SMALL, MEDIUM = 32.0**2, 96.0**2  # pycocotools' area bins
SIZE_MIN, SIZE_MAX, SIZE_STEP = 256, 1536, 32


def _percentiles(values: list[float], qs: tuple[int, ...] = (5, 25, 50, 75, 95)) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q}": float(np.percentile(arr, q)) for q in qs} | {"min": float(arr.min()), "max": float(arr.max())}


def compute_stats(data: dict[str, Any]) -> dict[str, Any]:
    """All numbers of the module docstring for a validated COCO dict."""
    names = {c["id"]: c["name"] for c in data["categories"]}
    images = {img["id"]: img for img in data["images"]}
    anns = [a for a in data["annotations"] if not a.get("iscrowd")]
    per_image = Counter(a["image_id"] for a in anns)
    side_px, side_rel, box_aspect, bins = [], [], [], Counter()
    for a in anns:
        img = images[a["image_id"]]
        w, h = a["bbox"][2], a["bbox"][3]
        area = w * h
        side_px.append(math.sqrt(area))
        side_rel.append(math.sqrt(area / (img["width"] * img["height"])))
        box_aspect.append(w / h)
        bins["small" if area < SMALL else "medium" if area < MEDIUM else "large"] += 1
    return {
        "images": len(images),
        "boxes": len(anns),
        "crowd_or_difficult": len(data["annotations"]) - len(anns),
        "negatives": sum(1 for i in images if per_image[i] == 0),
        "boxes_per_class": dict(sorted(Counter(names[a["category_id"]] for a in anns).items())),
        "boxes_per_image": _percentiles([per_image[i] for i in images]) | {"mean": len(anns) / max(len(images), 1)},
        "box_side_px": _percentiles(side_px),
        "box_side_relative": _percentiles(side_rel),
        "box_aspect_w_over_h": _percentiles(box_aspect),
        "coco_area_bins": {k: bins[k] for k in ("small", "medium", "large")},
        "image_width": _percentiles([img["width"] for img in images.values()]),
        "image_height": _percentiles([img["height"] for img in images.values()]),
        "image_aspect_w_over_h": _percentiles([img["width"] / img["height"] for img in images.values()]),
        "_raw": {"side_px": side_px, "side_rel": side_rel, "per_image": [per_image[i] for i in images],
                 "sizes": [(img["width"], img["height"]) for img in images.values()],
                 "long_sides": [max(img["width"], img["height"]) for img in images.values()],
                 "rel_to_long": [math.sqrt(a["bbox"][2] * a["bbox"][3]) / max(images[a["image_id"]]["width"],
                                 images[a["image_id"]]["height"]) for a in anns]},
    }  # fmt: skip


def suggest_sizes(stats: dict[str, Any], num_levels: int) -> dict[str, Any]:
    """`model.image_size` and `model.rpn.anchor_sizes` for the data, each with its one-line reason."""
    raw = stats["_raw"]
    if not raw["rel_to_long"]:
        return {"image_size": None, "anchor_sizes": None, "reasons": ["no boxes: nothing to size the model for"]}
    rel = np.asarray(raw["rel_to_long"])  # box side / image long side: the box side at image_size = rel * size
    p10 = float(np.percentile(rel, 10))
    need = MIN_BOX_PX / p10
    median_long = float(np.median(raw["long_sides"]))
    cap = min(SIZE_MAX, math.ceil(median_long / SIZE_STEP) * SIZE_STEP)
    size = int(min(max(math.ceil(need / SIZE_STEP) * SIZE_STEP, min(SIZE_MIN, cap)), cap))
    reasons = []
    if need <= cap:
        reasons.append(
            f"model.image_size={size}: 90% of boxes are >= {MIN_BOX_PX:g} px (one ViT patch) when the longest image side "
            f"is resized to {size}; a larger size costs time roughly quadratically for no gain"
        )
    else:
        reasons.append(
            f"model.image_size={size}: 10% of boxes are under {p10 * 100:.1f}% of the image side, which would need "
            f"{need:.0f} px (over the {cap} px cap, median image side {median_long:.0f}); tile large images instead"
        )
    at_size = rel * size
    p5, p95 = float(np.percentile(at_size, 5)), float(np.percentile(at_size, 95))
    first = max(8, int(round(p5 / 8.0)) * 8)
    anchors = [first * 2**k for k in range(num_levels)]
    used = next((k + 1 for k, a in enumerate(anchors) if a * math.sqrt(2) >= p95), None)
    cover = (
        f"levels 1-{used} cover up to the 95th percentile ({p95:.0f} px)"
        if used is not None
        else f"they do NOT reach the 95th percentile ({p95:.0f} px): add a level or lower image_size"
    )
    reasons.append(
        f"model.rpn.anchor_sizes={anchors}: one per pyramid level ({num_levels}), doubling from the 5th percentile "
        f"box side at image_size {size} ({p5:.0f} px); {cover}"
    )
    return {"image_size": size, "anchor_sizes": anchors, "reasons": reasons}


def write_stats(
    coco: str | os.PathLike[str],
    images: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    gallery: int = 16,
    seed: int = 0,
    num_levels: int | None = None,
) -> dict[str, Any]:
    """Validate `coco`, write `out_dir/{stats.json, histograms.png, gallery.png}`; returns the stats."""
    from birddet.config import ModelConfig

    data, report = load_coco_dataset(coco, images, check_files=gallery > 0)
    out = Path(out_dir)
    stats = compute_stats(data)
    if num_levels is None:
        num_levels = len(ModelConfig().pyramid.scale_factors) + 1  # + p6
    stats["suggestions"] = suggest_sizes(stats, num_levels)
    stats["validation"] = {"dropped": report.num_dropped, "clipped": len(report.clipped)}
    raw = stats.pop("_raw")
    atomic_write_json(out / "stats.json", stats, indent=1)
    _plot(stats, raw, out / "histograms.png")
    if gallery > 0:
        _gallery(data, Path(images), out / "gallery.png", gallery, seed)
    return stats


def format_stats(stats: dict[str, Any]) -> str:
    """The human summary `birddet stats` prints."""

    def pct(d: dict[str, float], fmt: str = ".0f") -> str:
        return "n/a" if not d else f"{d['p5']:{fmt}} / {d['p50']:{fmt}} / {d['p95']:{fmt}}"

    bins = stats["coco_area_bins"]
    lines = [
        f"{stats['images']} images ({stats['negatives']} without boxes), {stats['boxes']} boxes "
        f"(+{stats['crowd_or_difficult']} crowd/difficult), {stats['boxes_per_image']['mean']:.2f} per image "
        f"(max {stats['boxes_per_image'].get('max', 0):.0f})",
        "boxes per class: " + ", ".join(f"{k}: {v}" for k, v in stats["boxes_per_class"].items()),
        f"box side px (p5 / median / p95): {pct(stats['box_side_px'])}; relative to image: "
        f"{pct(stats['box_side_relative'], '.3f')}",
        f"COCO area bins: small {bins['small']}, medium {bins['medium']}, large {bins['large']}",
        f"image width {pct(stats['image_width'])}, height {pct(stats['image_height'])}, aspect w/h "
        f"{pct(stats['image_aspect_w_over_h'], '.2f')}",
        *(f"suggest {r}" for r in stats["suggestions"]["reasons"]),
    ]
    return "\n".join(lines)


def _plot(stats: dict[str, Any], raw: dict[str, Any], path: Path) -> None:
    from birddet.engine.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    classes = stats["boxes_per_class"]
    axes[0, 0].barh(list(classes), list(classes.values()))
    axes[0, 0].set_title("boxes per class")
    axes[0, 1].hist(raw["per_image"], bins=np.arange(-0.5, max(raw["per_image"], default=0) + 1.5))
    axes[0, 1].set_title("boxes per image")
    for edge in (32, 96):
        axes[0, 2].axvline(edge, color="k", linestyle=":")
    axes[0, 2].hist(raw["side_px"], bins=50)
    axes[0, 2].set_title("box side sqrt(w*h), px (COCO small | medium | large)")
    axes[1, 0].hist(raw["side_rel"], bins=50)
    axes[1, 0].set_title("box side relative to image")
    ws, hs = zip(*raw["sizes"]) if raw["sizes"] else ((), ())
    axes[1, 1].scatter(ws, hs, s=6, alpha=0.5)
    axes[1, 1].set_title("image sizes (width x height)")
    axes[1, 2].hist([w / h for w, h in raw["sizes"]], bins=40)
    axes[1, 2].set_title("image aspect ratio w/h")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def _gallery(data: dict[str, Any], root: Path, path: Path, count: int, seed: int, thumb: int = 320) -> None:
    """Sample images (with boxes first), draw their boxes with the pipeline's drawing code, tile them in a grid."""
    from birddet.pipeline.results import Detection
    from birddet.pipeline.visualize import draw_detections

    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in data["annotations"]:
        if not a.get("iscrowd"):
            by_image.setdefault(a["image_id"], []).append(a)
    rng = random.Random(seed)
    with_boxes = [img for img in data["images"] if img["id"] in by_image]
    chosen = rng.sample(with_boxes, min(count, len(with_boxes)))
    rest = [img for img in data["images"] if img["id"] not in by_image]
    chosen += rng.sample(rest, min(count - len(chosen), len(rest)))
    tiles = []
    for img in chosen:
        try:
            pixels = load_image(root / img["file_name"])
        except ImageLoadError:
            continue
        if pixels.size != (img["width"], img["height"]) and pixels.size[::-1] == (img["width"], img["height"]):
            pixels = load_image(root / img["file_name"], apply_exif=False)  # boxes drawn on the stored pixels
        sx, sy = pixels.size[0] / img["width"], pixels.size[1] / img["height"]
        dets = [
            Detection(
                box_xyxy=(
                    a["bbox"][0] * sx,
                    a["bbox"][1] * sy,
                    (a["bbox"][0] + a["bbox"][2]) * sx,
                    (a["bbox"][1] + a["bbox"][3]) * sy,
                ),
                score=1.0,
                category_id=a["category_id"],
                category_name=names[a["category_id"]],
            )  # fmt: skip
            for a in by_image.get(img["id"], [])
        ]
        drawn = draw_detections(pixels, dets, None)
        drawn.thumbnail((thumb, thumb))
        tiles.append(drawn)
    if not tiles:
        return
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    cell = thumb + 8  # a white gap between tiles
    sheet = Image.new("RGB", (cols * cell, rows * cell), (255, 255, 255))
    for k, tile in enumerate(tiles):
        x, y = (k % cols) * cell, (k // cols) * cell
        sheet.paste(tile, (x + (cell - tile.width) // 2, y + (cell - tile.height) // 2))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
