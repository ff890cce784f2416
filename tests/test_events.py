"""Events from photo times: deployments, the time gap, one species per event (pooled, rolled up), MaxN."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from camera_traps import EXPECTED_EVENTS, SHOTS, expected_max_n, make_cameras

from birddet.errors import InputError
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
