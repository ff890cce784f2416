"""Spreadsheet formula injection: text cells starting with = + - @ (or a tab / carriage return) get a leading ' in
every CSV birddet writes (predictions.csv, per_class.csv, the DeepForest table), while numbers stay numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_output_safety import FAST, make_photos, tiny_ckpt  # noqa: F401 - tiny_ckpt is a fixture
from test_predict import fake_boxes

from birddet.cli import main
from birddet.data.formats.csv import write_csv
from birddet.engine.reports import write_per_class_csv
from birddet.pipeline.taxonomy import Taxonomy
from birddet.pipeline.writers import Classification, Detection, ImageResult, write_predictions_csv

EVIL_FILES = ['=HYPERLINK("http:evil")+.jpg', "@SUM(1+1).png"]


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_predictions_csv_neutralises_file_names_that_are_formulas(
    tiny_ckpt: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_boxes(monkeypatch)
    photos = tmp_path / "photos"
    make_photos(photos, names=(EVIL_FILES[0], EVIL_FILES[1]))
    out = tmp_path / "out"
    assert main(["predict", str(tiny_ckpt), str(photos), "--out", str(out), *FAST]) == 0
    header, *rows = _rows(out / "predictions.csv")
    files = {r[header.index("file")] for r in rows}
    assert files == {"'" + name for name in EVIL_FILES}
    # Numbers are untouched: boxes and scores still read as numbers.
    for r in rows:
        assert float(r[header.index("x_min")]) >= 0 and 0 < float(r[header.index("det_score")]) <= 1
    # The JSON outputs keep the real names: they are data, not spreadsheets.
    md = json.loads((out / "megadetector.json").read_text(encoding="utf-8"))
    assert sorted(im["file"] for im in md["images"]) == sorted(EVIL_FILES)


def test_category_species_and_common_name_cells_are_neutralised(tmp_path: Path) -> None:
    taxonomy = Taxonomy({"=cmd|' /C calc'!A0": 0, "Spinus tristis": 1}, {0: "@SUM(A1)", 1: "\tTab start"})
    det = Detection(
        box_xyxy=(0.0, 1.0, 30.0, 20.0),
        score=0.9,
        category_id=1,
        category_name="-2+3",
        classifications=[Classification(0, 0.7), Classification(1, 0.2)],
    )
    other = Detection((1.0, 2.0, 3.0, 4.0), 0.8, 1, "+bird", [Classification(1, 0.9)])
    results = [
        ImageResult("a.jpg", "/x/a.jpg", 64, 36, [det, other]),
        ImageResult("\rb.jpg", "/x/b.jpg", None, None, failure="=broken"),
    ]
    path = write_predictions_csv(tmp_path / "p.csv", results, taxonomy=taxonomy)
    header, *rows = _rows(path)
    col = {name: header.index(name) for name in header}
    assert rows[0][col["category"]] == "'-2+3"
    assert rows[0][col["species"]] == "'=cmd|' /C calc'!A0"
    assert rows[0][col["common_name"]] == "'@SUM(A1)"
    assert rows[1][col["category"]] == "'+bird" and rows[1][col["common_name"]] == "'\tTab start"
    assert rows[2][col["file"]] == "'\rb.jpg" and rows[2][col["failure"]] == "'=broken"
    assert rows[0][col["x_min"]] == "0.0" and rows[0][col["count"]] == "2"


def test_per_class_csv_neutralises_class_names_and_keeps_negative_numbers(tmp_path: Path) -> None:
    result = SimpleNamespace(
        per_class=[
            {"category_id": 1, "name": "=1+1", "num_gt": 0, "AP": -1.0, "AP50": -1.0, "AR100": -1.0},
            {"category_id": 2, "name": "-1", "num_gt": 3, "AP": 0.5, "AP50": 0.75, "AR100": 0.25},
        ]
    )
    rows = _rows(write_per_class_csv(result, tmp_path / "per_class.csv"))  # type: ignore[arg-type]
    assert rows[0] == ["category_id", "name", "num_gt", "AP", "AP50", "AR100"]
    assert rows[1] == ["1", "'=1+1", "0", "-1.0", "-1.0", "-1.0"]  # -1 (no ground truth) stays a number
    assert rows[2][1] == "-1"  # a name that is a plain number is not a formula


def test_deepforest_table_export_neutralises_names(tmp_path: Path) -> None:
    coco = {
        "images": [{"id": 1, "file_name": "+cam/a.jpg", "width": 64, "height": 36}],
        "categories": [{"id": 1, "name": "@bird"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [-1.5, 2.0, 10.0, 5.0], "iscrowd": 0}],
    }
    rows = _rows(write_csv(coco, tmp_path / "boxes.csv"))
    assert rows[1] == ["'+cam/a.jpg", "-1.5", "2.0", "8.5", "7.0", "'@bird"]


def test_spreadsheet_safe_changes_only_formula_text() -> None:
    from birddet.fileio import spreadsheet_safe

    for text in ("=A1", "+A1", "-A1", "@A1", "\tA1", "\rA1", "-2+3", "=1"):
        assert spreadsheet_safe(text) == "'" + text
    for value in ("bird", "-1.5", "+2", "-0.0", "1e-05", -1.5, 3, None, "", "a=b"):
        assert spreadsheet_safe(value) == value
