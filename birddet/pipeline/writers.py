"""Prediction results and the files they are written to: MegaDetector batch JSON, COCO JSON, CSV.

The result model (:class:`ImageResult` > :class:`Detection` > :class:`Classification`, `birddet.pipeline.results`)
is what the predict pipeline fills and these writers read.

Every writer follows a published format exactly (the MegaDetector output format as documented at
https://lila.science/megadetector-output-format, and the COCO dataset format that pycocotools reads), because
the point of these files is that existing camera-trap and evaluation tools open them unchanged. Files are
written atomically (temp file in the same folder + ``os.replace``) so an interrupted run never leaves a
truncated file where a good one was.

:func:`write_outputs` writes the requested files as one set (every temporary file is complete before the first
rename, `birddet.fileio.atomic_write_set`) and then ``manifest.json``, the SHA-256 of each file of the set; a
run killed between two renames leaves files that disagree with the manifest, which :func:`check_outputs` finds
(``--resume`` rewrites them). CSV cells that a spreadsheet would run as formulas are neutralised with a leading
``'`` (`birddet.fileio.spreadsheet_safe`).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from birddet.errors import InputError
from birddet.fileio import atomic_write_json, atomic_write_set, atomic_write_text, csv_text
from birddet.pipeline.results import Classification, Detection, ImageResult  # noqa: F401 (re-exported, lived here)
from birddet.pipeline.taxonomy import Taxonomy
from birddet.pipeline.video_writers import MEGADETECTOR_VIDEO_FORMAT_VERSION, frame_views, megadetector_video_entry

MEGADETECTOR_FORMAT_VERSION = "1.4"
OUTPUT_NAMES: dict[str, str] = {"megadetector": "megadetector.json", "coco": "coco.json", "csv": "predictions.csv"}
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
CSV_COLUMNS: tuple[str, ...] = (
    "file",
    "count",
    "x_min",
    "y_min",
    "x_max",
    "y_max",
    "det_score",
    "category",
    "species",
    "common_name",
    "species_score",
    "rollup_taxon",
    "rollup_rank",
    "rollup_score",
    "failure",
    # Added after the first release; appended so that readers by position keep working.
    "identified_as",
    "species_uncertain",
    # Video clips: the sampled frame's number and time in seconds (empty for photos).
    "frame",
    "time_s",
    # When and where the photo was taken, and its event (birddet.pipeline.events).
    "datetime",
    "timestamp_source",
    "deployment",
    "event_id",
    "event_species",
)
_IMAGE_COLUMNS = 5  # the last five: the same on every row of an image


# -- atomic writes -----------------------------------------------------------------------------------------


def _now() -> str:
    # MegaDetector's own writer uses this layout; downstream tools parse it.
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


# -- shared helpers ----------------------------------------------------------------------------------------


def _species_fields(det: Detection, taxonomy: Taxonomy | None) -> tuple[int | None, str, str, float | None]:
    """Top-1 species of a detection as (index, scientific name, common name, score); empties when unclassified."""
    top = det.top_classification()
    if top is None:
        return None, "", "", None
    if taxonomy is None:
        return top.class_index, str(top.class_index), "", top.score
    taxon = taxonomy.taxon(top.class_index)
    return top.class_index, taxon.scientific_name, taxon.common_name or "", top.score


def _clipped_xyxy(det: Detection, width: int | None, height: int | None) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in det.box_xyxy)
    if width is not None:
        x1, x2 = min(max(x1, 0.0), float(width)), min(max(x2, 0.0), float(width))
    if height is not None:
        y1, y2 = min(max(y1, 0.0), float(height)), min(max(y2, 0.0), float(height))
    return x1, y1, max(x2, x1), max(y2, y1)


def _used_categories(results: Sequence[ImageResult], categories: Mapping[int, str]) -> dict[int, str]:
    """The given categories plus any used by a detection but missing there (named from the detection).

    Both formats require every referenced category to be declared; taking the name from the detection keeps
    the file valid instead of failing a long run at the last step.
    """
    merged = {int(k): str(v) for k, v in categories.items()}
    for r in results:
        for d in r.detections:
            merged.setdefault(int(d.category_id), d.category_name)
    return dict(sorted(merged.items()))


# -- MegaDetector ------------------------------------------------------------------------------------------


def megadetector_dict(
    results: Sequence[ImageResult],
    *,
    detection_categories: Mapping[int, str],
    taxonomy: Taxonomy | None,
    detector_name: str,
    classifier_name: str | None,
    conf_digits: int = 3,
    coord_digits: int = 4,
    detector_metadata: Mapping[str, Any] | None = None,
    classifier_metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the MegaDetector batch output (format 1.4) as a dict; see :func:`write_megadetector_json`."""
    has_video = any(r.video is not None for r in results)  # clips need the video fields of a newer version
    info: dict[str, Any] = {
        "format_version": MEGADETECTOR_VIDEO_FORMAT_VERSION if has_video else MEGADETECTOR_FORMAT_VERSION,
        "detector": detector_name,
        "detection_completion_time": _now(),
        "detector_metadata": dict(detector_metadata or {}),
    }
    if classifier_name is not None:
        info["classifier"] = classifier_name
        info["classification_completion_time"] = _now()
        info["classifier_metadata"] = dict(classifier_metadata or {})

    used_classes: set[int] = set()
    images: list[dict[str, Any]] = []

    def detection_entry(d: Detection, r: ImageResult) -> dict[str, Any]:
        if not r.width or not r.height:
            raise ValueError(f"image {r.file!r} has no size; MegaDetector boxes are normalised by it")
        x1, y1, x2, y2 = _clipped_xyxy(d, r.width, r.height)
        bbox = [
            round(x1 / r.width, coord_digits),
            round(y1 / r.height, coord_digits),
            round((x2 - x1) / r.width, coord_digits),
            round((y2 - y1) / r.height, coord_digits),
        ]
        entry: dict[str, Any] = {"category": str(int(d.category_id)), "conf": round(float(d.score), conf_digits)}
        entry["bbox"] = bbox
        if d.classifications:
            ranked = sorted(d.classifications, key=lambda c: c.score, reverse=True)
            entry["classifications"] = [[str(int(c.class_index)), round(float(c.score), conf_digits)] for c in ranked]
            used_classes.update(int(c.class_index) for c in ranked)
        return entry

    for r in results:
        if r.video is not None:  # a clip: MegaDetector's video entry (birddet.pipeline.video_writers)
            images.append(megadetector_video_entry(r, lambda d, r=r: detection_entry(d, r)))
            continue
        if r.failure is not None:
            # The format says: failure is a string and detections is null (not an empty list).
            images.append({"file": r.file, "failure": r.failure, "detections": None})
            if r.datetime:
                images[-1]["datetime"] = r.datetime
            continue
        if not r.width or not r.height:
            raise ValueError(f"image {r.file!r} has no size; MegaDetector boxes are normalised by it")
        images.append(
            {
                "file": r.file,
                "detections": [detection_entry(d, r) for d in r.detections],
                **({"datetime": r.datetime} if r.datetime else {}),
            }
        )

    out: dict[str, Any] = {
        "info": info,
        "detection_categories": {str(k): v for k, v in _used_categories(results, detection_categories).items()},
    }
    if used_classes or classifier_name is not None:
        # Only classes that occur: the iNat21 classifier has 10,000, which would dwarf the results. Ids are the
        # classifier's own class indices, so files from different runs still agree on what "3838" means.
        ordered = sorted(used_classes)
        if taxonomy is not None:
            out["classification_categories"] = {str(i): taxonomy.taxon(i).class_name for i in ordered}
            out["classification_category_descriptions"] = {str(i): taxonomy.description(i) for i in ordered}
        else:
            out["classification_categories"] = {str(i): str(i) for i in ordered}
    out["images"] = images
    return out


def write_megadetector_json(
    path: str | os.PathLike[str],
    results: Sequence[ImageResult],
    *,
    detection_categories: Mapping[int, str],
    taxonomy: Taxonomy | None,
    detector_name: str,
    classifier_name: str | None,
    conf_digits: int = 3,
    coord_digits: int = 4,
    detector_metadata: Mapping[str, Any] | None = None,
    classifier_metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a MegaDetector batch output file (format version 1.4), readable by Timelapse, AddaxAI and co.

    Boxes are ``[x_min, y_min, width, height]`` normalised by the displayed image size and clipped to [0, 1];
    category ids are strings; ``classifications`` are ``[["<class index>", conf], ...]`` highest first and
    present only on classified detections. ``classification_categories`` (class index -> class name) and
    ``classification_category_descriptions`` (common name, binomial, lineage) list only classes that occur.
    Failed images are ``{"file", "failure": reason, "detections": null}`` as the format requires. The
    taxonomic roll-up has no place in this format and is left out (it is in the COCO and CSV outputs); a box whose
    species is uncertain keeps the detector's ``category`` and its top-k ``classifications`` with their
    probabilities, so a reader applies its own threshold to them as it does to any MegaDetector file.
    """
    data = megadetector_dict(
        results,
        detection_categories=detection_categories,
        taxonomy=taxonomy,
        detector_name=detector_name,
        classifier_name=classifier_name,
        conf_digits=conf_digits,
        coord_digits=coord_digits,
        detector_metadata=detector_metadata,
        classifier_metadata=classifier_metadata,
    )
    return atomic_write_text(path, _megadetector_text(data))


def _megadetector_text(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


# -- COCO --------------------------------------------------------------------------------------------------


def coco_dict(
    results: Sequence[ImageResult], *, categories: Mapping[int, str], taxonomy: Taxonomy | None
) -> dict[str, Any]:
    """Build the COCO dataset dict; see :func:`write_coco_json`."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for r, frame in frame_views(results):  # a clip is one image per sampled frame, with its frame and time
        if r.failure is not None:
            continue
        image_id = len(images) + 1
        images.append(
            {"id": image_id, "file_name": r.file, "width": r.width, "height": r.height, **frame, **_image_fields(r)}
        )
        for d in r.detections:
            x1, y1, x2, y2 = _clipped_xyxy(d, r.width, r.height)
            w, h = x2 - x1, y2 - y1
            species_index, species_name, common_name, species_score = _species_fields(d, taxonomy)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(d.category_id),
                    "bbox": [round(x1, 2), round(y1, 2), round(w, 2), round(h, 2)],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                    "score": round(float(d.score), 5),
                    "species_index": species_index,
                    "species_name": species_name or None,
                    "species_score": None if species_score is None else round(float(species_score), 5),
                    "common_name": common_name or None,
                    "rollup_name": d.rollup.name if d.rollup else None,
                    "rollup_rank": d.rollup.rank if d.rollup else None,
                    "rollup_score": round(float(d.rollup.score), 5) if d.rollup else None,
                    "identified_as": d.identified_as,
                    "species_uncertain": d.species_uncertain,
                }
            )
    cats = [{"id": k, "name": v} for k, v in _used_categories(results, categories).items()]
    return {
        "info": {"description": "birddet predictions", "date_created": _now()},
        "images": images,
        "categories": cats,
        "annotations": annotations,
    }


def write_coco_json(
    path: str | os.PathLike[str],
    results: Sequence[ImageResult],
    *,
    categories: Mapping[int, str],
    taxonomy: Taxonomy | None,
) -> Path:
    """Write predictions as a COCO dataset that pycocotools loads (``COCO(path)``, ``loadRes(annotations)``).

    Image ids are ``1..N`` over successful images in input order (failed images are left out: COCO has no
    way to say "could not be read"). Annotations carry the standard fields (pixel ``bbox [x, y, w, h]``,
    ``area``, ``iscrowd`` 0, ``score``) plus the species and roll-up fields, which COCO tools ignore.
    ``category_id`` is always the detector's category; ``identified_as`` is the roll-up's taxon, or the detector's
    category when ``species_uncertain`` is true (the species fields then hold the best guess and its probability).
    Images carry ``datetime``, ``timestamp_source``, ``deployment``, ``event_id`` and ``event_species``
    (docs/events.md), which COCO tools ignore.
    """
    data = coco_dict(results, categories=categories, taxonomy=taxonomy)
    return atomic_write_text(path, _coco_text(data))


def _coco_text(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False) + "\n"


# -- CSV ---------------------------------------------------------------------------------------------------


def _image_fields(r: ImageResult) -> dict[str, Any]:
    """When and where an image was taken, and its event: the per-image fields of the COCO and CSV outputs."""
    event = r.event
    return {
        "datetime": r.datetime,
        "timestamp_source": r.timestamp_source,
        "deployment": None if event is None else event.deployment,
        "event_id": None if event is None else event.event_id,
        "event_species": None if event is None else event.species,
    }


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{round(float(value), digits)}"


def _csv_bool(value: bool | None) -> str:
    return "" if value is None else ("true" if value else "false")


def write_predictions_csv(
    path: str | os.PathLike[str], results: Sequence[ImageResult], *, taxonomy: Taxonomy | None
) -> Path:
    """Write one row per detection, plus one row per failed image (empty box, reason in ``failure``).

    Columns are :data:`CSV_COLUMNS`; ``count`` is the number of detections of that row's image (the same on each
    of its rows), so a flock's size is one lookup, and an image that was read but had no detection gets one row
    with ``count`` 0 and an empty box: a count of zero is a result, not a missing line. Boxes are pixel
    ``x_min, y_min, x_max, y_max``; ``species`` is the scientific name of the top-1 class (its index when there
    is no taxonomy) and ``species_score`` its probability, even when it is under the roll-up threshold;
    ``identified_as`` is what the box is (the roll-up's taxon, else the detector's ``category``) and
    ``species_uncertain`` is ``true`` when the classifier named no taxon, so ``species`` is only a guess (``false``
    when it named one, empty when the box was not classified); ``datetime``, ``timestamp_source``, ``deployment``,
    ``event_id`` and ``event_species`` say when the photo was taken and which event it belongs to (the same on every
    row of an image, empty for an image in no event; docs/events.md); UTF-8, ``\\r\\n`` line ends (csv module). Text cells starting with ``= + - @``, a tab or a
    carriage return get a leading ``'`` so a spreadsheet shows them instead of running them.
    """
    return atomic_write_text(path, predictions_csv_text(results, taxonomy=taxonomy))


def predictions_csv_text(results: Sequence[ImageResult], *, taxonomy: Taxonomy | None) -> str:
    """The text of :func:`write_predictions_csv`."""
    rows: list[list[Any]] = [list(CSV_COLUMNS)]
    for r, frame in frame_views(results):  # a clip is one group of rows per sampled frame (video_writers)
        fields = _image_fields(r)
        where = [frame.get("frame", ""), "" if "time_s" not in frame else _fmt(frame["time_s"], 3)]
        where += ["" if fields[c] is None else fields[c] for c in CSV_COLUMNS[-_IMAGE_COLUMNS:]]
        if r.failure is not None:
            rows.append([{"file": r.file, "failure": r.failure}.get(c, "") for c in CSV_COLUMNS[: -len(where)]] + where)
            continue
        if not r.detections:
            rows.append([r.file, 0, *[""] * (len(CSV_COLUMNS) - 2 - len(where)), *where])
        for d in r.detections:
            x1, y1, x2, y2 = _clipped_xyxy(d, r.width, r.height)
            _, species, common, species_score = _species_fields(d, taxonomy)
            rows.append(
                [
                    r.file,
                    len(r.detections),
                    _fmt(x1, 2),
                    _fmt(y1, 2),
                    _fmt(x2, 2),
                    _fmt(y2, 2),
                    _fmt(d.score, 4),
                    d.category_name,
                    species,
                    common,
                    _fmt(species_score, 4),
                    d.rollup.name if d.rollup else "",
                    d.rollup.rank if d.rollup else "",
                    _fmt(d.rollup.score if d.rollup else None, 4),
                    "",
                    d.identified_as,
                    _csv_bool(d.species_uncertain),
                    *where,
                ]
            )
    return csv_text(rows)


# -- all formats -------------------------------------------------------------------------------------------


def write_outputs(
    out_dir: str | os.PathLike[str],
    results: Sequence[ImageResult],
    formats: Sequence[str],
    *,
    detection_categories: Mapping[int, str],
    taxonomy: Taxonomy | None,
    detector_name: str,
    classifier_name: str | None = None,
    detector_metadata: Mapping[str, Any] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Write each requested format under ``out_dir`` with its fixed name, as one set, then ``manifest.json``;
    return ``{format: path}``. ``extra`` maps more files (a name relative to ``out_dir``) to their text: written
    in the same set, listed in the manifest and returned under their names (events.csv, the Camtrap DP package).

    Names are fixed (:data:`OUTPUT_NAMES`) so scripts and ``--resume`` find them without configuration.
    Formats are checked before anything is written, so a typo does not leave a half-written output folder. An
    error while writing any file (a full disk, Ctrl-C) leaves every old file in place; the manifest, written
    last, lets :func:`check_outputs` tell a set torn by a kill during the renames.
    """
    unknown = [f for f in formats if f not in OUTPUT_NAMES]
    if unknown:
        raise InputError(f"unknown output format(s) {unknown}; choose from {', '.join(OUTPUT_NAMES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts: dict[str, str] = {}
    for fmt in dict.fromkeys(formats):
        if fmt == "megadetector":
            texts[fmt] = _megadetector_text(
                megadetector_dict(
                    results,
                    detection_categories=detection_categories,
                    taxonomy=taxonomy,
                    detector_name=detector_name,
                    classifier_name=classifier_name,
                    detector_metadata=detector_metadata,
                )
            )
        elif fmt == "coco":
            texts[fmt] = _coco_text(coco_dict(results, categories=detection_categories, taxonomy=taxonomy))
        else:
            texts[fmt] = predictions_csv_text(results, taxonomy=taxonomy)
    written = {fmt: out / OUTPUT_NAMES[fmt] for fmt in texts}
    extra = dict(extra or {})
    for name in extra:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
    written.update({name: out / name for name in extra})
    atomic_write_set({written[fmt]: text for fmt, text in texts.items()} | {out / n: t for n, t in extra.items()})
    manifest = {
        "birddet_outputs": MANIFEST_VERSION,
        "run": uuid.uuid4().hex,
        "written": _now(),
        "files": {
            OUTPUT_NAMES[fmt]: {"sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
            for fmt, text in texts.items()
        }
        | {name: {"sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()} for name, text in extra.items()},
    }
    atomic_write_json(out / MANIFEST_NAME, manifest, indent=1)
    return written


def check_outputs(out_dir: str | os.PathLike[str]) -> list[str]:
    """What in ``out_dir`` disagrees with its ``manifest.json`` (one entry per file; empty when the set is whole).

    A folder without a manifest has nothing to check (a run that never got to write its outputs).
    """
    out = Path(out_dir)
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
        files = dict(manifest["files"])
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{MANIFEST_NAME} is damaged"]
    problems: list[str] = []
    for name, entry in files.items():
        path = out / name
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except FileNotFoundError:
            problems.append(f"{name} is missing")
            continue
        if digest != entry.get("sha256"):
            problems.append(f"{name} is not the one the manifest lists")
    return problems
