"""Hard synthetic species (`birddet synth --species hard`): six small songbirds that share one silhouette.

The easy set's three classes differ in colour *and* shape (a red round songbird, a blue long-legged wader, a
yellow raptor with spread wings), so a classifier separates them in seconds and every recipe looks equally good.
Real feeder species do not: finches, sparrows and tits are the same small brown-grey-yellow shape, told apart by a
cap, a cheek patch, a bib, wing bars, streaks or the bill, and the sexes of one species can differ more than two
species do (a male house finch is red, a female is a streaked brown bird like a female purple finch). This module
draws such a set, so that recipes that win on it can be expected to win on photos:

- one songbird silhouette for all six, with small per-species differences in body length, head size, bill
  (the finches' thick cone, the sparrow's medium bill, the tits' short pin) and tail;
- field marks as the only strong cue: cap, cheek, eye stripe, eyebrow, bib, breast, wing bars, streaks;
- sexes that differ (males and females drawn half and half for the dimorphic species);
- colour variants within each sex (every colour jittered), plus the pose, light and blur that `photo_bird`
  applies to every synthetic bird.

Categories are named for the real birds they caricature; the plumages are simplified, not field-guide plates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

__all__ = ["HARD_SPECIES", "HARD_SPECIES_CATEGORIES", "draw_hard_species"]

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Plumage:
    """One sex of one species: colours of each part (None: that part is not drawn, the body colour shows)."""

    body: RGB
    back: RGB
    head: RGB
    breast: RGB | None = None
    cap: RGB | None = None
    cheek: RGB | None = None
    eye_stripe: RGB | None = None
    eyebrow: RGB | None = None
    bib: RGB | None = None
    wing_bars: RGB | None = None
    streaks: RGB | None = None


@dataclass(frozen=True)
class Species:
    name: str
    male: Plumage
    female: Plumage | None  # None: the sexes look alike
    bill: tuple[float, float]  # (length, depth) in canvas px
    bill_colour: RGB
    body: tuple[float, float]  # (length, height) of the body ellipse in canvas px
    head: float  # head diameter in canvas px
    tail: float  # tail length in canvas px


_BROWN, _BUFF, _STREAK, _GREY = (120, 85, 55), (200, 175, 140), (80, 55, 35), (135, 135, 140)

HARD_SPECIES: tuple[Species, ...] = (
    Species(
        "house_finch",
        male=Plumage(body=_BUFF, back=_BROWN, head=(205, 40, 45), breast=(210, 50, 50), streaks=_STREAK),
        female=Plumage(body=_BUFF, back=_BROWN, head=_BROWN, streaks=_STREAK),
        bill=(14, 12), bill_colour=(170, 150, 130), body=(80, 52), head=34, tail=34,
    ),
    Species(
        "purple_finch",
        male=Plumage(body=(215, 150, 165), back=(160, 70, 95), head=(175, 55, 95), breast=(190, 80, 110),
                     wing_bars=(210, 170, 180)),
        female=Plumage(body=_BUFF, back=_BROWN, head=_BROWN, eyebrow=(235, 225, 210), cheek=(95, 65, 45),
                       streaks=_STREAK),
        bill=(15, 13), bill_colour=(160, 150, 140), body=(82, 54), head=35, tail=32,
    ),
    Species(
        "house_sparrow",
        male=Plumage(body=(170, 165, 160), back=(140, 90, 50), head=_GREY, cap=_GREY, cheek=(215, 215, 210),
                     bib=(25, 25, 25), eye_stripe=(130, 70, 35), wing_bars=(235, 235, 230)),
        female=Plumage(body=_BUFF, back=_BROWN, head=(150, 130, 105), eyebrow=(215, 195, 160)),
        bill=(13, 9), bill_colour=(70, 65, 60), body=(80, 52), head=34, tail=36,
    ),
    Species(
        "great_tit",
        male=Plumage(body=(235, 210, 45), back=(110, 135, 60), head=(20, 20, 25), cheek=(245, 245, 245),
                     bib=(20, 20, 25), wing_bars=(225, 230, 225)),
        female=None,
        bill=(9, 6), bill_colour=(30, 30, 30), body=(84, 50), head=34, tail=40,
    ),
    Species(
        "blue_tit",
        male=Plumage(body=(235, 215, 60), back=(100, 140, 110), head=(245, 245, 245), cap=(40, 110, 210),
                     eye_stripe=(25, 30, 60), bib=(30, 35, 70), wing_bars=(240, 240, 240)),
        female=None,
        bill=(7, 5), bill_colour=(40, 40, 45), body=(72, 50), head=33, tail=32,
    ),
    Species(
        "eurasian_siskin",
        male=Plumage(body=(200, 205, 70), back=(120, 140, 50), head=(180, 195, 60), cap=(25, 25, 25),
                     bib=(30, 30, 30), wing_bars=(235, 215, 40), streaks=(90, 100, 40)),
        female=Plumage(body=(215, 215, 175), back=(130, 140, 80), head=(150, 160, 95), wing_bars=(225, 210, 80),
                       streaks=(85, 90, 55)),
        bill=(12, 7), bill_colour=(150, 140, 120), body=(76, 50), head=32, tail=34,
    ),
)  # fmt: skip

HARD_SPECIES_CATEGORIES: list[dict] = [
    {"id": i + 1, "name": s.name, "supercategory": "bird"} for i, s in enumerate(HARD_SPECIES)
]


def _c(rng: np.random.Generator, colour: RGB, amount: int = 22) -> tuple[int, int, int, int]:
    """A colour variant: each channel jittered, opaque."""
    return (*(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in colour), 255)  # type: ignore[return-value]


def draw_hard_species(draw: ImageDraw.ImageDraw, rng: np.random.Generator, category_id: int) -> None:
    """Draw species `category_id` (1-based index into HARD_SPECIES), a random sex, facing right on the canvas."""
    sp = HARD_SPECIES[category_id - 1]
    p = sp.male if sp.female is None or rng.random() < 0.5 else sp.female
    # Each bird's own proportions: up to ±8 % around the species' (individuals and posture vary).
    k = rng.uniform(0.92, 1.08, size=4)
    bl, bh = sp.body[0] * k[0], sp.body[1] * k[1]
    hd, tail = sp.head * k[2], sp.tail * k[3]
    x0, y0 = 100 - bl / 2 - 8, 102 - bh / 2  # body ellipse's top-left
    x1, y1 = x0 + bl, y0 + bh
    hx0, hy0 = x1 - hd * 0.55, y0 - hd * 0.45  # head overlaps the body's front-top
    hx1, hy1 = hx0 + hd, hy0 + hd

    draw.polygon([(x0 + 8, y0 + bh * 0.45), (x0 - tail, y0 + bh * 0.25), (x0 - tail, y0 + bh * 0.6)],
                 fill=_c(rng, p.back))  # tail  # fmt: skip
    draw.ellipse((x0, y0, x1, y1), fill=_c(rng, p.body))
    draw.chord((x0, y0, x1, y1 + bh * 0.1), 180, 360, fill=_c(rng, p.back))  # back
    draw.ellipse((x0 + bl * 0.2, y0 + bh * 0.08, x0 + bl * 0.72, y0 + bh * 0.6), fill=_c(rng, p.back))  # wing
    if p.wing_bars:
        bar = _c(rng, p.wing_bars, 12)
        for f in (0.3, 0.45):
            draw.line([(x0 + bl * 0.28, y0 + bh * f), (x0 + bl * 0.66, y0 + bh * (f + 0.05))], fill=bar, width=3)
    if p.breast:
        draw.chord((x0 + bl * 0.45, y0 + bh * 0.2, x1, y1), 300, 120, fill=_c(rng, p.breast))
    if p.streaks:
        st = _c(rng, p.streaks, 12)
        for _ in range(7):
            sx, sy = rng.uniform(x0 + bl * 0.4, x1 - 6), rng.uniform(y0 + bh * 0.55, y1 - 6)
            draw.line([(sx, sy), (sx - 3, sy + 7)], fill=st, width=2)
    draw.ellipse((hx0, hy0, hx1, hy1), fill=_c(rng, p.head))
    if p.cap:
        draw.chord((hx0, hy0, hx1, hy1), 180, 360, fill=_c(rng, p.cap))
    if p.bib:
        draw.ellipse((hx0 + hd * 0.35, hy1 - hd * 0.2, hx1 - hd * 0.05, hy1 + hd * 0.35), fill=_c(rng, p.bib, 10))
    if p.cheek:
        draw.ellipse((hx0 + hd * 0.3, hy0 + hd * 0.45, hx0 + hd * 0.8, hy0 + hd * 0.85), fill=_c(rng, p.cheek, 10))
    if p.eyebrow:
        draw.line(
            [(hx0 + hd * 0.35, hy0 + hd * 0.3), (hx1 - hd * 0.05, hy0 + hd * 0.33)], fill=_c(rng, p.eyebrow), width=3
        )
    if p.eye_stripe:
        draw.line([(hx0 + hd * 0.25, hy0 + hd * 0.45), (hx1, hy0 + hd * 0.42)], fill=_c(rng, p.eye_stripe, 10), width=3)
    ex, ey = hx0 + hd * 0.72, hy0 + hd * 0.38
    draw.ellipse((ex - 2.5, ey - 2.5, ex + 2.5, ey + 2.5), fill=(10, 10, 10, 255))  # eye
    length, depth = sp.bill[0] * rng.uniform(0.9, 1.1), sp.bill[1]
    bx, by = hx1 - 2, hy0 + hd * 0.5
    draw.polygon([(bx, by - depth / 2), (bx + length, by), (bx, by + depth / 2)], fill=_c(rng, sp.bill_colour, 12))
