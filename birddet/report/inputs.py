"""Read a `predict` or an `eval` output folder into one model: images with their boxes (and ground truth).

A predict folder is read from the richest file it has: `megadetector.json` (boxes normalised, top-k species with
probabilities), else `coco.json` (pixel boxes, the top-1 species), else `predictions.csv` (pixel boxes, top-1; no
image size, so boxes are normalised once the preview is decoded). `deployment`, `event_id` and `datetime` are read
from `coco.json`'s images or the CSV's columns when a run wrote them. Where each image lies comes from
`progress.jsonl` (each finished image's absolute `path`), or from `--images ROOT` (ROOT/file) when given.

An eval folder is `results.json` (COCO results in the ground truth's frame), `metrics.json`, the plots, and
`eval_inputs.json`, which names the ground-truth file and the image root (`--gt` / `--images` replace them, for
folders written before eval recorded them).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from birddet.errors import InputError

PREDICT_FILES = ("megadetector.json", "coco.json", "predictions.csv")
EVAL_FILES = ("results.json", "metrics.json")
PLOT_FILES = ("pr_curve.png", "pr_curves_per_class.png", "confusion_matrix.png")


@dataclass
class Box:
    """A detection: `xywh` normalised to [0, 1] of the image (pixels while `ReportImage.normalised` is False)."""

    xywh: tuple[float, float, float, float]
    score: float
    category: str
    species: str | None = None
    topk: list[tuple[str, float]] = field(default_factory=list)
    det_score: float | None = None  # two-stage eval: the detector's score before x species probability
    species_prob: float | None = None


@dataclass
class Truth:
    """A ground-truth box (eval), normalised like `Box`; `crowd` regions are ignored by COCO matching."""

    xywh: tuple[float, float, float, float]
    category: str
    crowd: bool = False


@dataclass
class ReportImage:
    file: str
    path: Path | None
    width: int | None = None
    height: int | None = None
    boxes: list[Box] = field(default_factory=list)
    truth: list[Truth] = field(default_factory=list)
    normalised: bool = True
    failure: str | None = None
    deployment: str | None = None
    event: str | None = None
    datetime: str | None = None


@dataclass
class RunData:
    """What a report shows: `kind` "predict" or "eval", the images, and for eval its metrics and plot files."""

    kind: str
    source: Path
    images: list[ReportImage]
    categories: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)
    read_from: str = ""


def read_run(folder: str | Path, *, images: str | Path | None = None, gt: str | Path | None = None) -> RunData:
    """Read `folder` as an eval folder (it has `results.json`) or a predict folder; InputError when it is neither."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; give a `birddet predict` or `birddet eval` output folder")
    if (folder / "results.json").is_file():
        return read_eval(folder, images=images, gt=gt)
    if any((folder / name).is_file() for name in PREDICT_FILES):
        return read_predict(folder, images=images)
    raise InputError(
        f"{folder} holds neither predict outputs ({', '.join(PREDICT_FILES)}) nor eval outputs (results.json); "
        "give the folder `birddet predict --out` or `birddet eval --out` wrote"
    )


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read it as JSON ({exc}); rerun the command that wrote it") from exc


# -- predict -----------------------------------------------------------------------------------------------------------


def _image_paths(folder: Path, root: str | Path | None) -> dict[str, Path]:
    """file -> absolute path, from `--images` or from `progress.jsonl` (a line cut short by a crash is skipped)."""
    if root is not None:
        return {}
    paths: dict[str, Path] = {}
    progress = folder / "progress.jsonl"
    if progress.is_file():
        for line in progress.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
            try:
                entry = json.loads(line)
                paths[str(entry["file"])] = Path(entry["path"])
            except (ValueError, KeyError, TypeError):
                continue
    return paths


def _locator(folder: Path, root: str | Path | None) -> Any:
    known = _image_paths(folder, root)
    if root is not None and not Path(root).is_dir():
        raise InputError(f"--images {root}: not a folder; give the folder the run's file names are relative to")

    def locate(file: str) -> Path | None:
        if root is not None:
            return Path(root) / file
        return known.get(file)

    return locate


def read_predict(folder: Path, *, images: str | Path | None = None) -> RunData:
    locate = _locator(folder, images)
    md, coco, table = (folder / name for name in PREDICT_FILES)
    if md.is_file():
        run = _from_megadetector(folder, _load_json(md), locate)
    elif coco.is_file():
        run = _from_coco(folder, _load_json(coco), locate)
    else:
        run = _from_csv(folder, _csv_rows(table), locate)
    _add_event_fields(run, coco, table)
    if images is None and not any(im.path for im in run.images):
        raise InputError(
            f"{folder}: no progress.jsonl says where the images are; pass --images ROOT, the folder the run's file "
            "names are relative to"
        )
    return run


def _from_megadetector(folder: Path, data: dict[str, Any], locate: Any) -> RunData:
    where = folder / "megadetector.json"
    try:
        det_cats = {str(k): str(v) for k, v in data.get("detection_categories", {}).items()}
        cls_cats = {str(k): str(v) for k, v in data.get("classification_categories", {}).items()}
        out = []
        for entry in data["images"]:
            file = str(entry["file"])
            image = ReportImage(file, locate(file), failure=entry.get("failure"))
            for det in entry.get("detections") or []:
                ranked = [(cls_cats.get(str(c), str(c)), float(p)) for c, p in det.get("classifications", [])]
                image.boxes.append(
                    Box(
                        tuple(float(v) for v in det["bbox"]),  # type: ignore[arg-type]
                        float(det["conf"]),
                        det_cats.get(str(det["category"]), str(det["category"])),
                        ranked[0][0] if ranked else None,
                        ranked,
                    )
                )
            out.append(image)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{where}: not a MegaDetector batch file ({exc!r}); rerun birddet predict") from exc
    return RunData("predict", folder, out, sorted(set(det_cats.values())), read_from=where.name)


def _from_coco(folder: Path, data: dict[str, Any], locate: Any) -> RunData:
    where = folder / "coco.json"
    try:
        cats = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        by_id: dict[int, ReportImage] = {}
        for im in data["images"]:
            w, h = int(im["width"]), int(im["height"])
            by_id[int(im["id"])] = ReportImage(str(im["file_name"]), locate(str(im["file_name"])), w, h)
        for a in data["annotations"]:
            image = by_id[int(a["image_id"])]
            x, y, w, h = (float(v) for v in a["bbox"])
            species = a.get("species_name")
            prob = a.get("species_score")
            topk = [(str(species), float(prob))] if species and prob is not None else []
            image.boxes.append(
                Box(
                    (x / image.width, y / image.height, w / image.width, h / image.height),  # type: ignore[operator]
                    float(a["score"]),
                    cats.get(int(a["category_id"]), str(a["category_id"])),
                    species or None,
                    topk,
                )
            )
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise InputError(f"{where}: not a birddet COCO predictions file ({exc!r}); rerun birddet predict") from exc
    return RunData("predict", folder, list(by_id.values()), sorted(set(cats.values())), read_from=where.name)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read it as CSV ({exc})") from exc


def _from_csv(folder: Path, rows: list[dict[str, str]], locate: Any) -> RunData:
    where = folder / "predictions.csv"
    by_file: dict[str, ReportImage] = {}
    try:
        for n, row in enumerate(rows, start=2):  # noqa: B007 - n is named in the error below
            file = row["file"]
            image = by_file.setdefault(file, ReportImage(file, locate(file), normalised=False))
            if row.get("failure"):
                image.failure = row["failure"]
            if not row.get("x_min"):
                continue
            x1, y1, x2, y2 = (float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
            species = row.get("species") or None
            prob = row.get("species_score")
            image.boxes.append(
                Box(
                    (x1, y1, x2 - x1, y2 - y1),
                    float(row["det_score"]),
                    row["category"],
                    species,
                    [(species, float(prob))] if species and prob else [],
                )
            )
    except (KeyError, ValueError) as exc:
        raise InputError(f"{where} line {n}: not a birddet predictions row ({exc!r})") from exc
    cats = sorted({b.category for im in by_file.values() for b in im.boxes})
    return RunData("predict", folder, list(by_file.values()), cats, read_from=where.name)


def _clean(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value)


def _add_event_fields(run: RunData, coco: Path, table: Path) -> None:
    """Copy `deployment`, `event_id` and `datetime` onto the images, when the run's files carry them."""
    fields: dict[str, dict[str, Any]] = {}
    if coco.is_file():
        data = _load_json(coco)
        for im in data.get("images", []):
            fields[str(im.get("file_name"))] = im
    elif table.is_file():
        for row in _csv_rows(table):
            fields.setdefault(row.get("file", ""), row)
    for image in run.images:
        extra = fields.get(image.file, {})
        image.deployment = _clean(extra.get("deployment"))
        image.event = _clean(extra.get("event_id"))
        image.datetime = _clean(extra.get("datetime"))


# -- eval --------------------------------------------------------------------------------------------------------------


def read_eval(folder: Path, *, images: str | Path | None = None, gt: str | Path | None = None) -> RunData:
    inputs_file = folder / "eval_inputs.json"
    inputs = _load_json(inputs_file) if inputs_file.is_file() else {}
    ann = Path(gt) if gt is not None else (Path(inputs["ann"]) if inputs.get("ann") else None)
    root = Path(images) if images is not None else (Path(inputs["images"]) if inputs.get("images") else None)
    if ann is None or root is None:
        raise InputError(
            f"{folder} has no eval_inputs.json naming its ground truth and images (eval folders written before "
            "birddet recorded them); pass --gt ANN.json and --images ROOT"
        )
    if not ann.is_file():
        raise InputError(f"{ann}: ground-truth file not found (named by {inputs_file}); pass --gt ANN.json")
    truth = _load_json(ann)
    results = _load_json(folder / "results.json")
    metrics = _load_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
    try:
        cats = {int(c["id"]): str(c["name"]) for c in truth["categories"]}
        by_id: dict[int, ReportImage] = {}
        for im in truth["images"]:
            w, h = int(im["width"]), int(im["height"])
            by_id[int(im["id"])] = ReportImage(str(im["file_name"]), root / str(im["file_name"]), w, h)
        for a in truth.get("annotations", []):
            image = by_id[int(a["image_id"])]
            image.truth.append(
                Truth(_norm(a["bbox"], image), cats.get(int(a["category_id"]), "?"), bool(a.get("iscrowd", 0)))
            )
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise InputError(f"{ann}: not a COCO ground-truth file ({exc!r})") from exc
    try:
        for r in results:
            image = by_id[int(r["image_id"])]
            name = cats.get(int(r["category_id"]), str(r["category_id"]))
            prob = r.get("species_prob")
            image.boxes.append(
                Box(
                    _norm(r["bbox"], image),
                    float(r["score"]),
                    name,
                    name,
                    [(name, float(prob))] if prob is not None else [],
                    r.get("det_score"),
                    prob,
                )
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"{folder / 'results.json'}: a result does not fit {ann} ({exc!r}); was it evaluated on that file?"
        ) from exc
    plots = {name: folder / name for name in PLOT_FILES if (folder / name).is_file()}
    return RunData("eval", folder, list(by_id.values()), list(cats.values()), metrics, plots, "results.json")


def _norm(bbox: Any, image: ReportImage) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in bbox)
    return (x / image.width, y / image.height, w / image.width, h / image.height)  # type: ignore[operator]
