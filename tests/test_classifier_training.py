"""`birddet train-classifier` end to end on a tiny ViT and an 8-image synthetic set: crops, files, birder parity,
exact resume and bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from birddet.cli import main
from birddet.config import ClassifierConfig, config_from_dict
from birddet.data.crops import CocoCrops
from birddet.data.images import load_image
from birddet.data.synthetic import make_synthetic_coco
from birddet.engine.classification import train_classifier
from birddet.errors import InputError
from birddet.pipeline.species import SpeciesClassifier

RGB = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}


def tiny_classifier_config(data_dir: Path | None, **train_kw: Any) -> ClassifierConfig:
    """The tiny preset on 32 px crops: a step takes milliseconds on a CPU."""
    train = {
        "epochs": 2,
        "batch_size": 8,
        "lr": 1e-3,
        "layer_decay": 0.8,
        "warmup_iters": 2,
        "log_every": 1,
        "eval_batch_size": 16,
        "device": "cpu",
        **train_kw,
    }
    return config_from_dict(
        {
            "model": {"backbone": {"preset": "vit_reg4_tiny16_rms_avg"}, "image_size": 32},
            "data": {
                "synthetic": {"dir": str(data_dir) if data_dir else None, "num_train": 8, "num_val": 4},
                "workers": 0,
            },
            "train": train,
        },
        schema=ClassifierConfig,
    )


def read_log(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic_coco(out, num_train=8, num_val=4, seed=0)
    return out


@pytest.fixture(scope="module")
def full_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    run = tmp_path_factory.mktemp("cls") / "run"
    return run, train_classifier(tiny_classifier_config(data_dir, ema=True, ema_decay=0.5), run)


# -- crops ------------------------------------------------------------------------------------------------------------
def _coco(
    tmp_path: Path, images: list[tuple[str, Image.Image, dict | None]], boxes: list[tuple[int, list, int]]
) -> Path:
    """Write images (name, displayed PIL image, exif) and a COCO file with `boxes` (image index, xywh, category)."""
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    entries = []
    for i, (name, img, exif) in enumerate(images):
        if exif:  # store the raw (unrotated) pixels with an orientation tag, as cameras do
            raw = img.transpose(Image.Transpose.ROTATE_90)  # orientation 6 rotates this back to `img`
            ex = Image.Exif()
            ex[0x0112] = 6
            raw.save(root / name, exif=ex, quality=95)
        else:
            img.save(root / name, quality=95)
        entries.append({"id": i + 1, "file_name": name, "width": img.width, "height": img.height})
    cats = [{"id": 1, "name": "songbird"}, {"id": 2, "name": "wader"}]
    anns = [
        {"id": k + 1, "image_id": i + 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for k, (i, b, c) in enumerate(boxes)
    ]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": entries, "annotations": anns, "categories": cats}))
    return path


def _noise(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_crop_geometry_is_the_same_in_training_and_predict(tmp_path):
    """16:9, portrait and EXIF-rotated images, boxes at borders: training crops equal predict's crops exactly."""
    images = [
        ("wide.jpg", _noise(320, 180, 0), None),
        ("tall.jpg", _noise(120, 256, 1), None),
        ("rotated.jpg", _noise(240, 136, 2), {"orientation": 6}),
    ]
    boxes = [
        (0, [10.5, 20.25, 60.0, 40.0], 1),
        (0, [290.0, 150.0, 30.0, 30.0], 2),  # bottom-right corner: the square is shifted inside, then clipped
        (1, [0.0, 200.0, 100.0, 56.0], 1),  # wider than tall near the bottom border
        (2, [200.0, 5.0, 39.0, 120.0], 2),  # on the displayed (rotated) image
    ]
    ann = _coco(tmp_path, images, boxes)
    ds = CocoCrops(ann, tmp_path / "images", size=48, rgb_stats=RGB)
    predict = SpeciesClassifier.__new__(SpeciesClassifier)  # only its crop method and settings are used
    predict.size, predict.margin = (48, 48), ds.margin
    predict.info = type("Info", (), {"rgb_stats": RGB})()
    assert len(ds) == 4
    for i, (image_index, box, _) in enumerate(boxes):
        decoded = TF.pil_to_tensor(load_image(tmp_path / "images" / images[image_index][0]))  # what predict decodes
        x, y, w, h = box
        expected = predict.crops(decoded, torch.tensor([[x, y, x + w, y + h]]))[0]
        crop, label = ds[i]
        assert crop.shape == (3, 48, 48) and label == boxes[i][2] - 1
        torch.testing.assert_close(crop, expected, rtol=0, atol=0)


def test_augmented_crops_are_reproducible_per_seed_and_differ_from_plain_ones(data_dir):
    from birddet.config import CropAugmentConfig
    from birddet.data.crops import CropAugment
    from birddet.engine.trainer import SeededDataset

    plain = CocoCrops(data_dir / "train.json", data_dir / "images", size=32, rgb_stats=RGB)
    aug = CocoCrops(
        data_dir / "train.json", data_dir / "images", size=32, rgb_stats=RGB, augment=CropAugment(CropAugmentConfig())
    )
    a, b = SeededDataset(aug, seed=3), SeededDataset(aug, seed=3)
    first = [a[i][0] for i in range(len(aug))]
    assert all(torch.equal(x, b[i][0]) for i, x in enumerate(first))
    assert any(not torch.equal(x, plain[i][0]) for i, x in enumerate(first))


# -- a run ------------------------------------------------------------------------------------------------------------
def test_run_writes_every_promised_file_and_metrics(full_run):
    run, summary = full_run
    for name in (
        "config.yaml",
        "last.pt",
        "best.pt",
        "metrics.jsonl",
        "metrics.json",
        "confusion_matrix.png",
        "accuracy.png",
        "loss.png",
    ):
        assert (run / name).is_file(), name
    log = read_log(run)
    assert [r["step"] for r in log] == list(range(1, len(log) + 1)) and len(log) == summary["steps"]
    assert all(math.isfinite(r["loss_cls"]) for r in log)
    metrics = json.loads((run / "metrics.json").read_text())
    assert "top5" not in metrics  # three classes: no top-5 (top1 is checked against the confusion matrix below)
    assert [r["name"] for r in metrics["per_class"]] == ["songbird", "wader", "raptor"]
    counts = np.array(metrics["confusion_matrix"]["counts"])
    assert counts.shape == (3, 3) and counts.sum() == metrics["num_samples"]
    assert metrics["top1"] == pytest.approx(np.trace(counts) / counts.sum())
    assert summary["best_top1"] == pytest.approx(metrics["top1"])


def test_best_pt_loads_in_birder_and_birddet_with_the_same_logits(full_run):
    from birder.common import fs_ops

    from birddet.backbone.weights import load_backbone

    run, _ = full_run
    bnet, binfo = fs_ops.load_model(torch.device("cpu"), "vit_reg4_m16_rms_avg", path=run / "best.pt", inference=True)
    net, info = load_backbone(run / "best.pt")
    assert binfo.class_to_idx == info.class_to_idx == {"songbird": 0, "wader": 1, "raptor": 2}
    assert info.size == (32, 32) and info.network == "vit_reg4_tiny16_rms_avg"
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = bnet(x)
        torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
        assert expected.abs().max() > 0  # the trained head is not the zero init
    species = SpeciesClassifier.load(run / "best.pt")  # what `predict --classifier RUN/best.pt` does
    assert [t.class_name for t in species.taxonomy] == ["songbird", "wader", "raptor"]
    assert species.size == (32, 32)


def test_last_pt_holds_the_training_state_and_best_pt_the_ema_weights(full_run):
    run, _ = full_run
    last = torch.load(run / "last.pt", weights_only=True)
    t = last["training"]
    assert {"optimizer", "scheduler", "ema", "epoch", "step", "rng", "best_top1", "history"} <= set(t)
    assert last["class_names"] == ["songbird", "wader", "raptor"] and last["task"] == "species_classifier"
    best = torch.load(run / "best.pt", weights_only=True)
    assert "training" not in best and best["task"] == "image_classification"
    assert best["config"] == {"num_layers": 2, "num_heads": 2, "hidden_dim": 64, "mlp_dim": 128}
    if t["best_epoch"] == 2:  # EMA decay 0.5: the kept weights differ from the raw ones
        assert not torch.equal(best["state"]["classifier.weight"], last["model"]["classifier.weight"])


def test_resume_after_stop_gives_the_same_losses(full_run, data_dir, tmp_path):
    run, summary = full_run
    resumed = tmp_path / "resumed"
    stop = summary["steps"] - 1
    train_classifier(tiny_classifier_config(data_dir, ema=True, ema_decay=0.5, max_steps=stop), resumed)
    assert torch.load(resumed / "last.pt", weights_only=True)["training"]["step"] == stop
    train_classifier(tiny_classifier_config(data_dir, ema=True, ema_decay=0.5), resumed, resume=True)
    full, again = read_log(run), read_log(resumed)
    assert [r["step"] for r in again] == [r["step"] for r in full]
    for a, b in zip(full, again, strict=True):
        assert b["loss"] == a["loss"], a["step"]
        assert b["lr"] == pytest.approx(a["lr"])
    best_a = torch.load(run / "best.pt", weights_only=True)["state"]
    best_b = torch.load(resumed / "best.pt", weights_only=True)["state"]
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_fine_tuning_from_a_birder_file_gets_a_new_head_and_the_crop_size(data_dir, make_birder_file, tmp_path):
    weights = make_birder_file("tiny.pt", num_classes=5, image_size=(64, 64), rgb_stats=RGB)
    cfg = tiny_classifier_config(data_dir, epochs=1, max_steps=1)
    cfg.model.backbone.weights = str(weights)
    cfg.model.backbone.freeze_blocks = 0
    train_classifier(cfg, tmp_path / "ft")
    best = torch.load(tmp_path / "ft" / "best.pt", weights_only=True)
    assert best["rgb_stats"] == RGB and best["signature"]["inputs"][0]["data_shape"] == [0, 3, 32, 32]
    assert best["state"]["classifier.weight"].shape == (3, 64)
    source = torch.load(weights, weights_only=True)["state"]
    # freeze_blocks=0 froze the patch embedding: its weights are the file's
    assert torch.equal(best["state"]["conv_proj.weight"], source["conv_proj.weight"])


# -- bad inputs -------------------------------------------------------------------------------------------------------
def _relabel(data_dir: Path, tmp_path: Path, edit: Any, name: str = "train.json") -> Path:
    data = json.loads((data_dir / name).read_text())
    edit(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _cfg_with(data_dir: Path, train: Path, val: Path | None = None) -> ClassifierConfig:
    cfg = tiny_classifier_config(None)
    cfg.data.train.ann, cfg.data.train.images = str(train), str(data_dir / "images")
    cfg.data.val.ann, cfg.data.val.images = str(val or data_dir / "val.json"), str(data_dir / "images")
    return cfg


def test_a_dataset_with_one_class_is_refused(data_dir, tmp_path):
    def one_class(d):
        d["categories"] = [{"id": 1, "name": "bird"}]
        for a in d["annotations"]:
            a["category_id"] = 1

    train = _relabel(data_dir, tmp_path, one_class)
    with pytest.raises(InputError, match=r"at least two classes.*'bird'|'bird'.*at least two classes"):
        train_classifier(_cfg_with(data_dir, train), tmp_path / "run")


def test_a_class_without_boxes_is_named(data_dir, tmp_path):
    train = _relabel(data_dir, tmp_path, lambda d: d["categories"].append({"id": 9, "name": "owl"}))
    with pytest.raises(InputError, match=r"'owl' have no boxes"):
        train_classifier(_cfg_with(data_dir, train), tmp_path / "run")


def test_val_names_unknown_to_training_list_both_sets(data_dir, tmp_path):
    def rename(d):
        d["categories"][2]["name"] = "Kestrel"

    val = _relabel(data_dir, tmp_path, rename, "val.json")
    if not any(a["category_id"] == 3 for a in json.loads(val.read_text())["annotations"]):
        pytest.skip("the tiny val split has no raptor")
    with pytest.raises(InputError, match=r"Kestrel.*songbird, wader, raptor"):
        train_classifier(_cfg_with(data_dir, data_dir / "train.json", val), tmp_path / "run")


def test_val_names_match_case_insensitively(data_dir, tmp_path):
    val = _relabel(
        data_dir, tmp_path, lambda d: [c.update(name=c["name"].upper()) for c in d["categories"]], "val.json"
    )
    ds = CocoCrops(val, data_dir / "images", size=32, rgb_stats=RGB, class_names=["songbird", "wader", "raptor"])
    names = {c["id"]: c["name"].lower() for c in json.loads(val.read_text())["categories"]}
    first = json.loads(val.read_text())["annotations"][0]
    assert ds.class_names[ds.items[0][2]] == names[first["category_id"]]


def test_keep_head_without_weights_and_bad_crop_size_are_input_errors(data_dir, tmp_path):
    cfg = tiny_classifier_config(data_dir)
    cfg.model.head = "keep"
    with pytest.raises(InputError, match="model.head=keep"):
        train_classifier(cfg, tmp_path / "a")
    cfg = tiny_classifier_config(data_dir)
    cfg.model.image_size = 40
    with pytest.raises(InputError, match="multiple of the patch size"):
        train_classifier(cfg, tmp_path / "b")


def test_cli_unknown_key_exits_2_and_resume_of_a_detector_run_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  pyramid:\n    out_channels: 8\n")  # a detector key: not a classifier config
    assert main(["train-classifier", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.pyramid" in err and len(err.splitlines()) == 1
