"""`data.cache_images`: training images decoded once and kept in RAM at the input size must give the same training
samples, on every photo shape (the `photos` fixture of conftest.py), as decoding every time; a cache that would not fit is skipped, a corrupt image is
left to the skip-and-report path."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from birddet.data.coco import CocoDetection
from birddet.data.transforms import build_train_transforms
from birddet.engine.trainer import SeededDataset, train
from tests.test_trainer import tiny_config

SIZE = 96


def _dataset(photos: dict[str, Path], mosaic: float) -> CocoDetection:
    t = build_train_transforms(SIZE, scale_range=(0.6, 1.4), color_jitter=0.2, mosaic=mosaic)
    return CocoDetection(photos["train"], photos["images"], t)


@pytest.mark.parametrize("mosaic", [0.0, 1.0])
def test_cached_samples_equal_decoded_ones_on_every_shape(photos: dict[str, Path], mosaic: float) -> None:
    plain, cached = _dataset(photos, mosaic), _dataset(photos, mosaic)
    side = cached.transforms.source_side  # the input size times the largest scale jitter
    assert side == round(SIZE * 1.4)
    assert cached.cache_pixels(side)
    assert len(cached.pixel_cache) == len(cached)
    shapes = set()
    for index, pixels in cached.pixel_cache.items():
        info = cached.images[cached.image_ids[index]]
        assert max(pixels.shape[:2]) == side  # the training transform's first step, done once
        # Displayed orientation (EXIF applied): the cached image has the JSON's aspect ratio.
        assert pixels.shape[1] / pixels.shape[0] == pytest.approx(info["width"] / info["height"], rel=0.05)
        shapes.add(round(info["width"] / info["height"], 1))
    assert {1.8, 3.0, 0.6} <= shapes
    a, b = SeededDataset(plain, seed=0), SeededDataset(cached, seed=0)
    for epoch in range(2):
        a.epoch = b.epoch = epoch
        for i in range(len(plain)):
            (img_a, tgt_a), (img_b, tgt_b) = a[i], b[i]
            torch.testing.assert_close(img_a, img_b, atol=1e-6, rtol=0)
            torch.testing.assert_close(tgt_a["boxes"], tgt_b["boxes"], atol=0.01, rtol=0)
            assert tgt_a["labels"].tolist() == tgt_b["labels"].tolist()
            assert tgt_a["orig_size"] == tgt_b["orig_size"]


def test_a_cache_that_would_not_fit_is_skipped_with_a_warning(photos, caplog) -> None:
    ds = _dataset(photos, 0.0)
    with caplog.at_level(logging.WARNING):
        assert not ds.cache_pixels(SIZE, max_bytes=1000)
    assert not ds.pixel_cache
    assert "data.cache_images" in caplog.text and "without the cache" in caplog.text
    image, target = ds[0]  # training goes on, decoding as before
    assert image.shape == (3, SIZE, SIZE)


def test_a_corrupt_image_is_not_cached_and_is_skipped_as_before(photos, tmp_path, caplog) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for f in photos["images"].iterdir():
        (images / f.name).write_bytes(f.read_bytes())
    coco = json.loads(photos["train"].read_text())
    bad = coco["images"][2]["file_name"]
    (images / bad).write_bytes(b"not a jpeg")
    t = build_train_transforms(SIZE)
    ds = CocoDetection(photos["train"], images, t)
    with caplog.at_level(logging.WARNING):
        assert ds.cache_pixels(SIZE)
    assert "skipping bad image" in caplog.text and bad in caplog.text  # said once, where the user sees it
    assert len(ds.pixel_cache) == len(ds) - 1 and 2 not in ds.pixel_cache
    assert str(images / bad) in ds.skipped
    image, target = ds[2]  # the next image stands in, as without the cache
    assert target["image_id"] == coco["images"][3]["id"]


def test_training_with_the_cache_reproduces_training_without_it(photos, tmp_path) -> None:
    """End to end: same losses and same val AP, since the training pixels are the same."""
    runs = {}
    for cache in (False, True):
        cfg = tiny_config(None, epochs=2, max_steps=4)
        cfg.data.train.ann, cfg.data.train.images = str(photos["train"]), str(photos["images"])
        cfg.data.val.ann, cfg.data.val.images = str(photos["val"]), str(photos["images"])
        cfg.data.cache_images = cache
        cfg.data.augment.mosaic = 0.5
        out = tmp_path / f"cache-{cache}"
        train(cfg, out)
        log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[cache] = [round(r["loss"], 5) for r in log if "loss" in r], json.loads((out / "metrics.json").read_text())
    assert runs[True][0] and runs[True][0] == runs[False][0]
    assert runs[True][1]["stats"] == pytest.approx(runs[False][1]["stats"], abs=1e-6)
    assert np.isfinite(runs[True][0]).all()
