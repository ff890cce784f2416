"""A video clip is one event: its species, MaxN over its sampled frames, and when in the clip each was seen.

A clip records one visit, so it is one event of its own, never grouped by time with photos or other clips. Its
species rows come from the events module's own rule (`birddet.pipeline.events.summarize_event` over the clip's
sampled frames, each frame an image): the species pooled from every box, and **MaxN**, the most birds of that
category in any one frame, the count MaxN means in video surveys (fish, feeder and nest-box counts alike). Each
row also says when the category was first and last seen, in seconds from the clip's start.

The clip's start time is the container's ``creation_time`` when the camera wrote one, else the file's time
(`birddet.pipeline.timestamps`); frame times are added to it, so ``start`` and ``end`` are the first and last
sampled frame.

``events.csv`` for clips is written here (:func:`clip_events_csv_text`) because the events writer of photo runs
was not in this branch when clips were built: its columns are the events writer's, plus ``first_seen_s`` and
``last_seen_s``. It must be folded into that writer (clip events beside photo events, one ``events.csv``) when
both are merged; :func:`clip_events` is the part that stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from birddet.fileio import atomic_write_text, csv_text
from birddet.pipeline.events import Event, EventOptions, deployment_of, summarize_event
from birddet.pipeline.results import ImageResult
from birddet.pipeline.taxonomy import Taxonomy
from birddet.pipeline.timestamps import parse_time, read_timestamp
from birddet.pipeline.video_writers import frame_views

__all__ = [
    "CLIP_EVENTS_COLUMNS",
    "EVENTS_NAME",
    "ClipEvent",
    "clip_events",
    "clip_events_csv_text",
    "write_clip_events",
]

EVENTS_NAME = "events.csv"

CLIP_EVENTS_COLUMNS: tuple[str, ...] = (
    "deployment",
    "event_id",
    "start",
    "end",
    "duration_s",
    "n_images",
    "species",
    "common_name",
    "rank",
    "max_count",
    "mean_score",
    "first_image",
    "last_image",
    "category",
    "species_score",
    "first_seen_s",
    "last_seen_s",
)


@dataclass
class ClipEvent:
    """A clip's event (`Event`: its sampled frames are the images), the sampled frame numbers and, per detector
    category, the seconds from the clip's start of the first and last frame that shows it."""

    event: Event
    file: str
    frames: list[int]
    seen_s: dict[str, tuple[float, float]]


def _clip_start(clip: ImageResult) -> datetime:
    """The clip's start: its ``datetime`` (the container's creation time), else its file's time, else 1970 (an
    unknown time still makes a row; the seconds within the clip stay right)."""
    if clip.datetime is not None:
        return parse_time(clip.datetime)
    stamp = read_timestamp(clip.path)
    return stamp.when if stamp is not None else datetime(1970, 1, 1)


def clip_events(results: Sequence[ImageResult], taxonomy: Taxonomy | None, options: EventOptions) -> list[ClipEvent]:
    """One event per clip that gave frames, in the order of ``results`` (failed clips hold nothing to count).

    The event id is ``<deployment>/<clip's file name>``: unique per camera folder, and readable next to the
    numbered photo events of the same camera.
    """
    out: list[ClipEvent] = []
    for clip in results:
        if clip.video is None or clip.failure is not None:
            continue
        frames = [(f, extra) for f, extra in frame_views([clip]) if f.failure is None]
        start = _clip_start(clip)
        deployment = deployment_of(clip, options.deployment_depth)
        event = Event(
            deployment,
            f"{deployment}/{PurePosixPath(clip.file).name}",
            [f for f, _ in frames],
            [start + timedelta(seconds=extra["time_s"]) for _, extra in frames],
        )
        event.species = summarize_event(event.images, taxonomy, options)
        seen: dict[str, tuple[float, float]] = {}
        for f, extra in frames:
            for category in {d.category_name for d in f.detections}:
                first = seen.get(category, (extra["time_s"], extra["time_s"]))[0]
                seen[category] = (first, extra["time_s"])
        out.append(ClipEvent(event, clip.file, [extra["frame"] for _, extra in frames], seen))
    return out


def _round(value: float | None, digits: int = 4) -> Any:
    return "" if value is None else round(float(value), digits)


def clip_events_csv_text(clips: Sequence[ClipEvent]) -> str:
    """``events.csv`` of a run's clips (:data:`CLIP_EVENTS_COLUMNS`): one row per clip and detector category, with
    MaxN in ``max_count``; a clip without detections has one row with ``max_count`` 0 and an empty ``species``.
    ``first_image`` / ``last_image`` are ``<clip>#<frame>``, the frames that start and end the event."""
    rows: list[list[Any]] = [list(CLIP_EVENTS_COLUMNS)]
    for c in clips:
        e = c.event
        first_frame, last_frame = f"{c.file}#{c.frames[0]}", f"{c.file}#{c.frames[-1]}"
        for s in e.species:
            first, last = c.seen_s.get(s.category, (None, None))
            rows.append(
                [
                    e.deployment,
                    e.event_id,
                    e.start.isoformat(),
                    e.end.isoformat(),
                    _round(e.duration_s, 3),
                    e.n_images,
                    s.species if s.max_count > 0 else "",
                    s.common_name,
                    s.rank,
                    s.max_count,
                    _round(s.mean_score),
                    first_frame,
                    last_frame,
                    s.category,
                    _round(s.species_score),
                    _round(first, 3),
                    _round(last, 3),
                ]
            )
    return csv_text(rows)


def write_clip_events(
    out_dir: Path, results: Sequence[ImageResult], taxonomy: Taxonomy | None, options: EventOptions
) -> dict[str, Path]:
    """Write ``OUT/events.csv`` for the clips of a run (atomically); ``{"events": path}``, or nothing without clips."""
    if not any(r.video is not None for r in results):
        return {}
    text = clip_events_csv_text(clip_events(results, taxonomy, options))
    return {"events": atomic_write_text(out_dir / EVENTS_NAME, text)}
