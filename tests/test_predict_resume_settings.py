"""`predict --resume` refuses every changed setting that changes results, naming it with its old and new value.

A resumed run appends to the interrupted run's results; one setting that changes numbers (bf16 instead of fp32,
another cap, another tiling) would mix two kinds of result in one output without a word. Settings that do not
change numbers (batch size, workers, output options) must not block a resume, and the batch size is shown not to
change numbers here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_predict import fake_boxes
from test_species import write_tiny_classifier

from birddet.cli import main
from birddet.config import config_from_dict
from birddet.engine.checkpoint import save_checkpoint
from birddet.models.detector import build_detector
from birddet.pipeline.predict import PROGRESS_NAME

CATEGORIES = {5: "songbird", 17: "wader"}
DETECTIONS_PER_IMG = 20


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random detector (detections_per_img 20), a tiny classifier, and photos of three shapes."""
    base = tmp_path_factory.mktemp("resume_settings")
    rng = np.random.default_rng(0)
    images = base / "images"
    images.mkdir()
    for name, (w, h) in {"wide.jpg": (192, 108), "tall.jpg": (90, 160), "square.png": (100, 100)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / name)
    cfg = config_from_dict(
        {
            "model": {
                "backbone": {"preset": "vit_reg4_tiny16_rms_avg"},
                "image_size": 128,
                "pyramid": {"out_channels": 32},
                "rpn": {"pre_nms_top_n_test": 100, "post_nms_top_n_test": 50},
                "roi_heads": {"representation_size": 64, "detections_per_img": DETECTIONS_PER_IMG},
            }
        }
    )
    torch.manual_seed(0)
    return {
        "images": images,
        "classifier": write_tiny_classifier(base / "species.pt"),
        "ckpt": save_checkpoint(base / "det.pt", build_detector(cfg, CATEGORIES)),
    }


def _predict(assets: dict[str, Path], out: Path, *flags: str) -> int:
    argv = ["predict", str(assets["ckpt"]), str(assets["images"]), "--out", str(out), "--workers", "0"]
    return main([*argv, "--device", "cpu", *flags])


# (setting named in the error, flags of the first run, flags of the resumed run, old value, new value)
CHANGES = [
    ("amp", [], ["--amp"], "False", "True"),
    ("conf", ["--conf", "0.2"], ["--conf", "0.3"], "0.2", "0.3"),
    ("max_dets", [], ["--max-dets", "5"], str(DETECTIONS_PER_IMG), "5"),
    ("tile", [], ["--tile", "64"], "None", "64"),
    ("tile_overlap", ["--tile", "64"], ["--tile", "64", "--tile-overlap", "0.5"], "0.25", "0.5"),
    ("full_image", ["--tile", "64"], ["--tile", "64", "--no-full-image"], "True", "False"),
    ("merge", ["--tile", "64"], ["--tile", "64", "--merge", "nmm"], "'nms'", "'nmm'"),
    ("merge_match", ["--tile", "64"], ["--tile", "64", "--merge-match", "ios"], "'iou'", "'ios'"),
    ("merge_threshold", ["--tile", "64"], ["--tile", "64", "--merge-threshold", "0.6"], "0.5", "0.6"),
    ("classifier", ["--no-classifier"], ["--classifier", "CLS"], "None", "CLS"),
    ("classify_conf", ["--classifier", "CLS"], ["--classifier", "CLS", "--classify-conf", "0.5"], "0.1", "0.5"),
    ("top_k", ["--classifier", "CLS"], ["--classifier", "CLS", "--top-k", "2"], "5", "2"),
    ("classifier_size", ["--classifier", "CLS"], ["--classifier", "CLS", "--classifier-size", "48"], "None", "48"),
    ("rollup_threshold", ["--classifier", "CLS"], ["--classifier", "CLS", "--rollup-threshold", "0.8"], "0.5", "0.8"),
    ("taxon", ["--classifier", "CLS"], ["--classifier", "CLS", "--taxon", "Aves"], "None", "'Aves'"),
]


@pytest.mark.parametrize(("setting", "first", "second", "old", "new"), CHANGES, ids=[c[0] for c in CHANGES])
def test_a_changed_setting_refuses_resume_naming_it_with_old_and_new_value(
    assets, tmp_path, monkeypatch, capsys, setting, first, second, old, new
) -> None:
    fake_boxes(monkeypatch)  # the refusal comes before any detection; the first run only needs a progress file
    cls = str(assets["classifier"])
    first, second = [cls if f == "CLS" else f for f in first], [cls if f == "CLS" else f for f in second]
    new = repr(cls) if new == "CLS" else new
    out = tmp_path / "out"
    assert _predict(assets, out, *first) == 0, capsys.readouterr().err
    capsys.readouterr()
    before = (out / PROGRESS_NAME).read_text()
    assert _predict(assets, out, *second, "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{setting}: {old} -> {new}" in err, err
    assert (out / PROGRESS_NAME).read_text() == before  # nothing appended under the new setting


def test_a_progress_file_that_never_recorded_amp_is_not_resumed_as_if_it_matched(assets, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert _predict(assets, out, "--no-classifier", "--conf", "0.3") == 0
    lines = (out / PROGRESS_NAME).read_text().splitlines()
    header = json.loads(lines[0])
    del header["settings"]["amp"]  # as written before --amp was recorded
    (out / PROGRESS_NAME).write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    capsys.readouterr()
    assert _predict(assets, out, "--no-classifier", "--conf", "0.3", "--resume") == 2
    assert "amp: (not recorded) -> False" in capsys.readouterr().err


def test_batch_size_workers_and_outputs_do_not_change_numbers_and_do_not_block_resume(assets, tmp_path) -> None:
    """Three shapes in one batch give each image the same boxes as batches of one (fixed-square padding), which is
    why the batch size is not a resume setting."""
    one, three = tmp_path / "one", tmp_path / "three"
    assert _predict(assets, one, "--no-classifier", "--conf", "0.0", "--batch-size", "1") == 0
    assert _predict(assets, three, "--no-classifier", "--conf", "0.0", "--batch-size", "3") == 0
    a, b = (json.loads((d / "coco.json").read_text())["annotations"] for d in (one, three))
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x["bbox"] == pytest.approx(y["bbox"], abs=1e-3) and x["score"] == pytest.approx(y["score"], abs=1e-5)
    resumed = ["--no-classifier", "--conf", "0.0", "--batch-size", "2", "--format", "csv", "--save-images"]
    assert _predict(assets, one, *resumed, "--resume") == 0
