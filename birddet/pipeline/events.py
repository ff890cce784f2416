"""Events as ecologists count them: deployments, time-gap grouping, one species per event, MaxN.

A trigger fires a burst of photos, and the same birds appear in all of them, so counts per image overstate what
was seen. Camera-trap tools count per *event* instead (AddaxAI: same camera, gaps under a limit, 60 s by default),
smooth the species over the event (MegaDetector's sequence smoothing turns deer / deer / elk / deer into deer) and
report each species' **MaxN**, the most individuals seen in any one photo of the event.

Everything here is a pure function of per-image results, so it runs once over the merged results of a whole run
(after ``--resume`` and torchrun shards alike, never per shard) and any other producer of results can reuse it.

What a caller passes in: :class:`~birddet.pipeline.results.ImageResult`\\ s whose ``datetime`` is set (ISO 8601,
`birddet.pipeline.timestamps.stamp_results` fills it from EXIF or the file's time; results without one and failed
images belong to no event), ``file`` the name relative to its source root (its folder is the deployment),
detections with their detector ``category_name``, ``score`` and the classifier's top-k ``classifications``; plus
an :class:`EventOptions` and the classifier's :class:`~birddet.pipeline.taxonomy.Taxonomy` (None without one).

- :func:`deployment_of`: an image's deployment (camera): its folder, or its first ``depth`` folders.
- :func:`group_events`: one deployment's images in time order, split where a gap exceeds ``gap_s``.
- :func:`summarize_event`: the species rows of one group of images (a burst, or a video clip as one event).
- :func:`build_events`: all of it over a run; :func:`annotate_images` puts each image's event on its result;
  :func:`clock_warnings`: one line per camera whose clock cannot be right.

One species per event and detector category: every detection of the category at or above ``classify_conf``
votes with its classifier probabilities, weighted by its detection score; the pooled vector goes through
`Taxonomy.rollup` with ``rollup_threshold``, the very rule per-box prediction applies, so an unsure event is named
at the genus or family as an unsure box is. A box stores only its top-k probabilities (``--top-k``), so the pool
sums those; the mass outside them is unknown and counted as zero, which can only make a share smaller.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath
from typing import Protocol

import torch

from birddet.errors import InputError
from birddet.pipeline.results import Detection, ImageEvent, ImageResult
from birddet.pipeline.taxonomy import Taxonomy
from birddet.pipeline.timestamps import clock_problem, parse_time

__all__ = [
    "DEFAULT_EVENT_GAP_S",
    "Event",
    "EventOptions",
    "EventSpecies",
    "Located",
    "annotate_images",
    "build_events",
    "clock_warnings",
    "deployment_of",
    "group_events",
    "pool_species",
    "summarize_event",
]

DEFAULT_EVENT_GAP_S = 60.0  # AddaxAI's default: a burst and the next trigger of the same visit stay together


@dataclass(frozen=True)
class EventOptions:
    """How images become events: ``gap_s`` (``--event-gap``), ``deployment_depth`` (``--deployment-depth``; None =
    the image's whole folder), and the species rule's ``classify_conf`` and ``rollup_threshold`` (predict's own)."""

    gap_s: float = DEFAULT_EVENT_GAP_S
    deployment_depth: int | None = None
    classify_conf: float = 0.1
    rollup_threshold: float = 0.5

    def validate(self) -> None:
        """Reject values that cannot group anything, naming the option."""
        if not self.gap_s >= 0:
            raise InputError(f"--event-gap must be a number of seconds >= 0, got {self.gap_s}")
        if self.deployment_depth is not None and self.deployment_depth < 1:
            raise InputError(f"--deployment-depth must be at least 1 folder, got {self.deployment_depth}")


@dataclass(frozen=True)
class EventSpecies:
    """One row of an event: a detector category, what the event's detections of it are, and how many.

    ``species`` is the pooled roll-up's taxon (a species' scientific name, a genus, family ...), the category's
    name when nothing was classified or the classifier named no taxon, empty for an event without detections.
    ``rank`` is the taxon's rank (empty when ``species`` is a category); ``species_score`` the pooled share of
    ``species`` (None when unclassified); ``max_count`` MaxN; ``mean_score`` the mean detection score.
    """

    category: str
    species: str
    common_name: str
    rank: str
    species_score: float | None
    max_count: int
    mean_score: float | None
    class_index: int | None = None


@dataclass
class Event:
    """A run of one deployment's images in time order, each within the gap of the previous one."""

    deployment: str
    event_id: str
    images: list[ImageResult]
    times: list[datetime]
    species: list[EventSpecies] = field(default_factory=list)

    @property
    def start(self) -> datetime:
        return self.times[0]

    @property
    def end(self) -> datetime:
        return self.times[-1]

    @property
    def duration_s(self) -> float:
        return _seconds_between(self.start, self.end)

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def species_label(self) -> str:
        """The event's species as one cell: the rows' ``species``, ``"; "``-joined, empty without detections."""
        return "; ".join(s.species for s in self.species if s.max_count > 0)


def _seconds_between(a: datetime, b: datetime) -> float:
    """``b - a`` in seconds: true elapsed time when both carry an offset, wall-clock difference otherwise."""
    if (a.tzinfo is None) != (b.tzinfo is None):
        a, b = a.replace(tzinfo=None), b.replace(tzinfo=None)
    return (b - a).total_seconds()


def _wall_clock(when: datetime) -> datetime:
    return when.replace(tzinfo=None)


class Located(Protocol):
    """What :func:`deployment_of` reads: a result, or a source image before it is predicted."""

    @property
    def file(self) -> str: ...

    @property
    def path(self) -> str | os.PathLike[str]: ...


def deployment_of(result: Located, depth: int | None = None) -> str:
    """The image's deployment: its folder relative to the source root (``cam03``, ``site1/cam03``), or the first
    ``depth`` folders of it; an image directly in a source folder belongs to a deployment named after that folder.
    """
    folders = PurePosixPath(result.file).parent.parts
    if not folders:
        return PurePosixPath(os.fspath(result.path).replace("\\", "/")).parent.name or "."
    return "/".join(folders if depth is None else folders[:depth])


def group_events(
    deployment: str, images: Iterable[tuple[datetime, ImageResult]], gap_s: float = DEFAULT_EVENT_GAP_S
) -> list[Event]:
    """One deployment's ``(time, image)`` pairs as events: sorted by time (then name, so equal times stay in a
    stable order) and split wherever an image comes more than ``gap_s`` seconds after the previous one. Event ids
    are ``<deployment>/<n>`` numbered from 0001 in time order, so they do not depend on the input order."""
    ordered = sorted(images, key=lambda pair: (_wall_clock(pair[0]), pair[1].file))
    events: list[Event] = []
    for when, result in ordered:
        if events and _seconds_between(events[-1].end, when) <= gap_s:
            events[-1].images.append(result)
            events[-1].times.append(when)
        else:
            events.append(Event(deployment, f"{deployment}/{len(events) + 1:04d}", [result], [when]))
    return events


def pool_species(
    detections: Sequence[Detection], taxonomy: Taxonomy | None, classify_conf: float, rollup_threshold: float
) -> tuple[str, str, str, float, int | None] | None:
    """``(species, common name, rank, share, class index)`` of a group of detections, or None when none of them
    at or above ``classify_conf`` was classified.

    Each detection's top-k probabilities count with its detection score as the weight; the shares are the
    weighted mean. With a taxonomy the pooled vector goes through `Taxonomy.rollup` at ``rollup_threshold`` (per-box
    prediction's rule); without one the top class index is the species.
    """
    pooled: dict[int, float] = defaultdict(float)
    total = 0.0
    for det in detections:
        if det.score < classify_conf or not det.classifications:
            continue
        total += det.score
        for c in det.classifications:
            pooled[c.class_index] += det.score * c.score
    if total <= 0:
        return None
    shares = {k: v / total for k, v in pooled.items()}
    if taxonomy is None:
        top = min(shares, key=lambda k: (-shares[k], k))
        return str(top), "", "species", shares[top], top
    probs = torch.zeros(len(taxonomy), dtype=torch.float64)
    for k, v in shares.items():
        probs[k] = v
    rollup = taxonomy.rollup(probs, rollup_threshold)[0]
    if rollup.names_no_taxon:
        return "", "", "", rollup.score, None  # the caller names the detector's category, as per-box output does
    common = taxonomy.taxon(rollup.class_index).common_name or "" if rollup.class_index is not None else ""
    return rollup.name, common, rollup.rank, rollup.score, rollup.class_index


def summarize_event(
    images: Sequence[ImageResult], taxonomy: Taxonomy | None, options: EventOptions
) -> list[EventSpecies]:
    """The species rows of one event (any group of images: a burst, or a video clip's frames).

    One row per detector category seen, with its pooled species (:func:`pool_species`) and MaxN, the largest
    number of the category's detections in any one image; one row with ``max_count`` 0 when no image holds a
    detection. Rows are sorted by category.
    """
    by_category: dict[str, list[Detection]] = defaultdict(list)
    max_count: dict[str, int] = defaultdict(int)
    for image in images:
        per_image: dict[str, int] = defaultdict(int)
        for det in image.detections:
            by_category[det.category_name].append(det)
            per_image[det.category_name] += 1
        for category, n in per_image.items():
            max_count[category] = max(max_count[category], n)
    if not by_category:
        return [EventSpecies("", "", "", "", None, 0, None)]
    rows = []
    for category in sorted(by_category):
        dets = by_category[category]
        pooled = pool_species(dets, taxonomy, options.classify_conf, options.rollup_threshold)
        species, common, rank, share, index = pooled if pooled is not None else ("", "", "", None, None)
        rows.append(
            EventSpecies(
                category=category,
                species=species or category,
                common_name=common,
                rank=rank,
                species_score=share,
                max_count=max_count[category],
                mean_score=sum(d.score for d in dets) / len(dets),
                class_index=index,
            )
        )
    return rows


def build_events(results: Iterable[ImageResult], taxonomy: Taxonomy | None, options: EventOptions) -> list[Event]:
    """Every event of a run, by deployment (sorted by name) then time, each with its species rows.

    Failed images and images without a time belong to no event: they hold no detections to count, and an image
    without a time cannot be placed in one. Video clips are left out: each is one event, built by
    `birddet.pipeline.video_events.clip_events` from its frames.
    """
    options.validate()
    per_deployment: dict[str, list[tuple[datetime, ImageResult]]] = defaultdict(list)
    for result in results:
        if result.failure is not None or result.datetime is None:
            continue
        if result.video is not None:  # a clip is an event of its own (birddet.pipeline.video_events)
            continue
        per_deployment[deployment_of(result, options.deployment_depth)].append((parse_time(result.datetime), result))
    events: list[Event] = []
    for deployment in sorted(per_deployment):
        for event in group_events(deployment, per_deployment[deployment], options.gap_s):
            event.species = summarize_event(event.images, taxonomy, options)
            events.append(event)
    return events


def annotate_images(events: Iterable[Event]) -> None:
    """Set each event image's ``event`` (deployment, event id, the event's species) for the per-image writers."""
    for event in events:
        mark = ImageEvent(event.deployment, event.event_id, event.species_label)
        for image in event.images:
            image.event = mark


def clock_warnings(events: Iterable[Event], now: datetime | None = None) -> list[str]:
    """One line per camera whose clock cannot be trusted: images without a camera time (the file's time was used;
    the clock is unset or the EXIF is missing) and times before 1990 or in the future, with an example file."""
    problems: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    totals: dict[str, int] = defaultdict(int)
    for event in events:
        for when, image in zip(event.times, event.images, strict=True):
            totals[event.deployment] += 1
            if image.timestamp_source == "mtime":
                problems[event.deployment]["without a camera time (EXIF), file times used"].append(image.file)
            elif (why := clock_problem(when, now)) is not None:
                problems[event.deployment][f"with a time {why}"].append(image.file)
    lines = []
    for deployment in sorted(problems):
        parts = [f"{len(files)} {what} (e.g. {files[0]})" for what, files in problems[deployment].items()]
        lines.append(
            f"camera {deployment}: of {totals[deployment]} images, {'; '.join(parts)}: check and set the camera's "
            "clock; its events and times may be wrong"
        )
    return lines
