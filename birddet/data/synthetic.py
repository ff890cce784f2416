"""Generated COCO datasets of cartoon birds: the embedded default for smoke tests and the quickstart, and presets
shaped like the photos people bring.

It is meant to be *easy*: three classes that differ in colour and silhouette (red round songbird with a black
head, blue long-legged wader with a long bill, yellow raptor with spread dark wings), birds 25-45 % of the image
side, on muted textured backgrounds (gradient + smooth noise + grain + a few "branches"). A tiny detector trained for
a few CPU minutes should reach AP50 >= 0.5, which makes the dataset a useful end-to-end check of training and eval.

Each bird is drawn on its own transparent canvas, its alpha is thresholded, and the box is the exact extent of the
pasted pixels, so there is no annotation noise. Generation is deterministic: every image has its own RNG seeded
from `(seed, split, index)`, and files are written in a fixed order, so the same arguments give byte-identical JSON
and identical pixels.

Presets (`SYNTH_PRESETS`, `birddet synth --preset NAME`), each a `SynthSpec` whose fields can be overridden:

- `square`: the quickstart set described above, 128-192 px images of nearly square shape.
- `realistic`: 16:9, 3:2, 4:3 and portrait (3:4, 9:16) images with a long side of 640-1920 px, birds 5-35 % of the
  shorter side, 0-5 per image, and a quarter of the JPEGs stored EXIF-rotated (pixels on disk turned, the
  orientation tag set; the annotations describe the image as displayed). Real photos hid bugs that small square
  images could not (a detector that pooled 16:9 images from the wrong pyramid level).
- `dense`: survey-like 4:3 / 3:2 images of 3000-4000 px with 150-300 birds of 20-40 px each, for tiling and for
  more than 100 detections per image.

Any preset takes `species="hard"` (`birddet synth --species hard`): six look-alike songbirds instead of the three
easy classes, for telling species-classifier recipes apart (`synthetic_species.py`).

Layout: `out_dir/train.json`, `out_dir/val.json`, `out_dir/images/{train,val}_NNNNNN.jpg` (file names relative to
`out_dir/images`), plus `out_dir/.birddet_synthetic.json` recording the parameters (see `ensure_synthetic_coco`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from birddet.data.synthetic_drawing import background, bird_sprite, camera, occluders, photo_bird, scene_background
from birddet.data.synthetic_species import HARD_SPECIES_CATEGORIES
from birddet.fileio import atomic_write_text

__all__ = ["SYNTH_CATEGORIES", "SYNTH_PRESETS", "SynthSpec", "ensure_synthetic_coco", "make_synthetic_coco"]

SYNTH_CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "songbird", "supercategory": "bird"},
    {"id": 2, "name": "wader", "supercategory": "bird"},
    {"id": 3, "name": "raptor", "supercategory": "bird"},
]

#: Bumped whenever the drawing changes, so `ensure_synthetic_coco` regenerates old copies.
GENERATOR_VERSION = 1
MARKER_NAME = ".birddet_synthetic.json"
_SPLIT_CODES = {"train": 0, "val": 1}
#: Probability of 0, 1, 2, 3, 4 birds in an image (about one image in eight is a negative): the square preset.
_COUNT_PROBS = (0.12, 0.33, 0.25, 0.18, 0.12)
#: EXIF orientation tag -> the transpose that turns the displayed image into the pixels stored on disk (the inverse
#: of what `PIL.ImageOps.exif_transpose` applies when reading).
_EXIF_STORE = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@dataclass(frozen=True)
class SynthSpec:
    """What generated images look like. Sizes are in displayed pixels (after EXIF orientation)."""

    #: `(min, max)` pixels: each side independently when `aspect_ratios` is empty, else the long side.
    size: tuple[int, int] = (128, 192)
    #: width / height choices (16/9 landscape, 9/16 portrait, ...); empty: both sides drawn from `size`.
    aspect_ratios: tuple[float, ...] = ()
    #: bird width as a fraction of the image's shorter side, `(min, max)`.
    bird_frac: tuple[float, float] = (0.25, 0.45)
    #: `(min, max)` birds per image, uniform; None: the square preset's 0-4 distribution (`_COUNT_PROBS`).
    birds_per_image: tuple[int, int] | None = None
    #: share of images stored as EXIF-rotated JPEGs (orientation 3, 6 or 8).
    exif_fraction: float = 0.0
    #: largest IoU allowed between two birds, so none hides another.
    max_iou: float = 0.05
    #: 0: the plain muted background of the square preset. 1: a photo-like scene (see `_photo_scene`): multi-octave
    #: texture, foliage and branches, bird-coloured distractors, out-of-focus background, birds turned, shaded,
    #: blurred, cut by the frame and partly hidden by twigs, uneven lighting, colour casts, sensor noise, JPEG loss.
    clutter: float = 0.0
    #: "easy": songbird, wader, raptor (different colours and shapes); "hard": six look-alike songbirds told apart by
    #: field marks, with sexes that differ (`synthetic_species.py`), for comparing species-classifier recipes.
    species: str = "easy"

    @property
    def categories(self) -> list[dict[str, Any]]:
        return [dict(c) for c in (HARD_SPECIES_CATEGORIES if self.species == "hard" else SYNTH_CATEGORIES)]

    def validate(self) -> SynthSpec:
        lo, hi = self.size
        if not 32 <= lo <= hi:
            raise ValueError(f"size must be (min, max) with 32 <= min <= max, got {tuple(self.size)}")
        if any(not 0.1 <= a <= 10 for a in self.aspect_ratios):
            raise ValueError(f"aspect ratios are width/height between 0.1 and 10, got {list(self.aspect_ratios)}")
        if not 0 < self.bird_frac[0] <= self.bird_frac[1] <= 0.9:
            raise ValueError(f"bird_frac must be (min, max) with 0 < min <= max <= 0.9, got {tuple(self.bird_frac)}")
        if self.birds_per_image is not None and not 0 <= self.birds_per_image[0] <= self.birds_per_image[1]:
            raise ValueError(f"birds_per_image must be (min, max) with 0 <= min <= max, got {self.birds_per_image}")
        if not 0.0 <= self.exif_fraction <= 1.0:
            raise ValueError(f"exif_fraction must be within [0, 1], got {self.exif_fraction}")
        if not 0.0 <= self.clutter <= 1.0:
            raise ValueError(f"clutter must be within [0, 1], got {self.clutter}")
        if self.species not in ("easy", "hard"):
            raise ValueError(f"species must be 'easy' or 'hard', got {self.species!r}")
        return self


SYNTH_PRESETS: dict[str, SynthSpec] = {
    "square": SynthSpec(),
    "realistic": SynthSpec(
        size=(640, 1920),
        aspect_ratios=(16 / 9, 3 / 2, 4 / 3, 3 / 4, 9 / 16),
        bird_frac=(0.05, 0.35),
        birds_per_image=(0, 5),
        exif_fraction=0.25,
        clutter=1.0,
    ),
    "dense": SynthSpec(
        size=(3000, 4000), aspect_ratios=(4 / 3, 3 / 2), bird_frac=(0.008, 0.014), birds_per_image=(150, 300)
    ),
}


def synth_spec(preset: str = "square", **overrides: Any) -> SynthSpec:
    """A preset's `SynthSpec` with the given fields replaced (None values are ignored)."""
    if preset not in SYNTH_PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose one of {', '.join(SYNTH_PRESETS)}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v is not None}
    unknown = set(fields) - set(SynthSpec.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown synthetic options {sorted(unknown)}")
    return replace(SYNTH_PRESETS[preset], **fields).validate()


def make_synthetic_coco(
    out_dir: str | os.PathLike[str],
    *,
    num_train: int = 160,
    num_val: int = 40,
    preset: str = "square",
    seed: int = 0,
    image_size: Sequence[int] | None = None,
    **overrides: Any,
) -> dict[str, Path]:
    """Write the dataset and return `{"train": train.json, "val": val.json, "images": image dir}`.

    `preset` names a `SYNTH_PRESETS` entry; `image_size` (alias of `size`) and any other `SynthSpec` field given as
    a keyword replace the preset's value.
    """
    spec = synth_spec(preset, size=image_size, **overrides)
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train}, {num_val}")
    out = Path(out_dir)
    paths = _paths(out)
    paths["images"].mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("val", num_val)):
        coco = _make_split(split, count, spec, seed, paths["images"])
        coco["info"]["preset"] = preset
        atomic_write_text(paths[split], json.dumps(coco, indent=1) + "\n")
    atomic_write_text(out / MARKER_NAME, json.dumps(_params(num_train, num_val, preset, spec, seed), indent=1) + "\n")
    return paths


def ensure_synthetic_coco(
    out_dir: str | os.PathLike[str],
    *,
    num_train: int = 160,
    num_val: int = 40,
    preset: str = "square",
    seed: int = 0,
    image_size: Sequence[int] | None = None,
    **overrides: Any,
) -> dict[str, Path]:
    """Return the dataset in `out_dir`, generating it only when missing or made with other parameters.

    The marker file is written last, so an interrupted generation is redone next time. Takes the keyword
    arguments of `make_synthetic_coco`.
    """
    out = Path(out_dir)
    spec = synth_spec(preset, size=image_size, **overrides)
    paths = _paths(out)
    marker = out / MARKER_NAME
    try:
        current = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = None
    wanted = json.loads(json.dumps(_params(num_train, num_val, preset, spec, seed)))
    if current == wanted and paths["train"].is_file() and paths["val"].is_file():
        return paths
    return make_synthetic_coco(
        out, num_train=num_train, num_val=num_val, preset=preset, seed=seed, image_size=image_size, **overrides
    )


def _paths(out: Path) -> dict[str, Path]:
    return {"train": out / "train.json", "val": out / "val.json", "images": out / "images"}


def _params(num_train: int, num_val: int, preset: str, spec: SynthSpec, seed: int) -> dict[str, Any]:
    return {
        "generator_version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "preset": preset,
        "spec": asdict(spec),
        "seed": seed,
    }


# ---------------------------------------------------------------------------------------------------------------------
# One split


def _make_split(split: str, count: int, spec: SynthSpec, seed: int, image_dir: Path) -> dict[str, Any]:
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
        image, birds = _make_image(rng, spec) if spec.clutter <= 0 else _photo_scene(rng, spec)
        image_id = index + 1
        file_name = f"{split}_{index:06d}.jpg"
        quality = 92 if spec.clutter <= 0 else int(rng.integers(70, 96))
        _save_jpeg(rng, image, image_dir / file_name, spec.exif_fraction, quality)
        images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height})
        for category_id, (x, y, w, h) in birds:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": f"birddet synthetic birds ({split})", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": spec.categories,
    }


def _image_size(rng: np.random.Generator, spec: SynthSpec) -> tuple[int, int]:
    """(height, width) of the displayed image."""
    lo, hi = spec.size
    if not spec.aspect_ratios:
        h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        return h, w
    long_side = int(rng.integers(lo, hi + 1))
    aspect = float(spec.aspect_ratios[int(rng.integers(len(spec.aspect_ratios)))])
    if aspect >= 1:
        return max(32, round(long_side / aspect)), long_side
    return long_side, max(32, round(long_side * aspect))


def _make_image(rng: np.random.Generator, spec: SynthSpec) -> tuple[Image.Image, list[tuple[int, tuple]]]:
    """One background with non-overlapping birds; returns the image and its `(category_id, (x, y, w, h))` list."""
    h, w = _image_size(rng, spec)
    image = background(rng, h, w)
    if spec.birds_per_image is None:
        count = int(rng.choice(len(_COUNT_PROBS), p=_COUNT_PROBS))
    else:
        count = int(rng.integers(spec.birds_per_image[0], spec.birds_per_image[1] + 1))
    birds: list[tuple[int, tuple[int, int, int, int]]] = []
    taken = np.zeros((0, 4), dtype=np.float64)
    for _ in range(count):
        category_id = int(rng.integers(1, len(spec.categories) + 1))
        sprite, mask = bird_sprite(rng, category_id, min(h, w), spec.bird_frac, spec.species)
        spot = _find_spot(rng, (sprite.width, sprite.height), (w, h), taken, spec.max_iou)
        if spot is None:
            continue
        image.paste(sprite, spot, mask)
        box = (spot[0], spot[1], sprite.width, sprite.height)
        birds.append((category_id, box))
        taken = np.vstack([taken, np.asarray(box, dtype=np.float64)[None]])
    return image, birds


def _find_spot(
    rng: np.random.Generator,
    sprite_wh: tuple[int, int],
    image_wh: tuple[int, int],
    taken: np.ndarray,
    max_iou: float,
) -> tuple[int, int] | None:
    """A top-left corner keeping the sprite inside the image and away from other birds, or None after 30 tries."""
    sw, sh = sprite_wh
    iw, ih = image_wh
    if sw > iw or sh > ih:
        return None
    for _ in range(30):
        x, y = int(rng.integers(0, iw - sw + 1)), int(rng.integers(0, ih - sh + 1))
        if not len(taken) or _ious((x, y, sw, sh), taken).max() <= max_iou:
            return x, y
    return None


def _ious(box: tuple[int, int, int, int], others: np.ndarray) -> np.ndarray:
    """IoU of one xywh box with each row of `others` ([N, 4] xywh)."""
    x, y, w, h = box
    ix = np.clip(np.minimum(x + w, others[:, 0] + others[:, 2]) - np.maximum(x, others[:, 0]), 0, None)
    iy = np.clip(np.minimum(y + h, others[:, 1] + others[:, 3]) - np.maximum(y, others[:, 1]), 0, None)
    inter = ix * iy
    return inter / (w * h + others[:, 2] * others[:, 3] - inter)


def _save_jpeg(
    rng: np.random.Generator, image: Image.Image, path: Path, exif_fraction: float, quality: int = 92
) -> None:
    """Save as JPEG; with probability `exif_fraction` store the pixels turned and an EXIF orientation tag that turns
    them back, as phone and camera photos arrive."""
    if exif_fraction > 0 and rng.random() < exif_fraction:
        orientation = int(rng.choice(sorted(_EXIF_STORE)))
        exif = Image.Exif()
        exif[0x0112] = orientation  # Orientation
        image.transpose(_EXIF_STORE[orientation]).save(path, format="JPEG", quality=quality, exif=exif.tobytes())
        return
    image.save(path, format="JPEG", quality=quality)


# ---------------------------------------------------------------------------------------------------------------------
# Photo-like scenes (spec.clutter > 0; the drawing is `synthetic_drawing.py`'s)
#
# Boxes stay exact: a bird's box is the extent of its pasted pixels inside the frame (occluding twigs drawn over it
# do not shrink it, as an annotator boxes a bird behind a twig whole).


def _photo_scene(rng: np.random.Generator, spec: SynthSpec) -> tuple[Image.Image, list[tuple[int, tuple]]]:
    """A photo-like image with birds; returns the image and its `(category_id, (x, y, w, h))` list."""
    h, w = _image_size(rng, spec)
    c = spec.clutter
    image = scene_background(rng, h, w, c)
    lo, hi = spec.birds_per_image if spec.birds_per_image is not None else (0, 4)
    birds: list[tuple[int, tuple[int, int, int, int]]] = []
    taken = np.zeros((0, 4), dtype=np.float64)
    light = float(rng.uniform(0.55, 1.1))  # the scene's exposure: birds in shade or sun with it
    for _ in range(int(rng.integers(lo, hi + 1))):
        category_id = int(rng.integers(1, len(spec.categories) + 1))
        sprite, mask = photo_bird(rng, category_id, min(h, w), spec.bird_frac, c, light, spec.species)
        placed = _place_cut(rng, sprite, mask, (w, h), taken, spec.max_iou, cut_prob=0.15 * c)
        if placed is None:
            continue
        (x, y), box = placed
        image.paste(sprite, (x, y), mask)
        birds.append((category_id, box))
        taken = np.vstack([taken, np.asarray(box, dtype=np.float64)[None]])
    occluders(rng, image, c)
    return camera(rng, image, c), birds


def _place_cut(
    rng: np.random.Generator,
    sprite: Image.Image,
    mask: Image.Image,
    image_wh: tuple[int, int],
    taken: np.ndarray,
    max_iou: float,
    cut_prob: float,
) -> tuple[tuple[int, int], tuple[int, int, int, int]] | None:
    """Where to paste a sprite and the box of its visible pixels; with `cut_prob` the frame cuts off up to 40 %."""
    iw, ih = image_wh
    sw, sh = sprite.size
    if sw > iw or sh > ih:
        return None
    cut = rng.random() < cut_prob
    for _ in range(30):
        if cut:
            x = int(rng.integers(-int(0.4 * sw), iw - int(0.6 * sw) + 1))
            y = int(rng.integers(-int(0.4 * sh), ih - int(0.6 * sh) + 1))
        else:
            x, y = int(rng.integers(0, iw - sw + 1)), int(rng.integers(0, ih - sh + 1))
        visible = mask.crop((max(0, -x), max(0, -y), min(sw, iw - x), min(sh, ih - y))).getbbox()
        if visible is None:
            continue
        box = (
            x + max(0, -x) + visible[0],
            y + max(0, -y) + visible[1],
            visible[2] - visible[0],
            visible[3] - visible[1],
        )
        if box[2] < 4 or box[3] < 4:
            continue
        if not len(taken) or _ious(box, taken).max() <= max_iou:
            return (x, y), box
    return None
