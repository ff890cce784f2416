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

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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
_CANVAS = 200  # canonical drawing canvas (px); birds are drawn facing right around its centre
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
        "categories": [dict(c) for c in SYNTH_CATEGORIES],
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
    image = _background(rng, h, w)
    if spec.birds_per_image is None:
        count = int(rng.choice(len(_COUNT_PROBS), p=_COUNT_PROBS))
    else:
        count = int(rng.integers(spec.birds_per_image[0], spec.birds_per_image[1] + 1))
    birds: list[tuple[int, tuple[int, int, int, int]]] = []
    taken = np.zeros((0, 4), dtype=np.float64)
    for _ in range(count):
        category_id = int(rng.integers(1, len(SYNTH_CATEGORIES) + 1))
        sprite, mask = _bird_sprite(rng, category_id, min(h, w), spec.bird_frac)
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
# Drawing


def _background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """Muted gradient + smooth blotches + grain + a few dark twigs: texture without anything bird-like."""
    c0, c1 = (rng.uniform(60, 170, size=3) for _ in range(2))
    c0 = c0 * 0.6 + c0.mean() * 0.4  # desaturate so the birds' saturated colours stand out
    c1 = c1 * 0.6 + c1.mean() * 0.4
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1.0) / 2.0
    base = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    coarse = Image.fromarray(rng.uniform(0, 255, size=(6, 6)).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    blotch = (np.asarray(coarse, dtype=np.float32) - 128.0) / 128.0 * 25.0
    grain = rng.normal(0, 6, size=(h, w, 3))
    pixels = np.clip(base + blotch[..., None] + grain, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 4))):
        x0, y0, x1, y1 = (int(v) for v in rng.uniform(0, 1, size=4) * [w, h, w, h])
        shade = int(rng.integers(40, 80))
        draw.line([(x0, y0), (x1, y1)], fill=(shade, shade - 10, shade - 25), width=int(rng.integers(1, 4)))
    return image


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int = 18) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)  # type: ignore[return-value]


def _bird_canvas(rng: np.random.Generator, category_id: int) -> Image.Image:
    """A bird of the category drawn on a transparent canvas cropped to it, facing left or right at random."""
    canvas = Image.new("RGBA", (_CANVAS, _CANVAS), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    {1: _draw_songbird, 2: _draw_wader, 3: _draw_raptor}[category_id](draw, rng)
    canvas = canvas.crop(canvas.getchannel("A").getbbox())
    if rng.random() < 0.5:
        canvas = canvas.transpose(Image.FLIP_LEFT_RIGHT)
    return canvas


def _bird_sprite(
    rng: np.random.Generator, category_id: int, image_side: int, bird_frac: tuple[float, float]
) -> tuple[Image.Image, Image.Image]:
    """Draw a bird, scale it to `bird_frac` of `image_side` wide, randomly face it left; returns (RGB sprite, mask)."""
    canvas = _bird_canvas(rng, category_id)
    target_w = max(8, int(round(rng.uniform(*bird_frac) * image_side)))
    target_h = max(8, int(round(canvas.height * target_w / canvas.width)))
    canvas = canvas.resize((target_w, target_h), Image.BILINEAR)
    mask = canvas.getchannel("A").point(lambda a: 255 if a >= 128 else 0)
    box = mask.getbbox()  # exact extent of the pixels that will be pasted
    return canvas.convert("RGB").crop(box), mask.crop(box)


def _draw_songbird(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """Round red body, black head, short yellow beak, short dark tail."""
    body = _jitter(rng, (215, 35, 35))
    dark = _jitter(rng, (30, 25, 25), 10)
    draw.polygon([(62, 100), (30, 88), (30, 112)], fill=dark + (255,))  # tail
    draw.ellipse((55, 75, 135, 130), fill=body + (255,))
    draw.ellipse((115, 62, 151, 98), fill=dark + (255,))  # head
    draw.polygon([(149, 74), (166, 81), (149, 88)], fill=_jitter(rng, (240, 200, 40)) + (255,))  # beak


def _draw_wader(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """Slim blue body, white head on a neck, long dark bill, long orange legs (a tall silhouette)."""
    body = _jitter(rng, (40, 110, 230))
    legs = _jitter(rng, (240, 130, 30)) + (255,)
    draw.line([(88, 108), (84, 178)], fill=legs, width=5)
    draw.line([(104, 108), (110, 178)], fill=legs, width=5)
    draw.polygon([(62, 88), (40, 80), (42, 96)], fill=body + (255,))  # tail
    draw.ellipse((58, 78, 128, 112), fill=body + (255,))
    draw.line([(118, 88), (128, 52)], fill=body + (255,), width=9)  # neck
    draw.ellipse((118, 38, 142, 62), fill=_jitter(rng, (245, 245, 245), 8) + (255,))  # head
    draw.polygon([(140, 46), (184, 52), (140, 54)], fill=_jitter(rng, (35, 35, 35), 10) + (255,))  # bill


def _draw_raptor(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """Yellow-brown body with broad dark spread wings and a fanned tail (a wide silhouette), white head."""
    wing = _jitter(rng, (90, 50, 20)) + (255,)
    body = _jitter(rng, (230, 175, 30))
    draw.polygon([(100, 100), (18, 30), (26, 70), (70, 112)], fill=wing)  # far wing (raised)
    draw.polygon([(100, 100), (182, 30), (174, 70), (130, 112)], fill=wing)  # near wing (raised)
    draw.polygon([(78, 104), (50, 88), (50, 122)], fill=wing)  # tail fan
    draw.ellipse((68, 88, 142, 122), fill=body + (255,))
    draw.ellipse((128, 78, 158, 108), fill=_jitter(rng, (245, 245, 240), 8) + (255,))  # head
    draw.polygon([(156, 88), (170, 94), (158, 102)], fill=_jitter(rng, (250, 215, 40)) + (255,))  # hooked beak


# ---------------------------------------------------------------------------------------------------------------------
# Photo-like scenes (spec.clutter > 0)
#
# What makes real bird photos hard that cartoons on a smooth gradient do not have: texture at every scale, clutter
# with bird colours in it (red berries, yellow leaves, blue sky patches), depth of field, birds seen at an angle,
# in shade, moving, cut off by the frame or behind twigs, and cameras that add colour casts, vignetting, noise and
# JPEG artefacts. Each of those is drawn here, with strength scaled by `spec.clutter`. Boxes stay exact: a bird's
# box is the extent of its pasted pixels inside the frame (occluding twigs drawn over it do not shrink it, as an
# annotator boxes a bird behind a twig whole).

#: Scene palettes (foliage base, second tone, accent): leafy green, autumn, reeds/ground, winter branches.
_PALETTES = (
    ((70, 100, 45), (120, 140, 70), (40, 60, 30)),
    ((130, 95, 50), (175, 130, 60), (90, 60, 35)),
    ((150, 140, 100), (110, 100, 70), (185, 175, 140)),
    ((115, 110, 105), (150, 145, 140), (80, 72, 65)),
)
#: Distractor colours close to the birds' own (red body, blue body, yellow body, white head).
_DISTRACTORS = ((200, 40, 35), (60, 110, 210), (225, 180, 40), (235, 235, 230))


def _photo_scene(rng: np.random.Generator, spec: SynthSpec) -> tuple[Image.Image, list[tuple[int, tuple]]]:
    """A photo-like image with birds; returns the image and its `(category_id, (x, y, w, h))` list."""
    h, w = _image_size(rng, spec)
    c = spec.clutter
    image = _scene_background(rng, h, w, c)
    lo, hi = spec.birds_per_image if spec.birds_per_image is not None else (0, 4)
    birds: list[tuple[int, tuple[int, int, int, int]]] = []
    taken = np.zeros((0, 4), dtype=np.float64)
    light = float(rng.uniform(0.55, 1.1))  # the scene's exposure: birds in shade or sun with it
    for _ in range(int(rng.integers(lo, hi + 1))):
        category_id = int(rng.integers(1, len(SYNTH_CATEGORIES) + 1))
        sprite, mask = _photo_bird(rng, category_id, min(h, w), spec.bird_frac, c, light)
        placed = _place_cut(rng, sprite, mask, (w, h), taken, spec.max_iou, cut_prob=0.15 * c)
        if placed is None:
            continue
        (x, y), box = placed
        image.paste(sprite, (x, y), mask)
        birds.append((category_id, box))
        taken = np.vstack([taken, np.asarray(box, dtype=np.float64)[None]])
    _occluders(rng, image, c)
    return _camera(rng, image, c), birds


def _fractal_noise(rng: np.random.Generator, h: int, w: int, octaves: int = 6) -> np.ndarray:
    """Value noise summed over octaves (amplitude halves as the grid doubles), in roughly [-1, 1]: texture at every
    scale, cheap because each octave is a small random grid resized bicubically."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for k in range(octaves):
        cells = 3 * 2**k
        gh, gw = max(2, round(cells * h / max(h, w))), max(2, round(cells * w / max(h, w)))
        grid = Image.fromarray(rng.uniform(0, 255, size=(gh, gw)).astype(np.uint8))
        out += amp * (np.asarray(grid.resize((w, h), Image.BICUBIC), np.float32) - 127.5) / 127.5
        total += amp
        amp *= 0.55
    return out / total


def _scene_background(rng: np.random.Generator, h: int, w: int, c: float) -> Image.Image:
    """Sky band + textured foliage in a random palette, leaves, branches and distractors, then defocus."""
    # Draw at most ~1000 px on the long side and upscale: backgrounds are soft anyway, and it keeps generation quick.
    f = min(1.0, 1000 / max(h, w))
    sh, sw = max(8, round(h * f)), max(8, round(w * f))
    base, tone, dark = (np.array(p, np.float32) for p in _PALETTES[int(rng.integers(len(_PALETTES)))])
    shift = rng.uniform(-20, 20, size=3).astype(np.float32)
    n1, n2 = _fractal_noise(rng, sh, sw), _fractal_noise(rng, sh, sw, octaves=4)
    mix = np.clip(0.5 + 0.8 * n2, 0, 1)[..., None]
    pixels = base * (1 - mix) + tone * mix + shift + (60 * c) * n1[..., None]
    sky_frac = float(rng.choice([0.0, 0.0, rng.uniform(0.1, 0.6)]))
    if sky_frac > 0:  # a sky band at the top, blending into the foliage
        sky = np.array(rng.choice([(150, 185, 225), (200, 205, 210), (170, 190, 205)]), np.float32)
        yy = np.linspace(0, 1, sh, dtype=np.float32)[:, None, None]
        edge = sky_frac + 0.08 * _fractal_noise(rng, 1, sw, octaves=3)[0][None, :, None]  # a ragged tree line
        alpha = np.clip((edge - yy) / 0.05, 0, 1)
        pixels = pixels * (1 - alpha) + (sky + 10 * n1[..., None]) * alpha
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image, "RGBA")
    side = min(sh, sw)
    for _ in range(int(c * rng.integers(40, 160))):  # leaves: rotated ellipses in the palette's tones
        col = _jitter(rng, tuple(int(v) for v in (base if rng.random() < 0.5 else dark)), 30)
        _leaf(draw, rng, sw, sh, side * rng.uniform(0.01, 0.05), col + (int(rng.integers(120, 230)),))
    for _ in range(int(c * rng.integers(2, 9))):  # branches: forking dark polylines
        _branch(draw, rng, sw, sh, side, depth=2)
    for _ in range(int(c * rng.integers(0, 10))):  # bird-coloured distractors: berries, flowers, a blue bucket...
        col = _jitter(rng, _DISTRACTORS[int(rng.integers(len(_DISTRACTORS)))], 25) + (255,)
        r = side * rng.uniform(0.008, 0.05)
        x, y = rng.uniform(0, sw), rng.uniform(0, sh)
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=col)
        else:
            draw.rectangle((x - r, y - 0.6 * r, x + 1.4 * r, y + r), fill=col)
    blur = float(rng.uniform(0, 3.0 * c))  # depth of field: the background is often out of focus
    if blur > 0.3:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    return image.resize((w, h), Image.BICUBIC) if (sh, sw) != (h, w) else image


def _leaf(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, r: float, fill: tuple) -> None:
    x, y, a = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, np.pi)
    ca, sa = np.cos(a), np.sin(a)
    pts = [(x + r * ca * np.cos(t) - 0.45 * r * sa * np.sin(t), y + r * sa * np.cos(t) + 0.45 * r * ca * np.sin(t))
           for t in np.linspace(0, 2 * np.pi, 10, endpoint=False)]  # fmt: skip
    draw.polygon(pts, fill=fill)


def _branch(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, side: int, depth: int,
    start: tuple[float, float] | None = None, width: float | None = None,
) -> None:  # fmt: skip
    """A wobbly dark branch with up to `depth` levels of forks."""
    x, y = start if start is not None else (rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h)
    width = width if width is not None else side * rng.uniform(0.004, 0.02)
    angle, length = rng.uniform(0, 2 * np.pi), side * rng.uniform(0.2, 0.7)
    shade = int(rng.integers(35, 85))
    pts = [(x, y)]
    for _ in range(6):
        angle += rng.normal(0, 0.25)
        x, y = x + np.cos(angle) * length / 6, y + np.sin(angle) * length / 6
        pts.append((x, y))
    draw.line(pts, fill=(shade, shade - 12, max(0, shade - 28), 255), width=max(1, int(width)), joint="curve")
    if depth > 0:
        for _ in range(int(rng.integers(0, 3))):
            fork = pts[int(rng.integers(1, len(pts)))]
            _branch(draw, rng, w, h, int(side * 0.6), depth - 1, fork, width * 0.6)


def _photo_bird(
    rng: np.random.Generator, category_id: int, image_side: int, bird_frac: tuple[float, float], c: float, light: float
) -> tuple[Image.Image, Image.Image]:
    """A cartoon bird made harder: varied colours, turned, foreshortened, shaded top to bottom, maybe motion-blurred."""
    canvas = _bird_canvas(rng, category_id)
    canvas = canvas.rotate(float(rng.uniform(-30, 30) * c), resample=Image.BILINEAR, expand=True)
    canvas = canvas.crop(canvas.getchannel("A").getbbox())
    target_w = max(8, int(round(rng.uniform(*bird_frac) * image_side)))
    squash = float(rng.uniform(1 - 0.3 * c, 1 + 0.2 * c))  # seen at an angle
    target_h = max(8, int(round(canvas.height * target_w / canvas.width * squash)))
    canvas = canvas.resize((target_w, target_h), Image.BILINEAR)
    rgb = np.asarray(canvas.convert("RGB"), np.float32)
    # Light from above: the back brighter than the belly, all scaled by the scene's exposure and a colour shift.
    top, bottom = light * rng.uniform(1.0, 1.15), light * rng.uniform(0.55, 0.9)
    ramp = np.linspace(top, bottom, target_h, dtype=np.float32)[:, None, None]
    tint = rng.uniform(1 - 0.15 * c, 1 + 0.15 * c, size=3).astype(np.float32)
    rgb = np.clip(rgb * ramp * tint, 0, 255).astype(np.uint8)
    sprite = Image.fromarray(rgb, "RGB")
    alpha = canvas.getchannel("A")
    if rng.random() < 0.3 * c:  # a moving bird: horizontal motion blur of colour and outline alike
        k = int(rng.integers(3, max(4, target_w // 8) + 1))
        sprite = Image.fromarray(cv2.blur(np.asarray(sprite), (k, 1)), "RGB")
        alpha = Image.fromarray(cv2.blur(np.asarray(alpha), (k, 1)), "L")
    mask = alpha.point(lambda a: 255 if a >= 128 else 0)
    box = mask.getbbox() or (0, 0, 1, 1)  # exact extent of the pixels that will be pasted
    return sprite.crop(box), mask.crop(box)


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


def _occluders(rng: np.random.Generator, image: Image.Image, c: float) -> None:
    """Foreground twigs and leaves drawn over everything: some cross birds, as they do at a feeder or in a bush."""
    draw = ImageDraw.Draw(image, "RGBA")
    w, h = image.size
    side = min(w, h)
    for _ in range(int(c * rng.integers(0, 4))):
        _branch(draw, rng, w, h, side, depth=1)
    for _ in range(int(c * rng.integers(0, 12))):
        col = _jitter(rng, _PALETTES[int(rng.integers(len(_PALETTES)))][2], 25)
        _leaf(draw, rng, w, h, side * rng.uniform(0.01, 0.035), col + (255,))


def _camera(rng: np.random.Generator, image: Image.Image, c: float) -> Image.Image:
    """What the camera adds: exposure and white balance, vignetting, a light gradient, softness and sensor noise."""
    w, h = image.size
    px = np.asarray(image, np.float32)
    gain = rng.uniform(1 - 0.12 * c, 1 + 0.12 * c, size=3).astype(np.float32)  # white balance
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) / 0.5
    vignette = 1 - float(rng.uniform(0, 0.35 * c)) * r2
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1 + float(rng.uniform(0, 0.25 * c)) * (np.cos(angle) * (xx / w - 0.5) + np.sin(angle) * (yy / h - 0.5))
    px = px * gain * (vignette * gradient)[..., None]
    gamma = float(rng.uniform(1 - 0.2 * c, 1 + 0.25 * c))
    px = 255.0 * (np.clip(px, 0, 255) / 255.0) ** gamma
    px += rng.normal(0, rng.uniform(1.0, 1.0 + 5.0 * c), size=(h, w, 1)).astype(np.float32)  # luminance noise
    out = Image.fromarray(np.clip(px, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.25 * c:  # a slightly soft photo (focus missed, hand shake)
        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    return out
