"""``events.csv`` and ``counts.csv``: a run's events and each camera's species counts, and the predict step that
builds them from the merged per-image results (`birddet.pipeline.events`).

``events.csv`` has one row per event and species (detector category): where and when (``deployment``, ``event_id``,
``start``, ``end``, ``duration_s``, ``n_images``), what (``species``, ``common_name``, ``rank``), how many
(``max_count``: MaxN, ``mean_score``: mean detection score), and the event's ``first_image`` and ``last_image``;
then ``category`` (the detector's) and ``species_score`` (the pooled share of ``species``). An event without a
detection has one row with ``max_count`` 0 and an empty ``species``: an empty burst is a result too.

``counts.csv`` has one row per deployment and species: in how many ``events`` it was seen, ``sum_max_count`` (the
sum of its MaxN over those events, the usual relative-abundance figure), ``first_seen`` and ``last_seen``. A camera
that saw nothing has one row with an empty ``species`` and zeros.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from birddet.fileio import csv_text
from birddet.pipeline.camtrap_dp import CAMTRAP_DP_FILES, camtrap_dp_texts, check_deployments, read_deployments
from birddet.pipeline.events import Event, Located, annotate_images, build_events, clock_warnings, deployment_of
from birddet.pipeline.predict_options import PredictOptions
from birddet.pipeline.results import ImageResult
from birddet.pipeline.taxonomy import Taxonomy
from birddet.pipeline.timestamps import stamp_results
from birddet.pipeline.video_events import ClipEvent, clip_events

__all__ = [
    "COUNTS_COLUMNS",
    "EVENTS_COLUMNS",
    "EVENT_FILES",
    "check_event_inputs",
    "counts_csv_text",
    "event_output_texts",
    "events_csv_text",
]

logger = logging.getLogger(__name__)

# Every file these writers may put in a run's folder (the run-folder rules treat them as the run's outputs).
EVENT_FILES = ("events.csv", "counts.csv", *CAMTRAP_DP_FILES)
EVENTS_COLUMNS: tuple[str, ...] = (
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
    # Video clips (birddet.pipeline.video_events): seconds from the clip's start of the first and last sampled
    # frame showing the category; empty for photo events.
    "first_seen_s",
    "last_seen_s",
)
COUNTS_COLUMNS: tuple[str, ...] = (
    "deployment",
    "species",
    "common_name",
    "rank",
    "events",
    "sum_max_count",
    "first_seen",
    "last_seen",
    "category",
)


def _round(value: float | None, digits: int = 4) -> Any:
    return "" if value is None else round(float(value), digits)


def events_csv_text(events: Sequence[Event], clips: Sequence[ClipEvent] = ()) -> str:
    """The text of ``events.csv`` (module docstring): photo events in the order given (by deployment, then time),
    then one event per video clip, whose ``first_image`` / ``last_image`` are ``<clip>#<frame>`` and whose
    ``first_seen_s`` / ``last_seen_s`` say when in the clip each category was seen."""
    rows: list[list[Any]] = [list(EVENTS_COLUMNS)]
    for e in events:
        rows.extend(_event_rows(e, e.images[0].file, e.images[-1].file, {}))
    for c in clips:
        rows.extend(_event_rows(c.event, f"{c.file}#{c.frames[0]}", f"{c.file}#{c.frames[-1]}", c.seen_s))
    return csv_text(rows)


def _event_rows(e: Event, first_image: str, last_image: str, seen_s: dict[str, tuple[float, float]]) -> list[list[Any]]:
    """One row per species (detector category) of an event; `seen_s`: when in a clip each category was seen."""
    rows = []
    for s in e.species:
        first, last = seen_s.get(s.category, (None, None))
        rows.append(
            [
                e.deployment,
                e.event_id,
                e.start.isoformat(),
                e.end.isoformat(),
                round(e.duration_s, 3),
                e.n_images,
                s.species,
                s.common_name,
                s.rank,
                s.max_count,
                _round(s.mean_score),
                first_image,
                last_image,
                s.category,
                _round(s.species_score),
                _round(first, 3),
                _round(last, 3),
            ]
        )
    return rows


@dataclass
class _Tally:
    common_name: str
    events: int = 0
    sum_max_count: int = 0
    first_seen: str = ""
    last_seen: str = ""


def counts_csv_text(events: Sequence[Event]) -> str:
    """The text of ``counts.csv`` (module docstring): rows by deployment, then category and species."""
    tallies: dict[str, dict[tuple[str, str, str], _Tally]] = {}
    for e in sorted(events, key=lambda e: (e.deployment, e.start)):  # photo and clip events, in time order
        per_deployment = tallies.setdefault(e.deployment, {})
        for s in e.species:
            if s.max_count == 0:
                continue
            tally = per_deployment.setdefault((s.category, s.species, s.rank), _Tally(s.common_name))
            tally.events += 1
            tally.sum_max_count += s.max_count
            tally.first_seen = tally.first_seen or e.start.isoformat()
            tally.last_seen = e.end.isoformat()  # events come in time order within a deployment
    rows: list[list[Any]] = [list(COUNTS_COLUMNS)]
    for deployment in sorted(tallies):
        if not tallies[deployment]:
            rows.append([deployment, "", "", "", 0, 0, "", "", ""])
        for (category, species, rank), t in sorted(tallies[deployment].items()):
            rows.append(
                [deployment, species, t.common_name, rank, t.events, t.sum_max_count, t.first_seen, t.last_seen,
                 category]
            )  # fmt: skip
    return csv_text(rows)


def check_event_inputs(items: Sequence[Located], options: PredictOptions) -> None:
    """Before a run (after ``options.validate()``): ``--deployments`` (for ``--format camtrap-dp``) has a row for
    every camera folder among ``items`` (the listed sources), so a missing camera costs no model time."""
    if "camtrap-dp" in options.formats and options.deployments:
        cameras = sorted({deployment_of(item, options.deployment_depth) for item in items})
        check_deployments(read_deployments(options.deployments), cameras, options.deployments)


def event_output_texts(
    results: Sequence[ImageResult],
    options: PredictOptions,
    *,
    taxonomy: Taxonomy | None,
    detector_name: str,
    classifier_name: str | None,
) -> dict[str, str]:
    """Build a run's events from its merged results: ``{relative path: text}`` of ``events.csv`` and ``counts.csv``
    (with the ``csv`` format) and of the Camtrap DP package (with ``camtrap-dp``).

    Stamps every result still without a time, marks each image with its event (for the per-image writers) and
    logs one warning per camera whose clock cannot be right. Runs once over the merged results of the whole run,
    so resumed and sharded runs give the same events as a one-process run.
    """
    stamp_results(results)
    events = build_events(results, taxonomy, options.event_options())  # photos; a clip is an event of its own
    clips = clip_events(results, taxonomy, options.event_options())
    annotate_images(events)
    for line in clock_warnings(events):
        logger.warning("%s", line)
    texts: dict[str, str] = {}
    if "csv" in options.formats:
        texts |= {
            "events.csv": events_csv_text(events, clips),
            "counts.csv": counts_csv_text([*events, *(c.event for c in clips)]),
        }
    if "camtrap-dp" in options.formats and options.deployments:
        texts |= camtrap_dp_texts(
            events,
            read_deployments(options.deployments),
            taxonomy=taxonomy,
            detector_name=detector_name,
            classifier_name=classifier_name,
        )
    return texts
