"""`birddet check` and training's fail-fast validation: one report listing every problem of both splits, exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from PIL import Image

from birddet import cli
from birddet.data.check import check_split, check_training_splits
from birddet.errors import InputError


def _write_split(root: Path, name: str, anns: list[dict], images: list[dict] | None = None, make: bool = True) -> Path:
    images = images or [
        {"id": 1, "file_name": f"{name}1.png", "width": 96, "height": 64},
        {"id": 2, "file_name": f"{name}2.png", "width": 64, "height": 96},
    ]
    (root / "img").mkdir(parents=True, exist_ok=True)
    for img in images:
        if make and ".." not in img["file_name"]:
            Image.new("RGB", (img["width"], img["height"]), (90, 120, 60)).save(root / "img" / img["file_name"])
    path = root / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 3, "name": "tit"}]}))
    return path


def _ann(id_: int, bbox: list[float], image_id: int = 1, category_id: int = 3) -> dict:
    return {"id": id_, "image_id": image_id, "category_id": category_id, "bbox": bbox}


GOOD = [_ann(1, [10, 10, 30, 20]), _ann(2, [5, 40, 20, 30], image_id=2)]


def test_bad_val_box_is_fatal_but_the_same_box_in_train_is_a_warning(tmp_path):
    bad = [*GOOD, _ann(7, [10, 10, math.nan, 5])]
    ann = _write_split(tmp_path, "s", bad)
    as_val = check_split(ann, tmp_path / "img", role="val")
    assert not as_val.ok and "annotation ids [7]" in as_val.errors[0]
    as_train = check_split(ann, tmp_path / "img", role="train")
    assert as_train.ok and "annotation ids [7]" in as_train.warnings[0]
    assert as_train.report.num_annotations == 2


def test_training_validation_lists_every_problem_of_both_splits_in_one_error(tmp_path):
    train = _write_split(tmp_path, "train", [*GOOD, _ann(5, [1, 1, 10, 10], category_id=9)])
    (tmp_path / "img" / "train2.png").unlink()  # missing file
    val_images = [
        {"id": 1, "file_name": "val1.png", "width": 96, "height": 64},
        {"id": 2, "file_name": "../escape.png", "width": 64, "height": 96},
    ]
    val = _write_split(tmp_path, "val", [_ann(11, [500, 500, 10, 10]), _ann(12, [1, 1, 5, 5], image_id=2)], val_images)
    data = json.loads(val.read_text())
    data["categories"].append({"id": 8, "name": "wren"})
    data["annotations"].append(_ann(13, [1, 1, 5, 5], category_id=8))
    val.write_text(json.dumps(data))
    img = str(tmp_path / "img")
    with pytest.raises(InputError) as e:
        check_training_splits((str(train), img), (str(val), img))
    msg = str(e.value)
    assert "unknown category_id 9" in msg and "annotation id 5" in msg  # train: unknown category
    assert "not found" in msg and "train2.png" in msg  # train: missing file
    assert "escapes the image root" in msg and "2: '../escape.png'" in msg  # val: path escaping the root
    assert "far outside" in msg and "annotation ids [11]" in msg  # val: bad box
    assert "label map" in msg and "category_id 8 in annotation ids [13]" in msg  # val: category train lacks


def test_val_category_missing_from_train_is_fatal(tmp_path):
    train = _write_split(tmp_path, "train", GOOD)
    val_path = _write_split(tmp_path, "val", [_ann(4, [1, 1, 10, 10], category_id=8)])
    data = json.loads(val_path.read_text())
    data["categories"].append({"id": 8, "name": "wren"})
    val_path.write_text(json.dumps(data))
    img = str(tmp_path / "img")
    with pytest.raises(InputError, match=r"categories unknown to the model's label map .*category_id 8 .*\[4\]"):
        check_training_splits((str(train), img), (str(val_path), img))


def test_check_reads_headers_for_unreadable_and_wrongly_sized_images(tmp_path):
    ann = _write_split(tmp_path, "s", GOOD)
    (tmp_path / "img" / "s2.png").write_bytes(b"not a png at all")
    data = json.loads(ann.read_text())
    data["images"][0]["width"] = 200  # JSON says 200x64, the file is 96x64
    ann.write_text(json.dumps(data))
    check = check_split(ann, tmp_path / "img", role="train", read_headers=True)
    assert check.ok
    text = "\n".join(check.warnings)
    assert "unreadable" in text and "s2.png" in text
    assert "s1.png is 96x64, JSON 200x64" in text
    assert not check_split(ann, tmp_path / "img", role="val", read_headers=True).ok


def test_check_command_prints_the_report_and_exits_2_when_fatal(tmp_path, capsys):
    ann = _write_split(tmp_path, "s", [*GOOD, _ann(7, [10, 10, -4, 5])])
    code = cli.main(["check", str(ann), "--images", str(tmp_path / "img")])
    out, err = capsys.readouterr()
    assert code == 2
    assert "2 images" in out and "FATAL" in out and "annotation ids [7]" in out and "tit: 2" in out
    assert err.count("\n") == 1 and "1 fatal problem(s)" in err and "Traceback" not in err
    assert cli.main(["check", str(ann), "--images", str(tmp_path / "img"), "--role", "train"]) == 0
    assert "warning" in capsys.readouterr().out


def _tiny_yaml(tmp_path: Path, train: Path, val: Path) -> Path:
    cfg = {
        "model": {
            "backbone": {"preset": "vit_reg4_tiny16_rms_avg"},
            "pyramid": {"out_channels": 32, "scale_factors": [1.0, 0.5]},
            "rpn": {"anchor_sizes": [16, 32, 64]},
            "roi_heads": {"representation_size": 32},
            "image_size": 96,
        },
        "data": {
            "train": {"ann": str(train), "images": str(tmp_path / "img")},
            "val": {"ann": str(val), "images": str(tmp_path / "img")},
            "workers": 0,
        },
        "train": {"epochs": 1, "batch_size": 2, "device": "cpu"},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_bad_val_box_stops_train_with_exit_2_before_step_1(tmp_path, capsys):
    train = _write_split(tmp_path, "train", GOOD)
    val = _write_split(tmp_path, "val", [_ann(21, [10, 10, 20, 20]), _ann(22, [30, 5, 0, 10], image_id=2)])
    run = tmp_path / "run"
    code = cli.main(["train", str(_tiny_yaml(tmp_path, train, val)), "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2
    assert "annotation ids [22]" in err and "val.json" in err and "width or height <= 0" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (run / "metrics.jsonl").exists() and not (run / "last.pt").exists()  # nothing ran
