"""Categories are matched by name wherever a model's categories meet a file's (issue 18, items 2 and 6).

Files converted separately number their classes in their own order, so train `{1: gull, 2: robin, 3: wren}` and
val `{1: robin, 2: wren}` must train and score robin as robin, and a val category the model never saw must stop the
run with both maps in the message. Category id 0 is a category like any other (never torchvision's background).

Known detections come from a stub `FasterRCNN.forward` that recognises each image by its solid colour and returns
its ground-truth boxes under the model's label for the box's category *name*, computed here independently of the
code under test: then a correct pipeline scores AP50 = 1 and any id mix-up scores less.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torchvision.models.detection import FasterRCNN

from birddet.cli import main
from birddet.data.check import check_split, check_training_splits
from birddet.data.coco import CategoryMap, CocoDetection, align_categories
from birddet.engine.checkpoint import save_checkpoint
from birddet.engine.trainer import train
from birddet.errors import InputError
from birddet.models.detector import build_detector

MODEL = {1: "gull", 2: "robin", 3: "wren"}
# name, width, height: 16:9 landscape, 9:16 portrait and 4:3, each a solid grey of level 40 * (index + 1)
IMAGES = [("land.png", 160, 90), ("portrait.png", 72, 128), ("four3.png", 120, 90)]
# per image: (category name, xywh box in original pixels)
BOXES = [
    [("robin", [10, 8, 60, 50]), ("wren", [90, 20, 60, 60])],
    [("wren", [6, 10, 50, 40]), ("robin", [10, 60, 55, 60])],
    [("gull", [20, 15, 70, 60])],
]


def _tiny_config() -> Any:
    from test_trainer import tiny_config

    return tiny_config(None)


def _write_images(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for k, (name, w, h) in enumerate(IMAGES):
        Image.new("RGB", (w, h), (40 * (k + 1),) * 3).save(root / name)
    return root


def _write_split(
    path: Path, categories: dict[int, str], *, skip: tuple[str, ...] = (), rename: dict[str, str] | None = None
) -> Path:
    """The three images with their boxes, numbered with `categories`; boxes of names in `skip` are left out, and
    `rename` relabels boxes (`{"wren": "heron"}`)."""
    ids = {name: cid for cid, name in categories.items()}
    images = [{"id": 10 + k, "file_name": n, "width": w, "height": h} for k, (n, w, h) in enumerate(IMAGES)]
    anns = []
    for k, boxes in enumerate(BOXES):
        for name, box in boxes:
            if name not in skip:
                cid = ids[(rename or {}).get(name, name)]
                anns.append({"id": len(anns) + 1, "image_id": 10 + k, "category_id": cid, "bbox": box,
                             "area": box[2] * box[3], "iscrowd": 0})  # fmt: skip
    cats = [{"id": cid, "name": name} for cid, name in categories.items()]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _stub_detector(monkeypatch: pytest.MonkeyPatch, model_categories: dict[int, str]) -> None:
    """Every image's ground-truth boxes under the model's label for their name (label = rank of the id + 1)."""
    label_of = {name: rank + 1 for rank, (_, name) in enumerate(sorted(model_categories.items()))}

    def forward(self: FasterRCNN, images: list[torch.Tensor], targets: Any = None) -> list[dict[str, torch.Tensor]]:
        outs = []
        for img in images:
            level = float(img[0, 0, 0]) * (255.0 if img.dtype.is_floating_point else 1.0)
            k = round(level / 40) - 1
            _, w, h = IMAGES[k]
            sx, sy = img.shape[-1] / w, img.shape[-2] / h
            boxes = [[x * sx, y * sy, (x + bw) * sx, (y + bh) * sy] for _, (x, y, bw, bh) in BOXES[k]]
            outs.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "labels": torch.tensor([label_of[name] for name, _ in BOXES[k]], dtype=torch.int64),
                    "scores": torch.full((len(boxes),), 0.9),
                }
            )
        return outs

    monkeypatch.setattr(FasterRCNN, "forward", forward)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_images(tmp_path_factory.mktemp("names") / "images")


# -- the alignment rule ----------------------------------------------------------------------------------------------
def test_renumbered_names_map_by_name_and_model_only_categories_are_unscored():
    a = align_categories(MODEL, {1: "Robin", 2: "wren"})
    assert a.to_dataset == {2: 1, 3: 2} and a.unscored == {1: "gull"}
    assert [a.label(1), a.label(2)] == [2, 3]  # training labels follow the name
    results = [{"image_id": 1, "category_id": c, "bbox": [0, 0, 1, 1], "score": 0.5} for c in (1, 2, 3)]
    assert [r["category_id"] for r in a.dataset_results(results)] == [1, 2]  # gull left out, robin 2 -> 1


def test_a_used_unknown_name_lists_both_maps_an_unused_one_is_fine():
    with pytest.raises(InputError) as e:
        align_categories(MODEL, {1: "robin", 2: "heron"}, used={1, 2}, model_source="the checkpoint c.pt")
    msg = str(e.value)
    assert "2 ('heron')" in msg and "{1: 'gull', 2: 'robin', 3: 'wren'}" in msg and "{1: 'robin', 2: 'heron'}" in msg
    assert align_categories(MODEL, {1: "robin", 2: "heron"}, used={1}).to_dataset == {2: 1}


def test_two_categories_with_one_name_are_an_error():
    with pytest.raises(InputError, match=r"categories 1 \('Robin'\) and 4 \('robin'\) have the same name"):
        align_categories(MODEL, {1: "Robin", 4: "robin"}, used=set())


def test_birddet_check_reports_two_categories_with_one_name(images, tmp_path):
    ann = _write_split(tmp_path / "dup.json", {1: "gull", 2: "robin", 3: "wren"})
    data = json.loads(ann.read_text())
    data["categories"].append({"id": 4, "name": "Robin"})
    ann.write_text(json.dumps(data))
    check = check_split(ann, images, role="train")
    assert not check.ok and "categories 2 ('robin') and 4 ('Robin') have the same name" in check.errors[0]
    with pytest.raises(InputError, match="have the same name"):
        check_training_splits((str(ann), str(images)), (str(ann), str(images)))


# -- training: check, labels, run vs eval ----------------------------------------------------------------------------
def test_val_numbered_by_its_own_sorted_names_passes_and_an_unknown_name_is_fatal(images, tmp_path):
    train_ann = _write_split(tmp_path / "train.json", MODEL)
    val_ann = _write_split(tmp_path / "val.json", {1: "robin", 2: "wren"}, skip=("gull",))
    check_training_splits((str(train_ann), str(images)), (str(val_ann), str(images)))
    heron = _write_split(tmp_path / "heron.json", {1: "robin", 2: "heron"}, skip=("gull",), rename={"wren": "heron"})
    with pytest.raises(InputError) as e:  # ids 1 and 2 exist in train, but 2 is a heron there, not a robin
        check_training_splits((str(train_ann), str(images)), (str(heron), str(images)))
    msg = str(e.value)
    assert "2 ('heron')" in msg and "{1: 'gull', 2: 'robin', 3: 'wren'}" in msg and "annotation ids [2, 3]" in msg


def test_training_labels_follow_the_name_when_a_file_numbers_differently(images, tmp_path):
    other = _write_split(tmp_path / "train.json", {1: "wren", 2: "gull", 3: "robin"})  # a resumed run's new file
    ds = CocoDetection(other, images, category_map=CategoryMap.from_dict(MODEL))
    label = {"gull": 1, "robin": 2, "wren": 3}  # the model's labels: its ids in order
    for index, boxes in enumerate(BOXES):
        _, target = ds[index]
        assert target["labels"].tolist() == [label[name] for name, _ in boxes]  # old code: by id, wren as gull


def test_eval_writes_the_val_files_ids_by_name_and_leaves_out_model_only_categories(
    images, tmp_path, monkeypatch, caplog, capsys
):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "det.pt", build_detector(_tiny_config(), MODEL))
    val_ann = _write_split(tmp_path / "val.json", {1: "robin", 2: "wren"}, skip=("gull",))
    _stub_detector(monkeypatch, MODEL)  # also boxes a gull on the third image: a category val lacks
    out = tmp_path / "eval"
    argv = ["eval", str(ckpt), "--ann", str(val_ann), "--images", str(images), "--out", str(out)]
    with caplog.at_level(logging.INFO):
        assert main([*argv, "--workers", "0", "--no-plots", "--device", "cpu"]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    val = json.loads(val_ann.read_text())
    truth = sorted((a["image_id"], a["category_id"]) for a in val["annotations"])
    assert sorted((r["image_id"], r["category_id"]) for r in results) == truth
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stats"]["AP50"] == pytest.approx(1.0)  # old code: robin written as 2 (wren in val), AP 0
    assert "gull" in caplog.text and "left out of scoring" in caplog.text


def test_run_metrics_equal_eval_of_best_pt_on_a_renumbered_val(images, tmp_path, capsys):
    cfg = _tiny_config()
    cfg.train.epochs, cfg.train.batch_size, cfg.train.eval_batch_size = 1, 2, 2
    cfg.data.train.ann = str(_write_split(tmp_path / "train.json", MODEL))
    cfg.data.val.ann = str(_write_split(tmp_path / "val.json", {1: "robin", 2: "wren"}, skip=("gull",)))
    cfg.data.train.images = cfg.data.val.images = str(images)
    cfg.model.roi_heads.score_thresh = 0.0  # an untrained model: keep every box so there is something to score
    run = tmp_path / "run"
    train(cfg, run)
    out = tmp_path / "eval"
    argv = ["eval", str(run / "best.pt"), "--ann", cfg.data.val.ann, "--images", str(images), "--out", str(out)]
    assert main([*argv, "--workers", "0", "--no-plots", "--device", "cpu"]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 2}
    run_metrics = json.loads((run / "metrics.json").read_text())
    eval_metrics = json.loads((out / "metrics.json").read_text())
    assert eval_metrics["stats"] == run_metrics["stats"]
    assert eval_metrics["per_class"] == run_metrics["per_class"]
    assert [r["name"] for r in eval_metrics["per_class"]] == ["robin", "wren"]


# -- category id 0 ---------------------------------------------------------------------------------------------------
def test_category_id_0_is_label_1_never_background():
    det = build_detector(_tiny_config(), {0: "gull", 1: "robin"})
    assert [det.category_to_label(0), det.category_to_label(1)] == [1, 2]
    with pytest.raises(InputError):
        det.category_to_label(2)


def test_category_id_0_trains_scores_and_predicts_as_0(images, tmp_path, monkeypatch, capsys):
    zero_based = {0: "gull", 1: "robin", 2: "wren"}
    ann = str(_write_split(tmp_path / "zero.json", zero_based))
    cfg = _tiny_config()
    cfg.train.epochs, cfg.train.max_steps, cfg.train.batch_size = 1, 2, 2
    cfg.data.train.ann = cfg.data.val.ann = ann
    cfg.data.train.images = cfg.data.val.images = str(images)
    run = tmp_path / "run"
    train(cfg, run)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["categories"] == zero_based
    ds = CocoDetection(ann, images, category_map=CategoryMap.from_dict(zero_based))
    assert ds[2][1]["labels"].tolist() == [1]  # the gull box (category 0) trains as label 1

    _stub_detector(monkeypatch, zero_based)
    out = tmp_path / "eval"
    argv = ["eval", str(run / "best.pt"), "--ann", ann, "--images", str(images), "--out", str(out)]
    assert main([*argv, "--workers", "0", "--no-plots", "--device", "cpu"]) == 0, capsys.readouterr().err
    per_class = {r["category_id"]: r for r in json.loads((out / "metrics.json").read_text())["per_class"]}
    assert per_class[0]["name"] == "gull" and per_class[0]["num_gt"] == 1
    assert per_class[0]["AP50"] == pytest.approx(1.0)
    assert any(r["category_id"] == 0 for r in json.loads((out / "results.json").read_text()))

    pred = tmp_path / "pred"
    argv = ["predict", str(run / "best.pt"), str(images), "--out", str(pred), "--no-classifier", "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    coco = json.loads((pred / "coco.json").read_text())
    assert {"id": 0, "name": "gull"} in coco["categories"]
    gull_image = next(img["id"] for img in coco["images"] if img["file_name"] == "four3.png")
    assert [a["category_id"] for a in coco["annotations"] if a["image_id"] == gull_image] == [0]
