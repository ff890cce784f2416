"""Camera-trap folders for the event tests: photos with EXIF times written in bursts, named out of time order.

Each photo's width encodes how many birds it shows (``width = 48 + 16 * birds``), so a fake detector can return
exactly that many boxes and a test knows every count, event and MaxN in advance (:func:`birds_in`).
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image


def write_photo(
    path: Path,
    when: str | None,
    *,
    birds: int = 0,
    subsec: str | None = None,
    offset: str | None = None,
    mtime: datetime | None = None,
    broken_exif: bool = False,
) -> Path:
    """A small JPEG with ``DateTimeOriginal`` = ``when`` (EXIF layout ``"2024:05:01 06:00:00"``; None = no EXIF),
    optional sub-seconds and offset, a file time of ``mtime`` (local), or an EXIF block of garbage."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    image = Image.fromarray(rng.integers(0, 256, (40, 48 + 16 * birds, 3), dtype=np.uint8))
    exif = Image.Exif()
    if when is not None:
        ifd = exif.get_ifd(ExifTags.IFD.Exif)
        ifd[ExifTags.Base.DateTimeOriginal] = when
        if subsec is not None:
            ifd[ExifTags.Base.SubsecTimeOriginal] = subsec
        if offset is not None:
            ifd[ExifTags.Base.OffsetTimeOriginal] = offset
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80, exif=exif.tobytes() if when is not None else b"")
    data = buf.getvalue()
    if broken_exif:
        # An APP1 "Exif" segment whose TIFF header points far outside the segment, right after the SOI marker.
        junk = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f" + bytes(range(256)) * 2
        data = data[:2] + b"\xff\xe1" + (len(junk) + 2).to_bytes(2, "big") + junk + data[2:]
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    return path


def birds_in(width: int) -> int:
    """How many birds a photo of :func:`write_photo` shows, from its width."""
    return (width - 48) // 16


@dataclass(frozen=True)
class Shot:
    file: str
    when: str | None
    birds: int
    subsec: str | None = None
    offset: str | None = None
    mtime: datetime | None = None
    broken_exif: bool = False


# Three cameras. Names are out of time order on purpose (IMG_0009 is cam01's first photo).
SHOTS: tuple[Shot, ...] = (
    # cam01: a burst of three in one second (sub-seconds order it), a fourth 49.5 s later, then a second visit.
    Shot("cam01/IMG_0009.JPG", "2024:05:01 06:00:00", 1, subsec="00"),
    Shot("cam01/IMG_0002.JPG", "2024:05:01 06:00:00", 2, subsec="25"),
    Shot("cam01/IMG_0005.JPG", "2024:05:01 06:00:00", 1, subsec="50"),
    Shot("cam01/IMG_0001.JPG", "2024:05:01 06:00:50", 0),
    Shot("cam01/IMG_0003.JPG", "2024:05:01 06:05:00", 3),
    Shot("cam01/IMG_0004.JPG", "2024:05:01 06:05:01", 0),
    # cam02: an empty event with offsets, then a photo without EXIF and one with broken EXIF (file times).
    Shot("cam02/b.jpg", "2024:05:02 12:00:30", 0, offset="+02:00"),
    Shot("cam02/a.jpg", "2024:05:02 12:00:00", 0, offset="+02:00"),
    Shot("cam02/no_exif.jpg", None, 1, mtime=datetime(2024, 5, 2, 18, 0, 0)),
    Shot("cam02/broken_exif.jpg", None, 1, mtime=datetime(2024, 5, 2, 18, 0, 20), broken_exif=True),
    # cam03: a clock reset to 1970, then two photos 90 s apart (more than the 60 s gap: two events).
    Shot("cam03/z_first.jpg", "2024:05:03 07:00:00", 2),
    Shot("cam03/a_second.jpg", "2024:05:03 07:01:30", 1),
    Shot("cam03/reset.jpg", "1970:01:01 00:00:05", 1),
)

# What the 60 s gap makes of them: event id -> its files in time order.
EXPECTED_EVENTS: dict[str, list[str]] = {
    "cam01/0001": ["cam01/IMG_0009.JPG", "cam01/IMG_0002.JPG", "cam01/IMG_0005.JPG", "cam01/IMG_0001.JPG"],
    "cam01/0002": ["cam01/IMG_0003.JPG", "cam01/IMG_0004.JPG"],
    "cam02/0001": ["cam02/a.jpg", "cam02/b.jpg"],
    "cam02/0002": ["cam02/no_exif.jpg", "cam02/broken_exif.jpg"],
    "cam03/0001": ["cam03/reset.jpg"],
    "cam03/0002": ["cam03/z_first.jpg"],
    "cam03/0003": ["cam03/a_second.jpg"],
}


def expected_max_n() -> dict[str, int]:
    """MaxN of every expected event: the most birds in one of its photos."""
    birds = {s.file: s.birds for s in SHOTS}
    return {event: max(birds[f] for f in files) for event, files in EXPECTED_EVENTS.items()}


def make_cameras(root: Path) -> Path:
    """Write :data:`SHOTS` under ``root`` and return it."""
    for s in SHOTS:
        write_photo(
            root / s.file,
            s.when,
            birds=s.birds,
            subsec=s.subsec,
            offset=s.offset,
            mtime=s.mtime,
            broken_exif=s.broken_exif,
        )
    return root
