"""The global decode budget: decoded pixels in flight over all predict workers stay under `--decode-budget`."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_untrusted_files import make_tiny_files  # tests/ is on sys.path (pytest rootdir-relative import)

import birddet.pipeline.predict as predict_module
from birddet.data.images import MAX_IMAGE_PIXELS, image_size
from birddet.pipeline.predict import PredictOptions, run_prediction

WIDE, TALL = (160, 90), (90, 160)  # 14,400 px each: 16:9 and portrait


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("budget")
    out = make_tiny_files(base)
    images = base / "many"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        w, h = WIDE if i % 2 else TALL
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    return {**out, "many": images}


def test_pixels_in_flight_over_all_workers_stay_under_the_budget(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers add an image's pixels to a shared counter before decoding it; the main process takes a batch's
    pixels off when it has finished the batch. The counter's peak is what was decoded and not yet done with."""
    in_flight = mp.Value("q", 0)
    peak = mp.Value("q", 0)
    decode = predict_module.ImageFiles.__getitem__
    process = predict_module._process_batch

    def counting_decode(self: predict_module.ImageFiles, index: int) -> object:
        w, h = image_size(self.paths[index], apply_exif=False)
        with in_flight.get_lock():
            in_flight.value += w * h
            peak.value = max(peak.value, in_flight.value)
        return decode(self, index)

    def counting_process(run: object, batch: list, items: list) -> list:
        results = process(run, batch, items)
        with in_flight.get_lock():
            in_flight.value -= sum(img.shape[-1] * img.shape[-2] for _, img, _ in batch if img is not None)
        return results

    monkeypatch.setattr(predict_module.ImageFiles, "__getitem__", counting_decode)
    monkeypatch.setattr(predict_module, "_process_batch", counting_process)
    budget_px = 36_000  # two and a half images
    opts = PredictOptions(
        use_classifier=False, batch_size=4, workers=2, device="cpu", formats=["coco"], decode_budget=budget_px / 1e6
    )
    run_prediction(files["ckpt"], [files["many"]], tmp_path / "out", opts)
    coco = (tmp_path / "out" / "coco.json").read_text()
    assert coco.count('"file_name"') == 8  # every image was predicted
    assert in_flight.value == 0
    assert 14_400 <= peak.value <= budget_px


def test_an_image_over_the_whole_budget_is_a_failure_naming_the_limit(files: dict[str, Path], tmp_path: Path) -> None:
    """The 96x54 images (5,184 px) under a 5,000-px budget: refused before decoding, as over the per-image cap."""
    opts = PredictOptions(use_classifier=False, workers=0, device="cpu", formats=["megadetector"], decode_budget=0.005)
    summary = run_prediction(files["ckpt"], [files["images"]], tmp_path / "out", opts)
    assert "2 failed" in summary
    text = (tmp_path / "out" / "megadetector.json").read_text()
    assert "96x54 = 5184 pixels exceeds the limit of 5000" in text


def test_the_window_rule_holds_for_mixed_sizes(tmp_path: Path) -> None:
    """Any `slots` consecutive batches hold at most the budget; big images go alone behind empty batches."""
    from birddet.data.images import PixelBudgetBatches

    sizes = [(160, 90), (90, 160), (400, 300), (160, 90), (300, 400), (90, 160), (160, 90), (1000, 1000)]
    paths = []
    for i, (w, h) in enumerate(sizes):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (w, h)).save(paths[-1])
    (tmp_path / "broken.png").write_text("not an image")
    paths.append(tmp_path / "broken.png")
    px = [w * h for w, h in sizes] + [0]
    px[7] = 0  # over the whole budget: left for the dataset to refuse, never decoded
    budget, slots = 150_000, 3
    batches = list(PixelBudgetBatches(paths, batch_size=3, budget=budget, slots=slots))
    assert [i for b in batches for i in b] == list(range(len(paths)))
    assert all(len(b) <= 3 for b in batches)
    sums = [sum(px[i] for i in b) for b in batches]
    assert max(sum(sums[k : k + slots]) for k in range(len(sums))) <= budget
    assert [] in batches  # the 120,000-px images waited for the window to drain


def test_default_budget_lets_every_image_under_the_cap_through() -> None:
    from birddet.data.images import default_decode_budget

    assert default_decode_budget(MAX_IMAGE_PIXELS) >= MAX_IMAGE_PIXELS


def test_decode_budget_must_be_positive() -> None:
    from birddet.errors import InputError

    with pytest.raises(InputError, match="--decode-budget must be a positive number of megapixels, got 0"):
        PredictOptions(decode_budget=0).validate()
