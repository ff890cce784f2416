"""Writers: MegaDetector 1.4 JSON, COCO JSON (pycocotools), CSV, result round trip and atomic writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from birddet.errors import InputError
from birddet.fileio import atomic_path
from birddet.pipeline.taxonomy import Rollup, Taxonomy
from birddet.pipeline.writers import (
    CSV_COLUMNS,
    Classification,
    Detection,
    ImageResult,
    write_coco_json,
    write_megadetector_json,
    write_outputs,
    write_predictions_csv,
)

CLASS_NAMES = [
    "00000_Animalia_Chordata_Aves_Passeriformes_Fringillidae_Spinus_tristis",
    "00001_Animalia_Chordata_Aves_Passeriformes_Fringillidae_Spinus_pinus",
    "00002_Animalia_Chordata_Aves_Passeriformes_Fringillidae_Haemorhous_mexicanus",
]
CATEGORIES = {1: "bird", 3: "mammal"}


@pytest.fixture
def taxonomy() -> Taxonomy:
    return Taxonomy({n: i for i, n in enumerate(CLASS_NAMES)}, {0: "American Goldfinch", 2: "House Finch"})


@pytest.fixture
def results() -> list[ImageResult]:
    goldfinch = Detection(
        box_xyxy=(10.0, 20.0, 110.0, 80.0),
        score=0.9876,
        category_id=1,
        category_name="bird",
        classifications=[Classification(0, 0.8), Classification(1, 0.15)],
        rollup=Rollup("species", "Spinus tristis", 0.8, 0),
    )
    # Slightly outside the 200x100 image: must be clipped, never normalised past 1.
    siskin_or_goldfinch = Detection(
        box_xyxy=(-5.0, 50.0, 210.0, 104.0),
        score=0.51,
        category_id=1,
        category_name="bird",
        classifications=[Classification(1, 0.45), Classification(0, 0.4)],
        rollup=Rollup("genus", "Spinus", 0.85),
    )
    squirrel = Detection(box_xyxy=(0.0, 0.0, 30.0, 40.0), score=0.7, category_id=3, category_name="mammal")
    return [
        ImageResult("cam1/a.jpg", "/data/cam1/a.jpg", 200, 100, [goldfinch, siskin_or_goldfinch]),
        ImageResult("cam1/empty.jpg", "/data/cam1/empty.jpg", 640, 480, []),
        ImageResult("cam2/broken.jpg", "/data/cam2/broken.jpg", None, None, [], failure="truncated JPEG"),
        ImageResult("cam2/b.jpg", "/data/cam2/b.jpg", 60, 80, [squirrel]),
    ]


def test_result_to_dict_from_dict_round_trips_through_json(results: list[ImageResult]) -> None:
    for r in results:
        assert ImageResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_damaged_checkpoint_entry_is_input_error() -> None:
    with pytest.raises(InputError, match="a.jpg"):
        ImageResult.from_dict({"file": "a.jpg", "width": 1})


# -- MegaDetector -----------------------------------------------------------------------------------------


def test_megadetector_json_follows_format_1_4(tmp_path: Path, results: list[ImageResult], taxonomy: Taxonomy) -> None:
    path = write_megadetector_json(
        tmp_path / "md.json",
        results,
        detection_categories=CATEGORIES,
        taxonomy=taxonomy,
        detector_name="birddet-vitdet.pt",
        classifier_name="vit_reg4_m16_rms_avg_i-jepa-inat21",
        detector_metadata={"typical_detection_threshold": 0.3},
    )
    data = json.loads(path.read_text(encoding="utf-8"))
    info = data["info"]
    assert info["format_version"] == "1.4"
    assert info["detector"] == "birddet-vitdet.pt"
    assert info["classifier"] == "vit_reg4_m16_rms_avg_i-jepa-inat21"
    assert {"detection_completion_time", "classification_completion_time", "detector_metadata"} <= set(info)
    assert data["detection_categories"] == {"1": "bird", "3": "mammal"}

    # Only classes that occur, described with common name and lineage; same id set in both maps.
    assert data["classification_categories"] == {"0": CLASS_NAMES[0], "1": CLASS_NAMES[1]}
    assert set(data["classification_category_descriptions"]) == {"0", "1"}
    assert data["classification_category_descriptions"]["0"].startswith("American Goldfinch (Spinus tristis); ")

    images = {im["file"]: im for im in data["images"]}
    assert list(images) == ["cam1/a.jpg", "cam1/empty.jpg", "cam2/broken.jpg", "cam2/b.jpg"]
    assert images["cam1/empty.jpg"]["detections"] == []
    assert images["cam2/broken.jpg"] == {"file": "cam2/broken.jpg", "failure": "truncated JPEG", "detections": None}
    assert "failure" not in images["cam1/a.jpg"]

    first, clipped = images["cam1/a.jpg"]["detections"]
    assert first["category"] == "1"
    assert isinstance(first["conf"], float) and first["conf"] == 0.988
    assert first["bbox"] == [0.05, 0.2, 0.5, 0.6]
    assert first["classifications"] == [["0", 0.8], ["1", 0.15]]
    assert clipped["bbox"] == [0.0, 0.5, 1.0, 0.5]
    assert clipped["classifications"] == [["1", 0.45], ["0", 0.4]]
    assert "classifications" not in images["cam2/b.jpg"]["detections"][0]
    for im in data["images"]:
        for det in im["detections"] or []:
            x, y, w, h = det["bbox"]
            assert all(0.0 <= v <= 1.0 for v in det["bbox"])
            assert x + w <= 1.0 + 1e-9 and y + h <= 1.0 + 1e-9
            assert det["category"] in data["detection_categories"]


def test_megadetector_json_without_classifier_has_no_classification_maps(
    tmp_path: Path, results: list[ImageResult]
) -> None:
    plain = [ImageResult(r.file, r.path, r.width, r.height, [Detection(d.box_xyxy, d.score, d.category_id, d.category_name) for d in r.detections], r.failure) for r in results]  # fmt: skip
    data = json.loads(
        write_megadetector_json(
            tmp_path / "md.json",
            plain,
            detection_categories=CATEGORIES,
            taxonomy=None,
            detector_name="d.pt",
            classifier_name=None,
        ).read_text(encoding="utf-8")
    )
    assert "classification_categories" not in data
    assert "classifier" not in data["info"]


# -- COCO -------------------------------------------------------------------------------------------------


def test_coco_json_loads_in_pycocotools_and_round_trips_ids(
    tmp_path: Path, results: list[ImageResult], taxonomy: Taxonomy
) -> None:
    path = write_coco_json(tmp_path / "coco.json", results, categories=CATEGORIES, taxonomy=taxonomy)
    coco = COCO(str(path))
    assert coco.getImgIds() == [1, 2, 3]  # the failed image is left out
    assert [coco.imgs[i]["file_name"] for i in (1, 2, 3)] == ["cam1/a.jpg", "cam1/empty.jpg", "cam2/b.jpg"]
    assert sorted(coco.getCatIds()) == [1, 3]
    assert coco.getAnnIds(imgIds=[1]) == [1, 2]
    assert coco.getAnnIds(imgIds=[3]) == [3]

    ann = coco.anns[1]
    assert ann["bbox"] == [10.0, 20.0, 100.0, 60.0]
    assert ann["area"] == 6000.0
    assert ann["iscrowd"] == 0
    assert ann["category_id"] == 1
    assert (ann["species_index"], ann["species_name"], ann["common_name"]) == (
        0,
        "Spinus tristis",
        "American Goldfinch",
    )
    assert ann["species_score"] == pytest.approx(0.8)
    assert (ann["rollup_name"], ann["rollup_rank"]) == ("Spinus tristis", "species")
    assert coco.anns[2]["bbox"] == [0.0, 50.0, 200.0, 50.0]  # clipped to the image
    assert coco.anns[2]["common_name"] is None  # Pine Siskin has no common name in this taxonomy
    assert coco.anns[3]["species_index"] is None

    res = coco.loadRes(coco.dataset["annotations"])
    assert sorted(res.getAnnIds()) == [1, 2, 3]


# -- CSV --------------------------------------------------------------------------------------------------


def test_csv_has_one_row_per_detection_per_failure_and_per_empty_image_with_counts(
    tmp_path: Path, results: list[ImageResult], taxonomy: Taxonomy
) -> None:
    path = write_predictions_csv(tmp_path / "p.csv", results, taxonomy=taxonomy)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert [r["file"] for r in rows] == ["cam1/a.jpg", "cam1/a.jpg", "cam1/empty.jpg", "cam2/broken.jpg", "cam2/b.jpg"]
    first = rows[0]
    assert [float(first[k]) for k in ("x_min", "y_min", "x_max", "y_max")] == [10.0, 20.0, 110.0, 80.0]
    assert float(first["det_score"]) == pytest.approx(0.9876)
    assert (first["category"], first["species"], first["common_name"]) == (
        "bird",
        "Spinus tristis",
        "American Goldfinch",
    )
    assert (rows[1]["rollup_taxon"], rows[1]["rollup_rank"], float(rows[1]["rollup_score"])) == (
        "Spinus",
        "genus",
        0.85,
    )
    assert float(rows[1]["x_min"]) == 0.0 and float(rows[1]["x_max"]) == 200.0
    assert [r["count"] for r in rows] == ["2", "2", "0", "", "1"]
    empty = rows[2]  # read, nothing found: a zero count, not a missing line
    assert all(empty[k] == "" for k in CSV_COLUMNS if k not in ("file", "count"))
    failed = rows[3]
    assert failed["failure"] == "truncated JPEG"
    assert all(failed[k] == "" for k in CSV_COLUMNS if k not in ("file", "failure"))
    assert rows[4]["species"] == "" and rows[4]["category"] == "mammal"


# -- all formats, atomicity -------------------------------------------------------------------------------


def test_write_outputs_uses_fixed_names(tmp_path: Path, results: list[ImageResult], taxonomy: Taxonomy) -> None:
    written = write_outputs(
        tmp_path / "out",
        results,
        ["megadetector", "coco", "csv"],
        detection_categories=CATEGORIES,
        taxonomy=taxonomy,
        detector_name="d.pt",
        classifier_name="c.pt",
    )
    assert {k: p.name for k, p in written.items()} == {
        "megadetector": "megadetector.json",
        "coco": "coco.json",
        "csv": "predictions.csv",
    }
    assert all(p.is_file() for p in written.values())
    # The set's manifest (SHA-256 of each file) comes with it; no temporary file is left.
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["coco.json", "manifest.json", "megadetector.json", "predictions.csv"]


def test_write_outputs_rejects_unknown_format_before_writing(tmp_path: Path, results: list[ImageResult]) -> None:
    with pytest.raises(InputError, match="yolo"):
        write_outputs(
            tmp_path / "out",
            results,
            ["csv", "yolo"],
            detection_categories=CATEGORIES,
            taxonomy=None,
            detector_name="d",
        )
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "megadetector.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("killed mid-write")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["megadetector.json"]
