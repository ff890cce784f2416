"""A video clip is one event: its species, MaxN over its sampled frames, and when in the clip each was seen.

A clip records one visit, so it is one event of its own, never grouped by time with photos or other clips. Its
species rows come from the events module's own rule (`birddet.pipeline.events.summarize_event` over the clip's
sampled frames, each frame an image): the species pooled from every box, and **MaxN**, the most birds of that
category in any one frame, the count MaxN means in video surveys (fish, feeder and nest-box counts alike). Each
row also says when the category was first and last seen, in seconds from the clip's start.

The clip's start time is the container's ``creation_time`` when the camera wrote one, else the file's time
(`birddet.pipeline.timestamps`); frame times are added to it, so ``start`` and ``end`` are the first and last
sampled frame.

The events writer (`birddet.pipeline.event_writers`) puts clip events in ``events.csv`` after the photo events,
with ``first_seen_s`` and ``last_seen_s``, and counts them in ``counts.csv`` beside the photo events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import PurePosixPath

from birddet.pipeline.events import Event, EventOptions, deployment_of, summarize_event
from birddet.pipeline.results import ImageResult
from birddet.pipeline.taxonomy import Taxonomy
from birddet.pipeline.timestamps import parse_time, read_timestamp
from birddet.pipeline.video_writers import frame_views

__all__ = ["ClipEvent", "clip_events"]


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
