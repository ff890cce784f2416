"""`birddet eval CHECKPOINT`: results in original image coordinates, the report files, and category checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from birddet.cli import main
from birddet.data.synthetic import make_synthetic_coco
from birddet.engine.checkpoint import save_checkpoint
from birddet.engine.runner import to_coco_results
from birddet.models.detector import build_detector


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_synthetic_coco(tmp_path_factory.mktemp("synthetic"), num_train=0, num_val=4, seed=1)


def _checkpoint(path: Path, categories: dict[int, str]) -> Path:
    from test_trainer import tiny_config

    torch.manual_seed(0)
    return save_checkpoint(path, build_detector(tiny_config(None), categories))


def test_eval_writes_results_in_original_coordinates_and_metrics(split, tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "tiny.pt", {1: "songbird", 2: "wader", 3: "raptor"})
    out = tmp_path / "eval"
    argv = ["eval", str(ckpt), "--ann", str(split["val"]), "--images", str(split["images"]), "--out", str(out)]
    code = main([*argv, "--workers", "0", "--no-plots", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert "AP50" in metrics["stats"]
    gt = json.loads(Path(split["val"]).read_text())
    sizes = {img["id"]: (img["width"], img["height"]) for img in gt["images"]}
    for r in results:
        assert r["category_id"] in (1, 2, 3)
        x, y, w, h = r["bbox"]
        width, height = sizes[r["image_id"]]
        assert x >= 0 and y >= 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3
    assert "AP50" in capsys.readouterr().out
    inputs = json.loads((out / "eval_inputs.json").read_text())  # what `birddet report` reads the images from
    assert (inputs["ann"], inputs["images"]) == (
        str(Path(split["val"]).resolve()),
        str(Path(split["images"]).resolve()),
    )


def test_eval_with_categories_the_checkpoint_lacks_exits_2_with_a_reason(split, tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "other.pt", {10: "heron", 11: "gull"})
    code = main(["eval", str(ckpt), "--ann", str(split["val"]), "--images", str(split["images"]), "--workers", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "category" in err and "not trained on" in err


def test_results_are_rescaled_from_the_transformed_image_to_orig_size():
    out = {
        "boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0]]),
        "labels": torch.tensor([2]),
        "scores": torch.tensor([0.9]),
    }
    image = torch.zeros(3, 100, 200)  # transformed: longest side 200
    target = {"image_id": 7, "orig_size": (50, 100)}  # original is half the size
    (r,) = to_coco_results(out, image, target, [0, 5, 9])
    assert r["image_id"] == 7 and r["category_id"] == 9
    assert r["bbox"] == pytest.approx([5.0, 10.0, 20.0, 20.0])
    assert r["score"] == pytest.approx(0.9)


def test_tiled_eval_with_max_dets_over_100_records_the_max_dets_used(split, tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "tiny.pt", {1: "songbird", 2: "wader", 3: "raptor"})
    out = tmp_path / "eval"
    argv = ["eval", str(ckpt), "--ann", str(split["val"]), "--images", str(split["images"]), "--out", str(out)]
    code = main([*argv, "--workers", "0", "--no-plots", "--device", "cpu", "--tile", "96", "--max-dets", "300"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["max_dets"] == [1, 10, 300]
    results = json.loads((out / "results.json").read_text())
    per_image: dict[int, int] = {}
    for r in results:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    assert max(per_image.values()) <= 300
    gt = json.loads(Path(split["val"]).read_text())
    sizes = {img["id"]: (img["width"], img["height"]) for img in gt["images"]}
    for r in results:
        x, y, w, h = r["bbox"]
        width, height = sizes[r["image_id"]]
        assert x >= 0 and y >= 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3
    plain = tmp_path / "plain"
    assert main([*argv[:-1], str(plain), "--workers", "0", "--no-plots", "--device", "cpu"]) == 0
    assert json.loads((plain / "metrics.json").read_text())["max_dets"] == [1, 10, 100]
