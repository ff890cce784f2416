"""The synthetic dataset is deterministic, valid COCO, and every box lies inside its image."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from birddet.data.coco import CocoDetection
from birddet.data.synthetic import SYNTH_CATEGORIES, ensure_synthetic_coco, make_synthetic_coco


def test_same_seed_gives_identical_files(tmp_path):
    a = make_synthetic_coco(tmp_path / "a", num_train=6, num_val=2, seed=3)
    b = make_synthetic_coco(tmp_path / "b", num_train=6, num_val=2, seed=3)
    for split in ("train", "val"):
        assert a[split].read_bytes() == b[split].read_bytes()
    for name in ("train_000000.jpg", "train_000005.jpg", "val_000001.jpg"):
        assert np.array_equal(np.asarray(Image.open(a["images"] / name)), np.asarray(Image.open(b["images"] / name)))
    c = make_synthetic_coco(tmp_path / "c", num_train=6, num_val=2, seed=4)
    assert c["train"].read_bytes() != a["train"].read_bytes()


def test_valid_coco_with_boxes_inside_images(tmp_path):
    paths = make_synthetic_coco(tmp_path, num_train=24, num_val=4, seed=0)
    coco = COCO(str(paths["train"]))
    assert sorted(coco.getCatIds()) == [c["id"] for c in SYNTH_CATEGORIES]
    counts = []
    for img in coco.dataset["images"]:
        assert 128 <= img["width"] <= 192 and 128 <= img["height"] <= 192
        with Image.open(paths["images"] / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        counts.append(len(anns))
        for a in anns:
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
            assert w >= 0.2 * min(img["width"], img["height"]) - 1
    assert 0 in counts and max(counts) <= 4 and sum(counts) > len(counts)
    ds = CocoDetection(paths["train"], paths["images"])  # our own validation finds nothing to repair
    assert ds.report.num_dropped == 0 and not ds.report.clipped


def test_ensure_generates_only_when_missing_or_changed(tmp_path):
    paths = ensure_synthetic_coco(tmp_path, num_train=3, num_val=1)
    mtime = paths["train"].stat().st_mtime_ns
    assert ensure_synthetic_coco(tmp_path, num_train=3, num_val=1)["train"].stat().st_mtime_ns == mtime
    ensure_synthetic_coco(tmp_path, num_train=4, num_val=1)
    assert len(json.loads(paths["train"].read_text())["images"]) == 4
