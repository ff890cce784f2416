"""``--format camtrap-dp``: the run as a Camera Trap Data Package (Camtrap DP 1.0, TDWG), how camera-trap data is
published (GBIF) and exchanged (Agouti, Trapper, Wildlife Insights, camtrapR).

The package is a folder ``OUT/camtrap-dp/`` with ``datapackage.json`` and three tables whose columns, types and
vocabularies are the standard's (https://camtrap-dp.tdwg.org/data/, table schemas at
https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0/):

- ``deployments.csv``: one row per camera, from the user's ``--deployments`` file (``deploymentID``, ``latitude``,
  ``longitude`` are required by the standard, and only the user knows them; any other standard column is copied).
  ``deploymentStart``/``deploymentEnd`` default to the first and last photo; ``timestampIssues`` is true for a
  camera whose clock `birddet.pipeline.events.clock_warnings` flags.
- ``media.csv``: one row per photo of an event; ``filePath`` is the name relative to the source folder (copy the
  photos next to ``datapackage.json`` under those names, or replace them with URLs, before publishing).
- ``observations.csv``: ``observationLevel`` ``media``, one per box (``count`` 1, ``bboxX/Y/Width/Height``
  normalised to the displayed image) or one ``blank`` per empty photo; and ``event``, one per event and species
  with its MaxN as ``count`` (``blank`` for an empty event). ``classificationMethod`` is ``machine`` and
  ``classifiedBy`` the model file; ``scientificName`` is the roll-up's taxon (empty when the classifier named none).

Times need a UTC offset in Camtrap DP; a camera's EXIF often has none, and those times are written in this
computer's time zone (``TZ=Europe/Berlin birddet predict ...`` chooses another), with a warning. The package
metadata a machine cannot know (project title, sampling design, contributors, licences) is filled with neutral
values the user edits before publishing (docs/events.md).
"""

from __future__ import annotations

import csv
import json
import logging
import mimetypes
import os
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from birddet.errors import InputError
from birddet.fileio import csv_text
from birddet.pipeline.events import Event, EventSpecies, clock_warnings
from birddet.pipeline.results import Detection, ImageResult
from birddet.pipeline.taxonomy import RANKS, Taxonomy

__all__ = ["CAMTRAP_DP_FILES", "CAMTRAP_DP_FOLDER", "camtrap_dp_texts", "check_deployments", "read_deployments"]

logger = logging.getLogger(__name__)

CAMTRAP_DP_VERSION = "1.0"
_BASE_URL = f"https://raw.githubusercontent.com/tdwg/camtrap-dp/{CAMTRAP_DP_VERSION}"
CAMTRAP_DP_FOLDER = "camtrap-dp"
CAMTRAP_DP_FILES = tuple(
    f"{CAMTRAP_DP_FOLDER}/{name}" for name in ("datapackage.json", "deployments.csv", "media.csv", "observations.csv")
)

# The columns of the standard's three tables, in its order.
DEPLOYMENTS_FIELDS = (
    "deploymentID", "locationID", "locationName", "latitude", "longitude", "coordinateUncertainty",
    "deploymentStart", "deploymentEnd", "setupBy", "cameraID", "cameraModel", "cameraDelay", "cameraHeight",
    "cameraDepth", "cameraTilt", "cameraHeading", "detectionDistance", "timestampIssues", "baitUse", "featureType",
    "habitat", "deploymentGroups", "deploymentTags", "deploymentComments",
)  # fmt: skip
MEDIA_FIELDS = (
    "mediaID", "deploymentID", "captureMethod", "timestamp", "filePath", "filePublic", "fileName", "fileMediatype",
    "exifData", "favorite", "mediaComments",
)  # fmt: skip
OBSERVATIONS_FIELDS = (
    "observationID", "deploymentID", "mediaID", "eventID", "eventStart", "eventEnd", "observationLevel",
    "observationType", "cameraSetupType", "scientificName", "count", "lifeStage", "sex", "behavior", "individualID",
    "individualPositionRadius", "individualPositionAngle", "individualSpeed", "bboxX", "bboxY", "bboxWidth",
    "bboxHeight", "classificationMethod", "classifiedBy", "classificationTimestamp", "classificationProbability",
    "observationTags", "observationComments",
)  # fmt: skip


# -- the user's deployments file -----------------------------------------------------------------------------


def read_deployments(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """``{deploymentID: {column: value}}`` from a CSV with the standard's deployment columns.

    ``deploymentID`` (the camera's folder, as birddet names deployments), ``latitude`` and ``longitude`` (WGS84
    decimal degrees) are required; every other column must be one of the standard's. Errors name the file and row.
    """
    where = str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except FileNotFoundError:
        raise InputError(f"--deployments file {where} not found; check the path") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read --deployments file {where}: {exc}; it must be UTF-8 CSV") from None
    missing = [c for c in ("deploymentID", "latitude", "longitude") if c not in header]
    if missing:
        raise InputError(f"--deployments file {where} has no column {', '.join(missing)}; its header is {header}")
    unknown = [c for c in header if c not in DEPLOYMENTS_FIELDS]
    if unknown:
        raise InputError(
            f"--deployments file {where}: {', '.join(unknown)} are not Camtrap DP deployment columns; "
            f"use {', '.join(DEPLOYMENTS_FIELDS)}"
        )
    out: dict[str, dict[str, str]] = {}
    for line, row in enumerate(rows, start=2):
        dep = (row.get("deploymentID") or "").strip()
        if not dep:
            raise InputError(f"--deployments file {where}, line {line}: deploymentID is empty")
        if dep in out:
            raise InputError(f"--deployments file {where}, line {line}: deploymentID {dep!r} is listed twice")
        for name, limit in (("latitude", 90.0), ("longitude", 180.0)):
            try:
                value = float(row[name])
            except (TypeError, ValueError):
                value = float("nan")
            if not -limit <= value <= limit:
                raise InputError(
                    f"--deployments file {where}, line {line}: {name} {row[name]!r} of {dep!r} is not a number "
                    f"in [-{limit:g}, {limit:g}] (WGS84 decimal degrees)"
                )
        out[dep] = {k: (v or "").strip() for k, v in row.items() if k}
    return out


def check_deployments(known: Mapping[str, object], deployments: Sequence[str], where: str) -> None:
    """Refuse, before a run starts, a deployments file that lacks one of the run's cameras."""
    missing = sorted(set(deployments) - set(known))
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise InputError(
            f"--deployments file {where} has no row for camera folder(s) {shown}; add a row with its deploymentID, "
            "latitude and longitude (or change --deployment-depth)"
        )


# -- the package ----------------------------------------------------------------------------------------------


def _instant(when: datetime) -> datetime:
    """``when`` with a UTC offset (a time without one is taken in this computer's zone), to whole seconds."""
    return when.astimezone().replace(microsecond=0) if when.tzinfo is None else when.replace(microsecond=0)


def _stamp(when: datetime) -> str:
    return _instant(when).isoformat()


def _bbox(det: Detection, image: ImageResult) -> list[Any]:
    """``bboxX, bboxY, bboxWidth, bboxHeight`` normalised and clipped to the image; empty for a degenerate box."""
    w, h = float(image.width or 0), float(image.height or 0)
    if w <= 0 or h <= 0:
        return ["", "", "", ""]
    x1, y1, x2, y2 = det.box_xyxy
    x1, x2 = min(max(x1 / w, 0.0), 1.0), min(max(x2 / w, 0.0), 1.0)
    y1, y2 = min(max(y1 / h, 0.0), 1.0), min(max(y2 / h, 0.0), 1.0)
    bw, bh = round(x2 - x1, 6), round(y2 - y1, 6)
    if bw <= 0 or bh <= 0:
        return ["", "", "", ""]
    return [round(x1, 6), round(y1, 6), bw, bh]


def _box_taxon(det: Detection) -> tuple[str, float | None]:
    """A box's ``scientificName`` and ``classificationProbability``: the roll-up's taxon and its summed probability,
    or no name and the detection score (the box is an animal; what it is, the classifier could not say)."""
    if det.rollup is not None and not det.rollup.names_no_taxon:
        return det.rollup.name, det.rollup.score
    return "", det.score


# Detector categories that are not animals, in the standard's observationType vocabulary (MegaDetector's names).
_OBSERVATION_TYPES = {"person": "human", "human": "human", "vehicle": "vehicle"}


def _observation_type(category: str) -> str:
    return _OBSERVATION_TYPES.get(category.strip().lower(), "animal")


def _row(fields: Sequence[str], values: Mapping[str, Any]) -> list[Any]:
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"not Camtrap DP columns: {sorted(unknown)}")
    return ["" if values.get(f) is None else values[f] for f in fields]


def _json_bool(value: bool) -> str:
    return "true" if value else "false"


def camtrap_dp_texts(
    events: Sequence[Event],
    deployments: Mapping[str, Mapping[str, str]],
    *,
    taxonomy: Taxonomy | None,
    detector_name: str,
    classifier_name: str | None,
    created: datetime | None = None,
) -> dict[str, str]:
    """``{relative path: text}`` of the package's four files (module docstring) for a run's events."""
    created = _instant(created or datetime.now())
    classified_by = classifier_name or detector_name
    media_rows: list[list[Any]] = [list(MEDIA_FIELDS)]
    obs_rows: list[list[Any]] = [list(OBSERVATIONS_FIELDS)]
    span: dict[str, tuple[datetime, datetime]] = {}
    taxa: dict[str, EventSpecies | str] = {}
    naive = 0
    for event in events:
        for when, image in zip(event.times, event.images, strict=True):
            naive += when.tzinfo is None
            stamp = _stamp(when)
            first, last = span.get(event.deployment, (when, when))
            span[event.deployment] = (min(first, when, key=_instant), max(last, when, key=_instant))
            media_rows.append(
                _row(MEDIA_FIELDS, {
                    "mediaID": image.file,
                    "deploymentID": event.deployment,
                    "timestamp": stamp,
                    "filePath": image.file,
                    "filePublic": _json_bool(False),
                    "fileName": PurePosixPath(image.file).name,
                    "fileMediatype": mimetypes.guess_type(image.file)[0] or "image/jpeg",
                })
            )  # fmt: skip
            common = {"deploymentID": event.deployment, "mediaID": image.file, "eventID": event.event_id,
                      "eventStart": stamp, "eventEnd": stamp, "observationLevel": "media"}  # fmt: skip
            if not image.detections:
                obs_rows.append(_row(OBSERVATIONS_FIELDS, {**common, "observationID": f"{image.file}#0",
                                                           "observationType": "blank"}))  # fmt: skip
            for k, det in enumerate(image.detections, start=1):
                name, probability = _box_taxon(det)
                if name:
                    taxa.setdefault(name, name)
                x, y, w, h = _bbox(det, image)
                obs_rows.append(
                    _row(OBSERVATIONS_FIELDS, {
                        **common, "observationID": f"{image.file}#{k}",
                        "observationType": _observation_type(det.category_name),
                        "scientificName": name, "count": 1, "bboxX": x, "bboxY": y, "bboxWidth": w, "bboxHeight": h,
                        "classificationMethod": "machine",
                        "classifiedBy": classified_by if det.classifications else detector_name,
                        "classificationTimestamp": created.isoformat(),
                        "classificationProbability": round(float(probability), 4) if probability is not None else None,
                        "observationTags": f"detectorCategory:{det.category_name}|detectionScore:{det.score:.4f}",
                    })
                )  # fmt: skip
        for k, s in enumerate(event.species, start=1):
            row: dict[str, Any] = {
                "observationID": f"{event.event_id}#{k}", "deploymentID": event.deployment,
                "eventID": event.event_id, "eventStart": _stamp(event.start), "eventEnd": _stamp(event.end),
                "observationLevel": "event",
            }  # fmt: skip
            if s.max_count == 0:
                obs_rows.append(_row(OBSERVATIONS_FIELDS, {**row, "observationType": "blank"}))
                continue
            named = s.species if s.rank else ""
            if named:
                taxa[named] = s
            obs_rows.append(
                _row(OBSERVATIONS_FIELDS, {
                    **row, "observationType": _observation_type(s.category), "scientificName": named,
                    "count": s.max_count,
                    "classificationMethod": "machine",
                    "classifiedBy": classified_by if s.species_score is not None else detector_name,
                    "classificationTimestamp": created.isoformat(),
                    "classificationProbability": None if s.species_score is None else round(s.species_score, 4),
                    "observationTags": f"detectorCategory:{s.category}|maxN:{s.max_count}",
                })
            )  # fmt: skip
    if naive:
        logger.warning(
            "camtrap-dp: %d photo time(s) carry no UTC offset in EXIF; Camtrap DP needs one, so they are written in "
            "this computer's time zone (UTC%s); set TZ to the cameras' zone to choose another",
            naive, created.strftime("%z"),
        )  # fmt: skip
    troubled = {line.split(":", 1)[0].removeprefix("camera ") for line in clock_warnings(events)}
    dep_rows: list[list[Any]] = [list(DEPLOYMENTS_FIELDS)]
    for dep in sorted(span):
        given = dict(deployments.get(dep, {}))
        first, last = span[dep]
        given.setdefault("deploymentID", dep)
        given["deploymentStart"] = given.get("deploymentStart") or _stamp(first)
        given["deploymentEnd"] = given.get("deploymentEnd") or _stamp(last)
        given["timestampIssues"] = given.get("timestampIssues") or _json_bool(dep in troubled)
        dep_rows.append(_row(DEPLOYMENTS_FIELDS, given))
    package = _datapackage(deployments, span, taxa, taxonomy, created)
    return {
        CAMTRAP_DP_FILES[0]: json.dumps(package, indent=1, ensure_ascii=False) + "\n",
        CAMTRAP_DP_FILES[1]: csv_text(dep_rows, lineterminator="\n"),
        CAMTRAP_DP_FILES[2]: csv_text(media_rows, lineterminator="\n"),
        CAMTRAP_DP_FILES[3]: csv_text(obs_rows, lineterminator="\n"),
    }


def _taxon_entry(name: str, source: EventSpecies | str, taxonomy: Taxonomy | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"scientificName": name}
    if isinstance(source, EventSpecies):
        if source.rank in RANKS:
            entry["taxonRank"] = source.rank
        if source.class_index is not None and taxonomy is not None:
            taxon = taxonomy.taxon(source.class_index)
            entry.update({r: taxon.ranks[r] for r in RANKS[:-1] if r in taxon.ranks})
        if source.common_name:
            entry["vernacularNames"] = {"eng": source.common_name}
    return entry


def _datapackage(
    deployments: Mapping[str, Mapping[str, str]],
    span: Mapping[str, tuple[datetime, datetime]],
    taxa: Mapping[str, EventSpecies | str],
    taxonomy: Taxonomy | None,
    created: datetime,
) -> dict[str, Any]:
    """``datapackage.json``: the resources with the standard's schema URLs and the profile's required metadata."""
    resources = [
        {
            "name": name,
            "path": f"{name}.csv",
            "profile": "tabular-data-resource",
            "format": "csv",
            "mediatype": "text/csv",
            "encoding": "utf-8",
            "schema": f"{_BASE_URL}/{name}-table-schema.json",
        }
        for name in ("deployments", "media", "observations")
    ]
    lats = [float(deployments[d]["latitude"]) for d in span if d in deployments]
    lons = [float(deployments[d]["longitude"]) for d in span if d in deployments]
    spatial: dict[str, Any] = {}
    if lats:
        w, e, s, n = min(lons), max(lons), min(lats), max(lats)
        spatial = {"type": "Polygon", "bbox": [w, s, e, n], "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    starts = [_instant(a) for a, _ in span.values()]
    ends = [_instant(b) for _, b in span.values()]
    return {
        "resources": resources,
        "profile": f"{_BASE_URL}/camtrap-dp-profile.json",
        "name": "birddet-predictions",
        "id": str(uuid.uuid4()),
        "created": created.isoformat(),
        "title": "birddet predictions",
        "contributors": [],
        "project": {
            "title": "birddet predictions (edit before publishing)",
            "samplingDesign": "opportunistic",
            "captureMethod": ["activityDetection"],
            "individualAnimals": False,
            "observationLevel": ["media", "event"],
        },
        "spatial": spatial,
        "temporal": {
            "start": min(starts).date().isoformat() if starts else "",
            "end": max(ends).date().isoformat() if ends else "",
        },
        "taxonomic": [_taxon_entry(name, src, taxonomy) for name, src in sorted(taxa.items())],
        "sources": [{"title": "birddet"}],
    }
