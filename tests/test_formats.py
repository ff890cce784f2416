"""`birddet convert voc|yolo|csv|predictions`: hand-made inputs with each quirk, exact round trips, bad-input exits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from PIL import Image

from birddet import cli
from birddet.data.coco import load_coco_dataset
from birddet.data.formats.csv import convert_csv, write_csv
from birddet.data.formats.predictions import convert_predictions
from birddet.data.formats.voc import convert_voc, write_voc
from birddet.data.formats.yolo import convert_yolo, write_yolo


def _img(path: Path, size: tuple[int, int], orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, (100, 140, 90))
    if orientation is None:
        im.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(path, exif=exif)
    return path


def _voc_xml(path: Path, filename: str, size: tuple[int, int] | None, objects: list[tuple]) -> None:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for n, x1, y1, x2, y2, d in objects
    )
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><filename>{filename}</filename><path>/home/x/{filename}</path>{size_xml}{objs}</annotation>"
    )


def _by_file(data: dict) -> dict[str, list[tuple[str, list[float], int]]]:
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {img["id"]: img["file_name"] for img in data["images"]}
    out: dict[str, list] = {f: [] for f in files.values()}
    for a in data["annotations"]:
        out[files[a["image_id"]]].append((names[a["category_id"]], a["bbox"], a.get("iscrowd", 0)))
    return {k: sorted(v, key=lambda t: t[1]) for k, v in out.items()}


def _assert_same_boxes(a: dict, b: dict, tol: float = 1e-6, crowd: bool = True) -> None:
    fa, fb = _by_file(a), _by_file(b)
    assert sorted(fa) == sorted(fb)
    for f in fa:
        want = [t for t in fa[f] if crowd or not t[2]]
        assert len(want) == len(fb[f]), f
        for (n1, b1, c1), (n2, b2, c2) in zip(want, fb[f]):
            assert n1 == n2 and (c1 == c2 or not crowd)
            assert b2 == pytest.approx(b1, abs=tol)


# -- VOC -------------------------------------------------------------------------------------------------------------


def test_voc_quirks_one_based_difficult_exif_size_clip_and_skips(tmp_path):
    src = tmp_path / "voc"
    _img(src / "a.jpg", (96, 64))
    _voc_xml(src / "a.xml", "a.jpg", (96, 64), [("robin", 11, 21, 40, 50, 0), ("wren", 1, 1, 10, 10, 1)])
    # EXIF orientation 6: stored 80x48, displayed 48x80; the XML's <size> is wrong (100x100)
    _img(src / "sub" / "rot.jpg", (80, 48), orientation=6)
    _voc_xml(src / "sub" / "rot.xml", "rot.jpg", (100, 100), [("robin", 5, 5, 30, 70, 0)])
    # stored 80x48 with rotation, but the labeller's tool ignored EXIF: <size> is the stored size
    _img(src / "raw.jpg", (80, 48), orientation=6)
    _voc_xml(src / "raw.xml", "raw", (80, 48), [("robin", 5, 5, 70, 30, 0)])  # no extension in <filename>
    _img(src / "edge.png", (50, 40))
    _voc_xml(src / "edge.xml", "edge.png", None, [("robin", 0, 2, 51, 40, 0), ("robin", 10, 10, 200, 20, 0)])
    (src / "broken.xml").write_text("<annotation><filename>")
    _voc_xml(src / "ghost.xml", "ghost.jpg", (10, 10), [])

    result = convert_voc(src, tmp_path / "out.json")
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["info"]["image_root"] == str(src.absolute()) and result.image_root == src.absolute()
    assert [c["name"] for c in data["categories"]] == ["robin", "wren"]
    sizes = {img["file_name"]: (img["width"], img["height"]) for img in data["images"]}
    # raw.jpg's boxes were drawn on the stored pixels: mapped into the displayed (portrait) image, as every record is
    assert sizes == {"a.jpg": (96, 64), "sub/rot.jpg": (48, 80), "raw.jpg": (48, 80), "edge.png": (50, 40)}
    boxes = _by_file(data)
    assert boxes["a.jpg"] == [("wren", [0.0, 0.0, 10.0, 10.0], 1), ("robin", [10.0, 20.0, 30.0, 30.0], 0)]
    assert boxes["raw.jpg"] == [("robin", [18.0, 4.0, 26.0, 66.0], 0)]  # stored (4, 4)-(70, 30), turned 90 deg CW
    assert boxes["sub/rot.jpg"] == [("robin", [4.0, 4.0, 26.0, 66.0], 0)]
    assert boxes["edge.png"] == [("robin", [0.0, 1.0, 50.0, 39.0], 0)]  # (-1, 1)-(51, 40) clipped; 2nd dropped
    text = result.summary()
    assert "broken.xml" in text and "ghost.jpg" in text
    assert "rot.xml: <size> 100x100, image 48x80" in text and "edge.xml: no <size>" in text
    assert "far outside" in text and "edge.xml object 2" in text
    assert "clipped" in text and "edge.xml object 1" in text
    load_coco_dataset(tmp_path / "out.json", src)  # trains as is


def test_voc_round_trip_keeps_boxes_and_difficult(tmp_path):
    coco = {
        "images": [
            {"id": 1, "file_name": "x/p1.png", "width": 160, "height": 90},
            {"id": 2, "file_name": "p2.png", "width": 60, "height": 120},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 4, "bbox": [10.25, 3.5, 40.125, 20.75], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0.0, 0.0, 160.0, 90.0], "iscrowd": 1},
            {"id": 3, "image_id": 2, "category_id": 4, "bbox": [1.0, 2.0, 3.0, 4.0], "iscrowd": 0},
        ],
        "categories": [{"id": 4, "name": "owl"}, {"id": 7, "name": "tern"}],
    }
    for img in coco["images"]:
        _img(tmp_path / "img" / img["file_name"], (img["width"], img["height"]))
    write_voc(coco, tmp_path / "xml")
    convert_voc(tmp_path / "xml", tmp_path / "back.json", tmp_path / "img")
    _assert_same_boxes(coco, json.loads((tmp_path / "back.json").read_text()))


# -- YOLO ------------------------------------------------------------------------------------------------------------


def test_yolo_roboflow_layout_list_names_segments_and_negatives(tmp_path):
    ds = tmp_path / "rf"
    for split, n in (("train", 3), ("valid", 1)):
        for i in range(n):
            _img(ds / split / "images" / f"{split}{i}.jpg", (200, 100))
    (ds / "train" / "labels").mkdir(parents=True)
    (ds / "train" / "labels" / "train0.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.3 0.1 0.2 0.3\n")
    (ds / "train" / "labels" / "train1.txt").write_text("")  # empty: negative
    # train2 has no label file: negative
    (ds / "valid" / "labels").mkdir(parents=True)
    (ds / "valid" / "labels" / "valid0.txt").write_text("1 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n0 0.5 0.5\n")
    spec = {"train": "../train/images", "val": "../valid/images", "nc": 2, "names": ["gull", "tern"]}
    (ds / "data.yaml").write_text(yaml.safe_dump(spec))

    results = convert_yolo(ds, tmp_path / "out")
    assert set(results) == {"train", "val"}
    train = json.loads((tmp_path / "out" / "train.json").read_text())
    assert train["info"]["image_root"] == str(ds.absolute())
    assert [c["name"] for c in train["categories"]] == ["gull", "tern"]
    assert {img["file_name"] for img in train["images"]} == {f"train/images/train{i}.jpg" for i in range(3)}
    boxes = _by_file(train)
    assert boxes["train/images/train0.jpg"] == [
        ("tern", [pytest.approx(20.0), pytest.approx(10.0), pytest.approx(40.0), pytest.approx(20.0)], 0),
        ("gull", [pytest.approx(80.0), pytest.approx(30.0), pytest.approx(40.0), pytest.approx(40.0)], 0),
    ]
    assert boxes["train/images/train1.jpg"] == [] and boxes["train/images/train2.jpg"] == []
    assert results["train"].num_negative == 2 and "train2.jpg" in results["train"].summary()
    val = results["val"]
    assert val.num_annotations == 1 and "valid0.txt line 2" in val.summary() and "valid0.txt line 3" in val.summary()


def test_yolo_ultralytics_layout_with_path_and_dict_names(tmp_path):
    root = tmp_path / "datasets" / "birds"
    _img(root / "images" / "train" / "a.png", (64, 128))
    _img(root / "images" / "val" / "b.png", (128, 64))
    _img(root / "images" / "train" / "rot.jpg", (120, 60), orientation=8)  # stored 120x60, displayed 60x120
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "rot.txt").write_text("0 0.5 0.25 0.5 0.1\n")  # normalised to the displayed image
    (root / "labels" / "train" / "a.txt").write_text("0 0.25 0.25 0.5 0.25\n")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "birds.yaml").write_text(
        yaml.safe_dump(
            {"path": "../datasets/birds", "train": "images/train", "val": "images/val", "names": {0: "kite"}}
        )
    )
    results = convert_yolo(cfg / "birds.yaml", tmp_path / "out")
    train = json.loads((tmp_path / "out" / "train.json").read_text())
    assert train["info"]["image_root"] == str(root.absolute()) or Path(train["info"]["image_root"]).resolve() == root
    assert _by_file(train)["images/train/a.png"] == [("kite", [0.0, 16.0, 32.0, 32.0], 0)]
    rot = next(img for img in train["images"] if img["file_name"] == "images/train/rot.jpg")
    assert (rot["width"], rot["height"]) == (60, 120)
    assert _by_file(train)["images/train/rot.jpg"] == [("kite", [15.0, 24.0, 30.0, 12.0], 0)]
    assert results["val"].num_images == 1 and results["val"].num_negative == 1


def test_yolo_round_trip_to_1e_6(tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "s/a.png", "width": 1280, "height": 720},
                   {"id": 2, "file_name": "b.png", "width": 500, "height": 1500}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 2, "bbox": [100.123, 50.5, 300.25, 200.75]},
            {"id": 2, "image_id": 2, "category_id": 9, "bbox": [0.0, 1.0, 499.0, 10.0]},
        ],
        "categories": [{"id": 2, "name": "heron"}, {"id": 9, "name": "egret"}],
    }  # fmt: skip
    for img in coco["images"]:
        _img(tmp_path / "img" / img["file_name"], (img["width"], img["height"]))
    ds = tmp_path / "yolo"
    write_yolo(coco, tmp_path / "img", ds, "train")
    (ds / "data.yaml").write_text(yaml.safe_dump({"train": "train/images", "names": ["heron", "egret"]}))
    convert_yolo(ds / "data.yaml", tmp_path / "out")
    back = json.loads((tmp_path / "out" / "train.json").read_text())
    flat = {img["id"]: img["file_name"].replace("/", "__") for img in coco["images"]}
    renamed = {**coco, "images": [{**img, "file_name": f"train/images/{flat[img['id']]}"} for img in coco["images"]]}
    _assert_same_boxes(renamed, back)


# -- CSV -------------------------------------------------------------------------------------------------------------


def test_csv_any_column_order_negatives_and_column_flag(tmp_path):
    root = tmp_path / "img"
    _img(root / "a.jpg", (300, 200))
    _img(root / "b.jpg", (300, 200))
    _img(root / "tiles" / "c.jpg", (100, 100))
    (tmp_path / "t.csv").write_text(
        "label,xmax,image_path,ymin,xmin,ymax,score\n"
        "Bird,50,a.jpg,20,10,60,0.9\n"
        "Bird,301.5,a.jpg,100,250,150,0.9\n"  # 1.5 px outside: clipped
        ",0,b.jpg,0,0,0,\n"  # negative
        "Bird,30,tiles/c.jpg,5,5,nan,1\n"  # NaN: dropped
        "Bird,30,missing.jpg,5,5,30,1\n"
    )
    result = convert_csv(tmp_path / "t.csv", root, tmp_path / "out.json")
    data = json.loads((tmp_path / "out.json").read_text())
    boxes = _by_file(data)
    assert boxes["a.jpg"] == [("Bird", [10.0, 20.0, 40.0, 40.0], 0), ("Bird", [250.0, 100.0, 50.0, 50.0], 0)]
    assert boxes["b.jpg"] == [] and boxes["tiles/c.jpg"] == []
    assert result.num_negative == 2
    text = result.summary()
    assert "missing.jpg" in text and "t.csv line 5" in text and "t.csv line 3" in text

    (tmp_path / "u.csv").write_text("file,x1,y1,x2,y2,species\na.jpg,1,2,3,4,Gull\n")
    mapping = {"image_path": "file", "xmin": "x1", "ymin": "y1", "xmax": "x2", "ymax": "y2", "label": "species"}
    convert_csv(tmp_path / "u.csv", root, tmp_path / "u.json", columns=mapping)
    assert _by_file(json.loads((tmp_path / "u.json").read_text()))["a.jpg"] == [("Gull", [1.0, 2.0, 2.0, 2.0], 0)]


def test_csv_round_trip_to_1e_6(tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "a b,c.png", "width": 640, "height": 480},
                   {"id": 2, "file_name": "neg.png", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1.0 / 3, 2.5, 100.0 / 7, 50.0]}],
        "categories": [{"id": 3, "name": "common tern"}],
    }  # fmt: skip
    for img in coco["images"]:
        _img(tmp_path / "img" / img["file_name"], (img["width"], img["height"]))
    write_csv(coco, tmp_path / "t.csv")
    convert_csv(tmp_path / "t.csv", tmp_path / "img", tmp_path / "back.json")
    _assert_same_boxes(coco, json.loads((tmp_path / "back.json").read_text()))


# -- predictions -----------------------------------------------------------------------------------------------------


def _pred_file(path: Path) -> Path:
    data = {
        "info": {"description": "birddet predictions"},
        "images": [
            {"id": 1, "file_name": "cam1/a.jpg", "width": 100, "height": 100},
            {"id": 2, "file_name": "new.jpg", "width": 50, "height": 50},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},  # overlaps GT
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 60, 20, 20], "score": 0.8},  # kept
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [60, 10, 20, 20], "score": 0.2},  # below score
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10], "score": 0.7},  # new image
        ],
        "categories": [{"id": 1, "name": "bird"}],
    }
    path.mkdir(parents=True)
    (path / "coco.json").write_text(json.dumps(data))
    return path


def test_predictions_become_labels_and_ground_truth_wins(tmp_path):
    pred = _pred_file(tmp_path / "pred")
    gt = {
        "info": {"image_root": "/data/birds"},
        "images": [{"id": 5, "file_name": "a.jpg", "width": 100, "height": 100}],
        "annotations": [{"id": 40, "image_id": 5, "category_id": 3, "bbox": [11, 11, 20, 19], "iscrowd": 0}],
        "categories": [{"id": 3, "name": "bird"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    r = convert_predictions(pred, tmp_path / "out.json", min_score=0.5, merge=tmp_path / "gt.json")
    assert (r["kept"], r["below_score"], r["overlap_gt"], r["new_images"]) == (2, 1, 1, 1)
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["info"]["image_root"] == "/data/birds"
    assert out["categories"] == [{"id": 3, "name": "bird"}]
    by_id = {a["id"]: a for a in out["annotations"]}
    assert by_id[40]["bbox"] == [11, 11, 20, 19]  # ground truth unchanged
    a_boxes = [a["bbox"] for a in out["annotations"] if a["image_id"] == 5]
    assert sorted(a_boxes) == [[11, 11, 20, 19], [60.0, 60.0, 20.0, 20.0]]
    new = next(i for i in out["images"] if i["file_name"] == "new.jpg")
    assert new["id"] == 6 and all(a["id"] > 40 for a in out["annotations"] if a["id"] != 40)
    assert all("score" not in a for a in out["annotations"]) and by_id[41]["pseudo_score"] == pytest.approx(0.8)
    load_coco_dataset(tmp_path / "out.json", ".", check_files=False)  # a valid training file


# -- bad input through the CLI ---------------------------------------------------------------------------------------


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("setup", "argv", "expect"),
    [
        (None, ["convert", "voc", "{t}/nope", "--out", "{t}/o.json"], "VOC annotation folder not found"),
        ("empty_dir", ["convert", "voc", "{t}/d", "--out", "{t}/o.json"], "no .xml files found"),
        ("yaml_no_names", ["convert", "yolo", "{t}/d", "--out", "{t}/o"], "'names' is missing"),
        ("yaml_gap", ["convert", "yolo", "{t}/d/data.yaml", "--out", "{t}/o"], "without gaps"),
        ("yaml_missing_split", ["convert", "yolo", "{t}/d", "--out", "{t}/o"], "train: images/train not found"),
        ("csv_no_label", ["convert", "csv", "{t}/d/t.csv", "--images", "{t}/d", "--out", "{t}/o.json"], "label"),
        (
            "csv_ok",
            ["convert", "csv", "{t}/d/t.csv", "--images", "{t}/d", "--out", "{t}/o.json", "--columns", "x=y"],
            "each item must be COLUMN=NAME",
        ),
        (
            "csv_escape",
            ["convert", "csv", "{t}/d/t.csv", "--images", "{t}/d/in", "--out", "{t}/o.json"],
            "outside the image root",
        ),
        (
            "gt",
            ["convert", "predictions", "{t}/d/gt.json", "--min-score", "0.5", "--out", "{t}/o.json"],
            "not prediction output",
        ),
        ("gt", ["convert", "predictions", "{t}/d", "--min-score", "2", "--out", "{t}/o.json"], "--min-score"),
        ("gt", ["split", "{t}/d/gt.json", "--val", "0", "--out", "{t}/s"], "--val must be above 0"),
        ("gt", ["split", "{t}/d/gt.json", "--val", "0.5", "--test", "0.5", "--out", "{t}/s"], "nothing to train"),
        ("gt", ["split", "{t}/d/gt.json", "--val", "0.2", "--group-by", "(", "--out", "{t}/s"], "regular expression"),
        ("bad_gt", ["split", "{t}/d/gt.json", "--val", "0.2", "--out", "{t}/s"], "unknown category_id 9"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, setup, argv, expect):
    d = tmp_path / "d"
    d.mkdir()
    if setup == "yaml_no_names":
        (d / "data.yaml").write_text("train: images\n")
    elif setup == "yaml_gap":
        (d / "data.yaml").write_text("train: images\nnames: {0: a, 2: b}\n")
    elif setup == "yaml_missing_split":
        (d / "data.yaml").write_text("train: images/train\nnames: [a]\n")
    elif setup == "csv_no_label":
        (d / "t.csv").write_text("image_path,xmin,ymin,xmax,ymax\na.jpg,1,1,2,2\n")
    elif setup == "csv_ok":
        (d / "t.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\n")
    elif setup == "csv_escape":
        _img(d / "a.jpg", (10, 10))
        (d / "in").mkdir()
        (d / "t.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\n../a.jpg,1,1,2,2,b\n")
    elif setup in ("gt", "bad_gt"):
        cat = 9 if setup == "bad_gt" else 1
        images = [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in range(1, 5)]
        anns = [{"id": 1, "image_id": 1, "category_id": cat, "bbox": [1, 1, 2, 2]}]
        (d / "gt.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "b"}]})
        )
        (d / "coco.json").write_text((d / "gt.json").read_text())
    code, _, err = _cli([a.format(t=tmp_path) for a in argv], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert expect in err


def test_convert_prints_the_image_root_that_train_needs(tmp_path, capsys):
    _img(tmp_path / "img" / "a.jpg", (40, 30))
    (tmp_path / "t.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\na.jpg,1,2,30,20,bird\n")
    code, out, _ = _cli(["convert", "csv", str(tmp_path / "t.csv"), "--images", str(tmp_path / "img"),
                         "--out", str(tmp_path / "o.json")], capsys)  # fmt: skip
    assert code == 0 and f"image root: {(tmp_path / 'img').absolute()}" in out
    assert f"data.train.images={(tmp_path / 'img').absolute()}" in out
    assert not math.isnan(json.loads((tmp_path / "o.json").read_text())["annotations"][0]["area"])
