"""Photo times: EXIF DateTimeOriginal with sub-seconds and offset, the file time without EXIF, implausible clocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from camera_traps import write_photo

from birddet.pipeline.results import ImageResult
from birddet.pipeline.timestamps import clock_problem, parse_time, read_timestamp, stamp_results


def test_exif_time_keeps_sub_seconds_and_offset(tmp_path: Path) -> None:
    path = write_photo(tmp_path / "a.jpg", "2024:05:01 06:12:03", subsec="25", offset="+02:00")
    stamp = read_timestamp(path)
    assert stamp is not None and stamp.source == "exif"
    assert stamp.when == datetime(2024, 5, 1, 6, 12, 3, 250000, tzinfo=timezone(timedelta(hours=2)))
    assert stamp.iso() == "2024-05-01T06:12:03.250000+02:00"
    assert parse_time(stamp.iso()) == stamp.when


def test_exif_time_without_offset_is_the_cameras_wall_clock(tmp_path: Path) -> None:
    stamp = read_timestamp(write_photo(tmp_path / "a.jpg", "2024:05:01 06:12:03", subsec="7"))
    assert stamp is not None
    assert stamp.iso() == "2024-05-01T06:12:03.700000"  # "7" is 0.7 s, not 7 microseconds


@pytest.mark.parametrize(
    ("when", "broken"), [(None, False), ("0000:00:00 00:00:00", False), ("    :  :     :  :  ", False), (None, True)]
)
def test_missing_unset_or_broken_exif_falls_back_to_the_file_time(
    tmp_path: Path, when: str | None, broken: bool
) -> None:
    mtime = datetime(2023, 7, 8, 9, 10, 11)
    path = write_photo(tmp_path / "a.jpg", when, mtime=mtime, broken_exif=broken)
    stamp = read_timestamp(path)
    assert stamp is not None and stamp.source == "mtime"
    assert stamp.when.replace(tzinfo=None) == mtime and stamp.when.tzinfo is not None


def test_a_file_that_is_not_an_image_gets_its_file_time_and_a_missing_one_none(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not a JPEG")
    assert read_timestamp(text).source == "mtime"  # type: ignore[union-attr]
    assert read_timestamp(tmp_path / "gone.jpg") is None


def test_stamp_results_fills_only_results_without_a_time(tmp_path: Path) -> None:
    path = write_photo(tmp_path / "a.jpg", "2024:05:01 06:12:03")
    fresh = ImageResult("a.jpg", str(path), 48, 40)
    known = ImageResult("a.jpg", str(path), 48, 40, datetime="2020-01-01T00:00:00", timestamp_source="exif")
    stamp_results([fresh, known])
    assert (fresh.datetime, fresh.timestamp_source) == ("2024-05-01T06:12:03", "exif")
    assert known.datetime == "2020-01-01T00:00:00"
    # The time survives the progress file's round trip.
    assert ImageResult.from_dict(fresh.to_dict()).datetime == fresh.datetime


def test_clock_problems_are_named() -> None:
    now = datetime(2026, 1, 1, 12, 0)
    assert clock_problem(datetime(1970, 1, 1), now) == "before 1990"
    assert clock_problem(datetime(2026, 3, 1), now) == "in the future"
    assert clock_problem(datetime(2026, 1, 1, 20, 0), now) is None  # hours ahead: time zones, not a bad clock
    assert clock_problem(datetime(2025, 6, 1, tzinfo=UTC), now) is None
