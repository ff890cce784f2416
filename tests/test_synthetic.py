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


def test_realistic_preset_makes_landscape_portrait_and_exif_rotated_photos(tmp_path):
    from birddet.data.images import load_image

    paths = make_synthetic_coco(tmp_path, num_train=12, num_val=0, preset="realistic", seed=3)
    data = json.loads(paths["train"].read_text())
    assert data["info"]["preset"] == "realistic"
    aspects, rotated = set(), 0
    for img in data["images"]:
        w, h = img["width"], img["height"]
        assert 640 <= max(w, h) <= 1920
        aspects.add(round(w / h, 1))
        with Image.open(paths["images"] / img["file_name"]) as raw:
            orientation = raw.getexif().get(0x0112, 1)
            stored = raw.size
        if orientation in (6, 8):
            rotated += 1
            assert stored == (h, w)  # pixels on disk are turned; the annotations describe the displayed image
        assert load_image(paths["images"] / img["file_name"]).size == (w, h)
    assert 1.8 in aspects and any(a < 1 for a in aspects)  # 16:9 and portrait among them
    assert rotated >= 1
    ds = CocoDetection(paths["train"], paths["images"])
    assert ds.report.num_dropped == 0 and not ds.report.clipped


def test_exif_rotated_birds_sit_where_the_annotation_says(tmp_path):
    # One bird per image on a plain grey background: the box must cover the saturated pixels of the displayed image.
    from birddet.data.images import load_image

    paths = make_synthetic_coco(
        tmp_path,
        num_train=8,
        num_val=0,
        preset="realistic",
        birds_per_image=(1, 1),
        exif_fraction=1.0,
        clutter=0.0,  # a plain background, so saturated pixels can only be the bird
        seed=2,
    )
    data = json.loads(paths["train"].read_text())
    for img in data["images"]:
        pixels = np.asarray(load_image(paths["images"] / img["file_name"]), dtype=np.int16)
        (ann,) = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        x, y, w, h = (int(v) for v in ann["bbox"])
        saturation = pixels.max(axis=2) - pixels.min(axis=2)
        inside = saturation[y : y + h, x : x + w].max()
        outside = saturation.copy()
        outside[y : y + h, x : x + w] = 0
        assert inside > 120 and (outside > 150).mean() < 0.001, img["file_name"]


def test_dense_preset_packs_hundreds_of_small_birds(tmp_path):
    paths = make_synthetic_coco(tmp_path, num_train=1, num_val=0, preset="dense", image_size=(1200, 1600), seed=0)
    data = json.loads(paths["train"].read_text())
    (img,) = data["images"]
    boxes = np.array([a["bbox"] for a in data["annotations"]])
    assert 150 <= len(boxes) <= 300
    assert boxes[:, 2].max() <= 0.014 * min(img["width"], img["height"]) + 1
    assert (boxes[:, 0] + boxes[:, 2] <= img["width"]).all() and (boxes[:, 1] + boxes[:, 3] <= img["height"]).all()


def test_bad_synthetic_options_are_refused(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="unknown synthetic preset 'huge'"):
        make_synthetic_coco(tmp_path, preset="huge")
    with pytest.raises(ValueError, match="bird_frac"):
        make_synthetic_coco(tmp_path, bird_frac=(0.5, 0.2))


def test_photo_like_scenes_are_deterministic_with_exact_boxes_in_the_frame(tmp_path):
    kw = {"num_train": 3, "num_val": 1, "preset": "realistic", "image_size": (320, 480), "seed": 5}
    a, b = make_synthetic_coco(tmp_path / "a", **kw), make_synthetic_coco(tmp_path / "b", **kw)
    assert a["train"].read_bytes() == b["train"].read_bytes()
    for name in ("train_000000.jpg", "train_000002.jpg", "val_000000.jpg"):
        assert (a["images"] / name).read_bytes() == (b["images"] / name).read_bytes()
    plain = make_synthetic_coco(tmp_path / "plain", **kw, clutter=0.0)
    assert (plain["images"] / "train_000000.jpg").read_bytes() != (a["images"] / "train_000000.jpg").read_bytes()
    ds = CocoDetection(a["train"], a["images"])
    assert ds.report.num_dropped == 0 and not ds.report.clipped
    data = json.loads(a["train"].read_text())
    assert data["annotations"] and all(min(x["bbox"][2:]) >= 4 for x in data["annotations"])


def test_synth_command_takes_the_clutter_level(tmp_path):
    from birddet.cli import main

    args = ["synth", str(tmp_path), "--images", "3", "--preset", "realistic", "--size", "320", "400"]
    assert main([*args, "--clutter", "0.5"]) == 0
    marker = json.loads((tmp_path / ".birddet_synthetic.json").read_text())
    assert marker["preset"] == "realistic" and marker["spec"]["clutter"] == 0.5
    assert main([*args, "--clutter", "2"]) == 2  # out of range: a one-line reason, exit 2
