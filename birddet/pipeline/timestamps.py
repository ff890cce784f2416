"""When a photo was taken: EXIF ``DateTimeOriginal`` (+ sub-seconds and offset), else the file's modification time.

Camera traps and feeder cameras write the shutter time in EXIF ``DateTimeOriginal`` (``"2024:05:01 06:12:03"``), the
fraction of a second in ``SubSecTimeOriginal`` (``"25"`` = 0.25 s: a burst of 3-10 photos shares one second) and,
on newer cameras, the UTC offset in ``OffsetTimeOriginal`` (``"+02:00"``, EXIF 2.31). Pillow reads them from the
EXIF sub-IFD without decoding pixels. A file without a usable time (no EXIF, a blank or zeroed field as an unset
camera writes, a damaged EXIF block) falls back to its modification time, which survives most copies, and says so
in ``timestamp_source`` (``"mtime"``): a damaged EXIF block never stops a run.

Times are kept as ISO 8601 strings (what Camtrap DP, dateutil and spreadsheets read): with the offset when EXIF
gives one (``2024-05-01T06:12:03.250000+02:00``), without when it does not (the camera's wall clock, zone unknown),
and with this machine's offset for modification times (a file system time is an instant).

:func:`clock_problem` names an implausible clock (before 1990, more than a day in the future); the events module
turns those into one warning per camera.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from PIL import ExifTags, Image

from birddet.pipeline.results import ImageResult

__all__ = ["EARLIEST_PLAUSIBLE_YEAR", "Timestamp", "clock_problem", "parse_time", "read_timestamp", "stamp_results"]

# Digital camera traps postdate 1990; an earlier time is a clock reset to its epoch (1970, 1980 or 2000 is
# common for the last: see clock_problem for why 2000 is not flagged).
EARLIEST_PLAUSIBLE_YEAR = 1990
_FUTURE_SLACK = timedelta(days=1)  # a clock a few hours ahead (time zones) is not implausible

_DATETIME_ORIGINAL = ExifTags.Base.DateTimeOriginal  # 0x9003
_SUBSEC_ORIGINAL = ExifTags.Base.SubsecTimeOriginal  # 0x9291
_OFFSET_ORIGINAL = ExifTags.Base.OffsetTimeOriginal  # 0x9011


@dataclass(frozen=True)
class Timestamp:
    """A photo's time and where it came from: ``source`` is ``"exif"`` or ``"mtime"``."""

    when: datetime
    source: str

    def iso(self) -> str:
        """ISO 8601, with the UTC offset when it is known."""
        return self.when.isoformat()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return str(value).strip().strip("\x00").strip()


def _exif_time(path: Path) -> datetime | None:
    """``DateTimeOriginal`` (+ ``SubSecTimeOriginal``, ``OffsetTimeOriginal``) of ``path``, or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns "Corrupt EXIF data" and carries on: the fallback is ours
        with Image.open(path) as img:
            exif = img.getexif().get_ifd(ExifTags.IFD.Exif)
    raw = _text(exif.get(_DATETIME_ORIGINAL, ""))
    try:
        when = datetime.strptime(raw[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None  # absent, blank or "0000:00:00 00:00:00": an unset clock
    subsec = _text(exif.get(_SUBSEC_ORIGINAL, ""))
    if subsec.isdigit():
        # "25" is 0.25 s, "250" too: the digits are a decimal fraction, however many there are.
        when = when.replace(microsecond=int(round(float(f"0.{subsec}") * 1_000_000)) % 1_000_000)
    offset = _text(exif.get(_OFFSET_ORIGINAL, ""))
    if offset:
        with contextlib.suppress(ValueError):  # a malformed offset: keep the wall clock, zone unknown
            when = when.replace(tzinfo=datetime.strptime(offset, "%z").tzinfo)
    return when


def read_timestamp(path: str | os.PathLike[str]) -> Timestamp | None:
    """The time ``path`` was taken (EXIF), else its modification time; None only when the file cannot be found.

    Never raises for a damaged file: whatever Pillow cannot parse falls back to the modification time.
    """
    path = Path(path)
    try:
        when = _exif_time(path)
    except Exception:  # noqa: BLE001 - any EXIF or decoder failure must only cost the EXIF time, not the run
        when = None
    if when is not None:
        return Timestamp(when, "exif")
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    return Timestamp(datetime.fromtimestamp(mtime).astimezone(), "mtime")


def parse_time(text: str) -> datetime:
    """Inverse of :meth:`Timestamp.iso` (what results and files store)."""
    return datetime.fromisoformat(text)


def clock_problem(when: datetime, now: datetime | None = None) -> str | None:
    """Why ``when`` cannot be a real shutter time (``"before 1990"``, ``"in the future"``), or None.

    A camera whose clock was never set usually restarts at its epoch: 1970 or 1980 is caught here; one that
    restarts at 2000-01-01 looks like a plausible date and only a user who knows the deployment can tell.
    """
    if when.year < EARLIEST_PLAUSIBLE_YEAR:
        return f"before {EARLIEST_PLAUSIBLE_YEAR}"
    now = now or datetime.now()
    wall = when.replace(tzinfo=None) if when.tzinfo is None else when.astimezone().replace(tzinfo=None)
    if wall > now + _FUTURE_SLACK:
        return "in the future"
    return None


def stamp_results(results: Iterable[ImageResult]) -> None:
    """Give every result without a time (``datetime`` None) the time of its file, read now.

    The run stamps each image as it finishes; this fills in results from progress files written before times
    were recorded, and results whose file has since appeared. A caller that knows the time another way (a video
    frame's offset in its clip) sets ``datetime`` itself and is left alone.
    """
    for result in results:
        if result.datetime is None:
            stamp = read_timestamp(result.path)
            if stamp is not None:
                result.datetime, result.timestamp_source = stamp.iso(), stamp.source
