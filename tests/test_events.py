"""Events from photo times: deployments, the time gap, one species per event (pooled, rolled up), MaxN."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
from camera_traps import EXPECTED_EVENTS, SHOTS, counting_detector, expected_max_n, make_cameras
from conftest import megadetector_validate
from test_predict import CATEGORIES, _tiny_config
from test_predict_shards import _torchrun
from test_species import write_tiny_classifier

from birddet.cli import main
from birddet.config import config_from_dict
from birddet.engine.checkpoint import save_checkpoint
from birddet.errors import InputError
from birddet.models.detector import build_detector
from birddet.pipeline.event_writers import EVENTS_COLUMNS
from birddet.pipeline.events import (
    EventOptions,
    annotate_images,
    build_events,
    clock_warnings,
    deployment_of,
    group_events,
    pool_species,
)
from birddet.pipeline.results import Classification, Detection, ImageResult
from birddet.pipeline.taxonomy import Taxonomy
from birddet.pipeline.timestamps import stamp_results

CERVIDAE = "00000_Animalia_Chordata_Mammalia_Artiodactyla_Cervidae"
TAXONOMY = Taxonomy(
    {
        f"{CERVIDAE}_Odocoileus_virginianus": 0,  # white-tailed deer
        f"{CERVIDAE.replace('00000', '00001')}_Cervus_canadensis": 1,  # elk
        "00002_Animalia_Chordata_Aves_Passeriformes_Paridae_Parus_major": 2,
    },
    {0: "White-tailed Deer", 1: "Elk"},
)
DEER, ELK, TIT = 0, 1, 2


def _det(score: float, *probs: tuple[int, float], category: str = "animal") -> Detection:
    return Detection((0, 0, 10, 10), score, 1, category, [Classification(i, p) for i, p in probs])


def _image(file: str, when: str, *dets: Detection) -> ImageResult:
    return ImageResult(file, f"/data/{file}", 64, 48, list(dets), datetime=when, timestamp_source="exif")


def test_deer_deer_elk_deer_is_a_deer_event() -> None:
    images = [
        _image("cam/1.jpg", "2024-05-01T06:00:00", _det(0.9, (DEER, 0.8), (ELK, 0.2))),
        _image("cam/2.jpg", "2024-05-01T06:00:01", _det(0.9, (DEER, 0.7), (ELK, 0.3))),
        _image("cam/3.jpg", "2024-05-01T06:00:02", _det(0.6, (ELK, 0.7), (DEER, 0.3))),
        _image("cam/4.jpg", "2024-05-01T06:00:03", _det(0.8, (DEER, 0.9), (ELK, 0.1))),
    ]
    (event,) = build_events(images, TAXONOMY, EventOptions())
    (row,) = event.species
    assert (row.species, row.common_name, row.rank, row.max_count) == ("Odocoileus virginianus", "White-tailed Deer",
                                                                       "species", 1)  # fmt: skip
    # The pool is the detection-score-weighted mean of the boxes' probabilities.
    weights = [0.9, 0.9, 0.6, 0.8]
    deer = (0.9 * 0.8 + 0.9 * 0.7 + 0.6 * 0.3 + 0.8 * 0.9) / sum(weights)
    assert row.species_score == pytest.approx(deer)
    assert row.mean_score == pytest.approx(sum(weights) / 4)
    # Per-box species stay as they were; the event's is added beside them.
    annotate_images([event])
    assert {im.event.species for im in images} == {"Odocoileus virginianus"}  # type: ignore[union-attr]
    assert images[2].detections[0].top_classification().class_index == ELK  # type: ignore[union-attr]


def test_an_unsure_event_rolls_up_the_taxonomy_as_a_box_does() -> None:
    dets = [_det(0.9, (DEER, 0.5), (ELK, 0.4)), _det(0.9, (ELK, 0.5), (DEER, 0.4))]
    species, common, rank, share, index = pool_species(dets, TAXONOMY, 0.1, 0.5)  # type: ignore[misc]
    assert (species, common, rank, index) == ("Cervidae", "", "family", None)
    assert share == pytest.approx(0.9)
    # The same pooled vector through the per-box roll-up gives the same answer.
    (rollup,) = TAXONOMY.rollup(__import__("torch").tensor([0.45, 0.45, 0.0]), 0.5)
    assert (rollup.rank, rollup.name) == ("family", "Cervidae")


def test_boxes_under_classify_conf_do_not_vote_but_are_counted() -> None:
    images = [
        _image("cam/1.jpg", "2024-05-01T06:00:00", _det(0.9, (TIT, 0.9)), _det(0.05, (DEER, 1.0))),
        _image("cam/2.jpg", "2024-05-01T06:00:10", _det(0.05, (DEER, 1.0)), _det(0.04), _det(0.03)),
    ]
    (event,) = build_events(images, TAXONOMY, EventOptions(classify_conf=0.1))
    (row,) = event.species
    assert row.species == "Parus major" and row.max_count == 3
    assert row.species_score == pytest.approx(0.9)  # the 0.05 boxes' deer votes are not in the pool


def test_unclassified_boxes_are_named_by_category_one_row_each() -> None:
    images = [
        _image("cam/1.jpg", "2024-05-01T06:00:00", _det(0.9, category="songbird"), _det(0.8, category="wader")),
        _image("cam/2.jpg", "2024-05-01T06:00:10", _det(0.9, category="songbird"), _det(0.7, category="songbird")),
    ]
    (event,) = build_events(images, None, EventOptions())
    assert [(r.species, r.max_count, r.rank) for r in event.species] == [("songbird", 2, ""), ("wader", 1, "")]
    assert event.species_label == "songbird; wader"


def test_camera_folders_give_the_events_and_max_n_the_photos_were_taken_in(tmp_path: Path) -> None:
    root = make_cameras(tmp_path / "cams")
    results = [ImageResult(s.file, str(root / s.file), 64, 48, [_det(0.9, category="bird")] * s.birds) for s in SHOTS]
    results.append(ImageResult("cam01/broken.jpg", str(root / "missing.jpg"), None, None, failure="unreadable"))
    stamp_results(results)
    events = build_events(reversed(results), None, EventOptions())  # input order does not matter
    assert {e.event_id: [im.file for im in e.images] for e in events} == EXPECTED_EVENTS
    assert {e.event_id: max(r.max_count for r in e.species) for e in events} == expected_max_n()
    by_id = {e.event_id: e for e in events}
    assert by_id["cam01/0001"].duration_s == pytest.approx(50.0)
    assert by_id["cam01/0001"].start == datetime(2024, 5, 1, 6, 0, 0)
    assert [(r.species, r.max_count) for r in by_id["cam02/0001"].species] == [("", 0)]
    assert by_id["cam02/0002"].duration_s == pytest.approx(20.0)  # file times, no EXIF
    # A wider gap joins cam03's two photos 90 s apart; a smaller one splits cam01's burst from its straggler.
    assert len([e for e in build_events(results, None, EventOptions(gap_s=90)) if e.deployment == "cam03"]) == 2
    assert len([e for e in build_events(results, None, EventOptions(gap_s=30)) if e.deployment == "cam01"]) == 3

    warnings = clock_warnings(events, now=datetime(2026, 1, 1))
    assert len(warnings) == 2
    assert warnings[0].startswith("camera cam02: of 4 images, 2 without a camera time")
    assert "cam02/no_exif.jpg" in warnings[0]
    assert warnings[1].startswith("camera cam03: of 3 images, 1 with a time before 1990 (e.g. cam03/reset.jpg)")


def test_deployment_is_the_folder_or_its_first_folders() -> None:
    image = ImageResult("site1/cam03/day2/x.jpg", "/data/site1/cam03/day2/x.jpg", 1, 1)
    assert deployment_of(image) == "site1/cam03/day2"
    assert deployment_of(image, 2) == "site1/cam03"
    assert deployment_of(ImageResult("x.jpg", "/data/feeder/x.jpg", 1, 1)) == "feeder"
    with pytest.raises(InputError, match="--deployment-depth"):
        EventOptions(deployment_depth=0).validate()
    with pytest.raises(InputError, match="--event-gap"):
        EventOptions(gap_s=-1).validate()


def test_event_ids_count_from_one_in_time_order() -> None:
    times = [datetime(2024, 1, 1, 0, 0, s) for s in (40, 0, 20)]
    images = [ImageResult(f"{n}.jpg", f"/{n}.jpg", 1, 1) for n in "abc"]
    events = group_events("cam", zip(times, images, strict=True), gap_s=10)
    assert [(e.event_id, e.images[0].file) for e in events] == [("cam/0001", "b.jpg"), ("cam/0002", "c.jpg"),
                                                                ("cam/0003", "a.jpg")]  # fmt: skip


def test_each_image_is_measured_against_the_previous_one_not_the_first() -> None:
    times = [datetime(2024, 1, 1, 0, 0, 0) + timedelta(seconds=s) for s in (0, 50, 100, 150, 211)]
    images = [ImageResult(f"{n}.jpg", f"/{n}.jpg", 1, 1) for n in "abcde"]
    events = group_events("cam", zip(times, images, strict=True), gap_s=60)
    assert [[im.file for im in e.images] for e in events] == [["a.jpg", "b.jpg", "c.jpg", "d.jpg"], ["e.jpg"]]
    assert events[0].duration_s == 150.0


# -- through `birddet predict` ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("event_runs")
    torch.manual_seed(0)
    detector = build_detector(config_from_dict(_tiny_config()), CATEGORIES)
    return {
        "cams": make_cameras(base / "cams"),
        "ckpt": save_checkpoint(base / "plain.pt", detector),
        "classifier": write_tiny_classifier(base / "species.pt"),
    }


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _run(assets: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["predict", str(assets["ckpt"]), str(assets["cams"]), "--out", str(out), "--no-classifier",
                 "--workers", "0", "--batch-size", "2", "--device", "cpu", *extra])  # fmt: skip


def test_predict_writes_events_and_counts_the_photos_were_taken_in(
    run_assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    counting_detector(monkeypatch)
    out = tmp_path / "out"
    assert _run(run_assets, out) == 0

    events = _csv_rows(out / "events.csv")
    assert list(events[0]) == list(EVENTS_COLUMNS)
    assert {r["event_id"]: (r["first_image"], r["last_image"], int(r["n_images"])) for r in events} == {
        event: (files[0], files[-1], len(files)) for event, files in EXPECTED_EVENTS.items()
    }
    assert {r["event_id"]: int(r["max_count"]) for r in events} == expected_max_n()
    first = next(r for r in events if r["event_id"] == "cam01/0001")
    assert (first["deployment"], first["start"], first["end"], float(first["duration_s"])) == (
        "cam01", "2024-05-01T06:00:00", "2024-05-01T06:00:50", 50.0)  # fmt: skip
    assert (first["species"], first["category"], float(first["mean_score"])) == ("songbird", "songbird", 0.9)
    empty = next(r for r in events if r["event_id"] == "cam02/0001")
    assert (empty["species"], empty["max_count"], empty["start"]) == ("", "0", "2024-05-02T12:00:00+02:00")

    counts = _csv_rows(out / "counts.csv")
    assert [(r["deployment"], r["species"], r["events"], r["sum_max_count"], r["first_seen"]) for r in counts] == [
        ("cam01", "songbird", "2", "5", "2024-05-01T06:00:00"),
        ("cam02", "songbird", "1", "1", next(r["start"] for r in events if r["event_id"] == "cam02/0002")),
        ("cam03", "songbird", "3", "4", "1970-01-01T00:00:05"),
    ]

    # Every image carries its time, deployment and event in the per-image files.
    rows = _csv_rows(out / "predictions.csv")
    by_file = {r["file"]: r for r in rows}
    assert by_file["cam02/a.jpg"]["datetime"] == "2024-05-02T12:00:00+02:00"
    assert by_file["cam01/IMG_0002.JPG"]["datetime"] == "2024-05-01T06:00:00.250000"
    assert {by_file[f]["timestamp_source"] for f in ("cam02/no_exif.jpg", "cam02/broken_exif.jpg")} == {"mtime"}
    for event, files in EXPECTED_EVENTS.items():
        for f in files:
            assert (by_file[f]["event_id"], by_file[f]["deployment"]) == (event, event.split("/")[0])
    coco = json.loads((out / "coco.json").read_text())
    assert {im["file_name"]: im["event_id"] for im in coco["images"]} == {
        f: event for event, files in EXPECTED_EVENTS.items() for f in files
    }
    md = json.loads((out / "megadetector.json").read_text())
    assert {im["file"]: im["datetime"] for im in md["images"]}["cam03/reset.jpg"] == "1970-01-01T00:00:05"
    megadetector_validate(out / "megadetector.json")

    # One warning per camera with a bad clock, naming it.
    clock = [r.getMessage() for r in caplog.records if r.getMessage().startswith("camera ")]
    assert [line.split(":")[0] for line in clock] == ["camera cam02", "camera cam03"]


def test_event_gap_and_deployment_depth_options(
    run_assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting_detector(monkeypatch)
    out = tmp_path / "out"
    assert _run(run_assets, out, "--format", "csv") == 0
    assert "cam01/0002" in [r["event_id"] for r in _csv_rows(out / "events.csv")]
    # Another gap on a finished run: --resume regroups without running the detector again.
    calls = counting_detector(monkeypatch)
    assert _run(run_assets, out, "--event-gap", "300", "--format", "csv", "--resume") == 0
    assert calls == []
    ids = [r["event_id"] for r in _csv_rows(out / "events.csv")]
    assert ids.count("cam01/0001") == 1 and "cam01/0002" not in ids  # the second visit 250 s later joins
    assert _run(run_assets, tmp_path / "bad", "--event-gap", "-5") == 2
    assert _run(run_assets, tmp_path / "bad", "--deployment-depth", "0") == 2


def test_resume_after_a_crash_gives_the_events_of_a_clean_run(
    run_assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        counting_detector(m)
        assert _run(run_assets, tmp_path / "clean") == 0
    with monkeypatch.context() as m:
        counting_detector(m, fail_after=3)
        with pytest.raises(RuntimeError, match="injected crash"):
            _run(run_assets, tmp_path / "resumed", "--checkpoint-every", "1")
    progress = (tmp_path / "resumed" / "progress.jsonl").read_text().splitlines()[1:]
    assert 0 < len(progress) < len(SHOTS)
    assert all(json.loads(line)["datetime"] for line in progress)  # times are saved with each finished image
    calls = counting_detector(monkeypatch)
    assert _run(run_assets, tmp_path / "resumed", "--resume") == 0
    assert sum(calls) == len(SHOTS) - len(progress)
    for name in ("events.csv", "counts.csv", "predictions.csv"):
        assert (tmp_path / "resumed" / name).read_text() == (tmp_path / "clean" / name).read_text(), name


def test_two_torchrun_processes_give_the_events_of_one_process(run_assets: dict[str, Path], tmp_path: Path) -> None:
    args = ["--classifier", str(run_assets["classifier"]), "--conf", "0.0", "--classify-conf", "0.0", "--top-k", "2",
            "--batch-size", "1", "--workers", "0", "--device", "cpu"]  # fmt: skip
    one = tmp_path / "one"
    assert main(["predict", str(run_assets["ckpt"]), str(run_assets["cams"]), "--out", str(one), *args]) == 0
    two = tmp_path / "two"
    output = _torchrun({"ckpt": run_assets["ckpt"], "images": run_assets["cams"],
                        "classifier": run_assets["classifier"]}, two)  # fmt: skip
    assert "rank 1 of 2:" in output
    events = (one / "events.csv").read_text()
    assert len(_csv_rows(one / "events.csv")) >= len(EXPECTED_EVENTS)
    assert (two / "events.csv").read_text() == events
    assert (two / "counts.csv").read_text() == (one / "counts.csv").read_text()
