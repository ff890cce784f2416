"""`--format camtrap-dp`: a Camtrap DP 1.0 package that validates against the standard's table schemas.

The schemas in tests/data/camtrap_dp/ are the standard's (names, types, formats, vocabularies, keys); frictionless
validates the written tables against them offline, foreign keys included.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from camera_traps import EXPECTED_EVENTS, SHOTS, counting_detector, expected_max_n, make_cameras
from test_predict import CATEGORIES, _tiny_config
from test_species import write_tiny_classifier

from birddet.cli import main
from birddet.config import config_from_dict
from birddet.engine.checkpoint import save_checkpoint
from birddet.errors import InputError
from birddet.models.detector import build_detector
from birddet.pipeline.camtrap_dp import read_deployments

SCHEMAS = Path(__file__).parent / "data" / "camtrap_dp"
frictionless = pytest.importorskip("frictionless")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("camtrap")
    torch.manual_seed(0)
    detector = build_detector(config_from_dict(_tiny_config()), CATEGORIES)
    deployments = base / "deployments.csv"
    deployments.write_text(
        "deploymentID,latitude,longitude,locationName,cameraModel\n"
        "cam01,52.70442,23.84995,Feeder north,Reconyx-PC800\n"
        "cam02,52.71,23.85,Feeder south,\n"
        "cam03,52.69,23.80,Pond,\n",
        encoding="utf-8",
    )
    return {
        "cams": make_cameras(base / "cams"),
        "ckpt": save_checkpoint(base / "plain.pt", detector),
        "classifier": write_tiny_classifier(base / "species.pt"),
        "deployments": deployments,
    }


def _predict(assets: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["predict", str(assets["ckpt"]), str(assets["cams"]), "--out", str(out), "--classifier",
                 str(assets["classifier"]), "--classify-conf", "0.5", "--workers", "0", "--device", "cpu", *extra])  # fmt: skip


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _validate(package_dir: Path) -> frictionless.Report:
    """Validate the package's tables against the standard's schemas (local copies: tests run offline)."""
    descriptor = json.loads((package_dir / "datapackage.json").read_text())
    for resource in descriptor["resources"]:
        assert resource["schema"] == (
            f"https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0/{resource['name']}-table-schema.json"
        )
        resource["schema"] = json.loads((SCHEMAS / f"{resource['name']}-table-schema.json").read_text())
    package = frictionless.Package(
        {"resources": descriptor["resources"]}, basepath=str(package_dir)
    )  # the tables only: the profile's metadata schema refers to online schemas
    return package.validate()


def test_camtrap_dp_package_validates_and_holds_boxes_and_events(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting_detector(monkeypatch)
    out = tmp_path / "out"
    rc = _predict(assets, out, "--format", "csv,camtrap-dp", "--deployments", str(assets["deployments"]))
    assert rc == 0
    package = out / "camtrap-dp"
    report = _validate(package)
    assert report.valid, report.flatten(["rowNumber", "fieldName", "type", "note"])

    meta = json.loads((package / "datapackage.json").read_text())
    assert meta["profile"] == "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0/camtrap-dp-profile.json"
    assert {r["name"] for r in meta["resources"]} == {"deployments", "media", "observations"}
    assert meta["project"]["observationLevel"] == ["media", "event"]
    assert meta["spatial"]["bbox"] == [23.8, 52.69, 23.85, 52.71]
    assert meta["temporal"] == {"start": "1970-01-01", "end": "2024-05-03"}

    deployments = {r["deploymentID"]: r for r in _rows(package / "deployments.csv")}
    assert sorted(deployments) == ["cam01", "cam02", "cam03"]
    assert deployments["cam01"]["cameraModel"] == "Reconyx-PC800"
    assert {d: r["timestampIssues"] for d, r in deployments.items()} == {
        "cam01": "false", "cam02": "true", "cam03": "true"}  # fmt: skip
    assert deployments["cam02"]["deploymentStart"] == "2024-05-02T12:00:00+02:00"

    media = {r["mediaID"]: r for r in _rows(package / "media.csv")}
    assert sorted(media) == sorted(s.file for s in SHOTS)
    assert media["cam02/a.jpg"]["timestamp"] == "2024-05-02T12:00:00+02:00"
    assert media["cam01/IMG_0009.JPG"]["fileMediatype"] == "image/jpeg"

    observations = _rows(package / "observations.csv")
    boxes = [o for o in observations if o["observationLevel"] == "media" and o["observationType"] == "animal"]
    assert len(boxes) == sum(s.birds for s in SHOTS)
    assert {o["classificationMethod"] for o in boxes} == {"machine"}
    one = next(o for o in boxes if o["mediaID"] == "cam01/IMG_0009.JPG")  # 64 x 40 px, box (2, 4)-(14, 30)
    assert [float(one[k]) for k in ("bboxX", "bboxY", "bboxWidth", "bboxHeight")] == pytest.approx(
        [2 / 64, 4 / 40, 12 / 64, 26 / 40], abs=1e-6)  # fmt: skip
    blanks = {
        o["mediaID"] for o in observations if o["observationLevel"] == "media" and o["observationType"] == "blank"
    }
    assert blanks == {s.file for s in SHOTS if s.birds == 0}

    events = [o for o in observations if o["observationLevel"] == "event"]
    max_n = expected_max_n()
    assert {o["eventID"] for o in events} == set(EXPECTED_EVENTS)
    for o in events:
        if max_n[o["eventID"]] == 0:
            assert (o["observationType"], o["count"]) == ("blank", "")
        else:
            assert (o["observationType"], int(o["count"])) == ("animal", max_n[o["eventID"]])
            assert o["classifiedBy"] == str(assets["classifier"])
    # The event's species and MaxN are those of events.csv.
    csv_events = {r["event_id"]: r for r in _rows(out / "events.csv")}
    for o in events:
        if o["observationType"] == "animal" and o["scientificName"]:
            assert o["scientificName"] == csv_events[o["eventID"]]["species"]


def test_a_table_breaking_the_standard_fails_validation(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting_detector(monkeypatch)
    out = tmp_path / "out"
    assert _predict(assets, out, "--format", "camtrap-dp", "--deployments", str(assets["deployments"])) == 0
    media = out / "camtrap-dp" / "media.csv"
    media.write_text(media.read_text().replace("+02:00", ""))  # a timestamp without its offset
    assert not _validate(out / "camtrap-dp").valid


def test_camtrap_dp_needs_a_deployments_file_naming_every_camera(
    assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _predict(assets, tmp_path / "a", "--format", "camtrap-dp") == 2
    assert "--deployments" in capsys.readouterr().err
    partial = tmp_path / "partial.csv"
    partial.write_text("deploymentID,latitude,longitude\ncam01,1,2\n")
    assert _predict(assets, tmp_path / "b", "--format", "camtrap-dp", "--deployments", str(partial)) == 2
    assert "cam02, cam03" in capsys.readouterr().err
    assert not (tmp_path / "b" / "progress.jsonl").exists()  # refused before any image was read


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("deploymentID,latitude\ncam01,1\n", "no column longitude"),
        ("deploymentID,latitude,longitude,colour\ncam01,1,2,red\n", "colour are not Camtrap DP"),
        ("deploymentID,latitude,longitude\ncam01,91,2\n", "line 2: latitude '91'"),
        ("deploymentID,latitude,longitude\ncam01,north,2\n", "latitude 'north'"),
        ("deploymentID,latitude,longitude\ncam01,1,2\ncam01,1,2\n", "line 3: deploymentID 'cam01' is listed twice"),
    ],
)
def test_bad_deployments_files_are_refused_naming_the_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "d.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        read_deployments(path)


def test_people_and_vehicles_are_not_animals() -> None:
    from birddet.pipeline.camtrap_dp import camtrap_dp_texts
    from birddet.pipeline.events import EventOptions, build_events
    from birddet.pipeline.results import Detection, ImageResult

    dets = [Detection((1, 1, 5, 5), 0.9, 2, "person"), Detection((1, 1, 5, 5), 0.8, 1, "bird")]
    image = ImageResult("cam/a.jpg", "/x/cam/a.jpg", 10, 10, dets, datetime="2024-01-01T00:00:00+00:00")
    texts = camtrap_dp_texts(
        build_events([image], None, EventOptions()),
        {"cam": {"deploymentID": "cam", "latitude": "1", "longitude": "2"}},
        taxonomy=None,
        detector_name="det.pt",
        classifier_name=None,
    )
    rows = list(csv.DictReader(texts["camtrap-dp/observations.csv"].splitlines()))
    assert [(r["observationLevel"], r["observationType"]) for r in rows] == [
        ("media", "human"), ("media", "animal"), ("event", "animal"), ("event", "human")]  # fmt: skip
