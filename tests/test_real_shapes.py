"""Photos as they arrive (16:9, portrait, panoramas, EXIF-rotated): `eval` and `predict` give the same boxes on them,
annotated images keep their displayed size, and a run's metrics are what `birddet eval` of its `best.pt` gives
in a fresh process.

The synthetic set that came before was small and nearly square, and it hid a detector that pooled every 16:9 image
from the wrong pyramid level once reloaded. These tests use the `realistic` preset, shrunk so they stay fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_trainer import tiny_config

from birddet.cli import main
from birddet.engine.checkpoint import load_detector, save_checkpoint
from birddet.engine.trainer import train
from birddet.models.detector import build_detector

CATEGORIES = {1: "songbird", 2: "wader", 3: "raptor"}


def test_the_photo_set_has_the_shapes_it_promises(photos: dict[str, Path]) -> None:
    images = json.loads(photos["val"].read_text())["images"] + json.loads(photos["train"].read_text())["images"]
    aspects = {round(i["width"] / i["height"], 1) for i in images}
    assert {1.8, 3.0, 0.6} <= aspects
    rotated = [i for i in images if Image.open(photos["images"] / i["file_name"]).getexif().get(0x0112, 1) != 1]
    assert rotated


#: Inference as trained, and at another square with flip TTA at two more squares and box refinement
#: (`model.test_size`, `model.tta`, `model.tta_sizes`, `model.roi_heads.refine_steps`): both must hold.
INFERENCE = {
    "as trained": {},
    "test_size 160 + flip TTA at 128/160/192 + 2 refine steps": {
        "test_size": 160,
        "tta": "flip",
        "tta_sizes": [128, 192],
        "roi_heads.refine_steps": 2,
    },
}


def _inference(cfg, settings: dict):  # noqa: ANN001, ANN202
    for key, value in settings.items():
        *parents, name = key.split(".")
        target = cfg.model
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)
    return cfg


@pytest.mark.parametrize("inference", list(INFERENCE))
def test_predict_and_eval_give_the_same_boxes_on_every_shape(
    photos: dict[str, Path], tmp_path: Path, inference: str
) -> None:
    torch.manual_seed(0)
    detector = build_detector(_inference(tiny_config(None), INFERENCE[inference]), CATEGORIES)
    ckpt = save_checkpoint(tmp_path / "det.pt", detector)
    common = ["--workers", "0", "--device", "cpu"]
    ev = tmp_path / "eval"
    assert main(["eval", str(ckpt), "--ann", str(photos["val"]), "--images", str(photos["images"])]
                + ["--out", str(ev), "--no-plots", *common]) == 0  # fmt: skip
    gt = json.loads(photos["val"].read_text())
    files = [str(photos["images"] / i["file_name"]) for i in gt["images"]]
    pr = tmp_path / "predict"
    # 0.05 is the detector's own score threshold, i.e. what eval keeps.
    assert main(["predict", str(ckpt), *files, "--out", str(pr), "--no-classifier", "--conf", "0.05"]
                + ["--save-images", "--batch-size", "3", *common]) == 0  # fmt: skip

    by_file = {i["file_name"]: i for i in gt["images"]}
    evaluated: dict[str, list] = {name: [] for name in by_file}
    id_to_file = {i["id"]: i["file_name"] for i in gt["images"]}
    for r in json.loads((ev / "results.json").read_text()):
        evaluated[id_to_file[r["image_id"]]].append(r)
    predicted = json.loads((pr / "coco.json").read_text())
    pred_files = {i["id"]: i for i in predicted["images"]}
    found: dict[str, list] = {Path(i["file_name"]).name: [] for i in predicted["images"]}
    for a in predicted["annotations"]:
        found[Path(pred_files[a["image_id"]]["file_name"]).name].append(a)
    assert sum(len(v) for v in evaluated.values()) > 0
    for name, info in by_file.items():
        p = next(i for i in predicted["images"] if Path(i["file_name"]).name == name)
        assert (p["width"], p["height"]) == (info["width"], info["height"]), name  # displayed size, EXIF applied
        a = sorted((round(r["score"], 4), r["bbox"]) for r in evaluated[name])
        b = sorted((round(r["score"], 4), r["bbox"]) for r in found[name])
        assert len(a) == len(b), name
        for (sa, ba), (sb, bb) in zip(a, b):
            assert sa == pytest.approx(sb, abs=1e-4)
            assert ba == pytest.approx(bb, abs=0.02), name
        with Image.open(pr / "images" / name) as drawn:
            assert drawn.size == (info["width"], info["height"]), name


def _with_data(cfg, photos: dict[str, Path], val_ann: Path):  # noqa: ANN001, ANN202
    d = cfg.data
    d.train.ann, d.train.images = str(photos["train"]), str(photos["images"])
    d.val.ann, d.val.images = str(val_ann), str(photos["images"])
    return cfg


@pytest.mark.parametrize("inference", list(INFERENCE))
def test_run_metrics_equal_a_fresh_process_eval_of_best_pt(
    photos: dict[str, Path], tmp_path: Path, inference: str
) -> None:
    # A few CPU steps teach a tiny detector nothing, and AP 0 = AP 0 would prove nothing. So the val labels are the
    # untrained network's own confident boxes (an lr=0 run keeps its seeded weights), and the real run then trains
    # a few steps from the same seed on 16:9, panorama and portrait photos: its AP is high but not trivially 1,
    # and any difference in how a fresh process pools, rescales or scores these shapes moves it.
    start = tmp_path / "start"
    settings = INFERENCE[inference]
    train(_inference(_with_data(tiny_config(None, epochs=1, lr=0.0), photos, photos["val"]), settings), start)
    seeded = load_detector(start / "best.pt")
    gt = json.loads(photos["val"].read_text())
    gt["annotations"] = []
    for img in gt["images"]:
        pred = seeded.predict(photos["images"] / img["file_name"], conf=0.0)[0]
        for box, cat in list(zip(pred.boxes_xywh().tolist(), pred.category_ids))[:3]:
            ann = {"id": len(gt["annotations"]) + 1, "image_id": img["id"], "category_id": cat, "iscrowd": 0}
            gt["annotations"].append({**ann, "bbox": box, "area": box[2] * box[3]})
    val = tmp_path / "val_seeded.json"
    val.write_text(json.dumps(gt))

    run = tmp_path / "run"
    train(_inference(_with_data(tiny_config(None, epochs=2, lr=2e-5, eval_every=1), photos, val), settings), run)
    reported = json.loads((run / "metrics.json").read_text())["stats"]
    assert 0.05 < reported["AP"] < 1.0 and reported["AP50"] > 0.3
    out = tmp_path / "eval"
    argv = ["eval", str(run / "best.pt"), "--ann", str(val), "--images", str(photos["images"]), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "birddet.cli", *argv, "--no-plots", "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    fresh = json.loads((out / "metrics.json").read_text())["stats"]
    for key, value in reported.items():
        assert fresh[key] == pytest.approx(value, abs=1e-6), key
