"""Drawing for the synthetic datasets (`birddet.data.synthetic`): cartoon birds, their backgrounds, and photo-like
scenes.

Everything here paints pixels from an RNG and knows nothing of COCO, splits or files; `synthetic.py` composes the
images, places the birds and records their exact boxes. Kept apart so that the dataset logic reads in one sitting.

Photo-like scenes (`SynthSpec.clutter > 0`): what makes real bird photos hard that cartoons on a smooth gradient do
not have is texture at every scale, clutter with bird colours in it (red berries, yellow leaves, blue sky patches),
depth of field, birds seen at an angle, in shade, moving, cut off by the frame or behind twigs, and cameras that add
colour casts, vignetting, noise and JPEG artefacts. Each of those is drawn here, with strength scaled by `clutter`.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from birddet.data.synthetic_species import draw_hard_species

_CANVAS = 200  # canonical drawing canvas (px); birds are drawn facing right around its centre


def background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
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


def _bird_canvas(rng: np.random.Generator, category_id: int, species: str = "easy") -> Image.Image:
    """A bird of the category drawn on a transparent canvas cropped to it, facing left or right at random.

    `species`: "easy", the three classes of different colour and shape; "hard", the six look-alike songbirds of
    `synthetic_species.py`.
    """
    canvas = Image.new("RGBA", (_CANVAS, _CANVAS), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    if species == "hard":
        draw_hard_species(draw, rng, category_id)
    else:
        {1: _draw_songbird, 2: _draw_wader, 3: _draw_raptor}[category_id](draw, rng)
    canvas = canvas.crop(canvas.getchannel("A").getbbox())
    if rng.random() < 0.5:
        canvas = canvas.transpose(Image.FLIP_LEFT_RIGHT)
    return canvas


def bird_sprite(
    rng: np.random.Generator,
    category_id: int,
    image_side: int,
    bird_frac: tuple[float, float],
    species: str = "easy",
) -> tuple[Image.Image, Image.Image]:
    """Draw a bird, scale it to `bird_frac` of `image_side` wide, randomly face it left; returns (RGB sprite, mask)."""
    canvas = _bird_canvas(rng, category_id, species)
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


#: Scene palettes (foliage base, second tone, accent): leafy green, autumn, reeds/ground, winter branches.
_PALETTES = (
    ((70, 100, 45), (120, 140, 70), (40, 60, 30)),
    ((130, 95, 50), (175, 130, 60), (90, 60, 35)),
    ((150, 140, 100), (110, 100, 70), (185, 175, 140)),
    ((115, 110, 105), (150, 145, 140), (80, 72, 65)),
)


#: Distractor colours close to the birds' own (red body, blue body, yellow body, white head).
_DISTRACTORS = ((200, 40, 35), (60, 110, 210), (225, 180, 40), (235, 235, 230))


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


def scene_background(rng: np.random.Generator, h: int, w: int, c: float) -> Image.Image:
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


def photo_bird(
    rng: np.random.Generator,
    category_id: int,
    image_side: int,
    bird_frac: tuple[float, float],
    c: float,
    light: float,
    species: str = "easy",
) -> tuple[Image.Image, Image.Image]:
    """A cartoon bird made harder: varied colours, turned, foreshortened, shaded top to bottom, maybe motion-blurred."""
    canvas = _bird_canvas(rng, category_id, species)
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


def occluders(rng: np.random.Generator, image: Image.Image, c: float) -> None:
    """Foreground twigs and leaves drawn over everything: some cross birds, as they do at a feeder or in a bush."""
    draw = ImageDraw.Draw(image, "RGBA")
    w, h = image.size
    side = min(w, h)
    for _ in range(int(c * rng.integers(0, 4))):
        _branch(draw, rng, w, h, side, depth=1)
    for _ in range(int(c * rng.integers(0, 12))):
        col = _jitter(rng, _PALETTES[int(rng.integers(len(_PALETTES)))][2], 25)
        _leaf(draw, rng, w, h, side * rng.uniform(0.01, 0.035), col + (255,))


def camera(rng: np.random.Generator, image: Image.Image, c: float) -> Image.Image:
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
