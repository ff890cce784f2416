"""The user's photos are read-only to birddet: no output lands on an input file, --out inside a source folder is not
read back, odd names (backslashes) predict fine, and unsupported photo types are named instead of skipped silently.

Everything runs `birddet predict` as a user types it (`birddet.cli.main`), on a tiny random detector whose
`predict` is replaced by fixed boxes (tests/test_predict.py's `fake_boxes`), with a 16:9 and a portrait photo.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_predict import CATEGORIES, _tiny_config, fake_boxes

from birddet.cli import main
from birddet.config import config_from_dict
from birddet.engine.checkpoint import save_checkpoint
from birddet.models.detector import build_detector

FAST = ["--no-classifier", "--workers", "0", "--batch-size", "2", "--conf", "0.01"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    detector = build_detector(config_from_dict(_tiny_config()), CATEGORIES)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", detector)


def make_photos(folder: Path, names: tuple[str, str] = ("wide.jpg", "tall.png")) -> list[Path]:
    """A 16:9 JPEG and a portrait PNG (names may be changed) in `folder`."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (w, h) in zip(names, ((64, 36), (36, 64)), strict=True):
        path = folder / name
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def predict_argv(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str
) -> tuple[Path, Path, list[str]]:
    """A folder of photos of two shapes, an output folder, and the `birddet predict` command line over them, with
    the detector's boxes faked (`test_predict.fake_boxes`) so that every run finds the same birds."""
    from test_predict import fake_boxes

    fake_boxes(monkeypatch)
    photos = tmp_path / "photos"
    make_photos(photos)
    out = tmp_path / "out"
    return photos, out, ["predict", str(tiny_ckpt), str(photos), "--out", str(out), *FAST, *extra]


def fingerprint(paths: list[Path]) -> dict[Path, tuple[str, int]]:
    return {p: (hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(p.stat().st_mode)) for p in paths}


def images_in(out: Path) -> list[str]:
    return sorted(im["file"] for im in json.loads((out / "megadetector.json").read_text())["images"])


@pytest.mark.parametrize("layout", ["nested", "symlinked"])
def test_save_images_over_the_source_photos_is_refused_before_anything_is_written(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, layout: str
) -> None:
    fake_boxes(monkeypatch)
    if layout == "nested":  # the reviewers' case: `predict ckpt ds/images --out ds --save-images`
        source, out = tmp_path / "ds" / "images", tmp_path / "ds"
        photos = make_photos(source)
    else:  # OUT/images is a symlink to the photo folder, named by another path
        source, out = tmp_path / "photos", tmp_path / "run"
        photos = make_photos(source)
        out.mkdir()
        (out / "images").symlink_to(source)
    before = fingerprint(photos)
    rc = main(["predict", str(tiny_ckpt), str(source), "--out", str(out), "--save-images", *FAST])
    err = capsys.readouterr().err
    assert rc == 2
    assert fingerprint(photos) == before  # same bytes, same mode
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert "source file" in lines[0] and str(out) in lines[0] and any(str(p) in lines[0] for p in photos)
    assert "(2 source files in all)" in lines[0]
    assert not (out / "megadetector.json").exists() and not (out / "progress.jsonl").exists()
    assert not (out / "birddet.lock").exists()


def test_out_inside_the_source_folder_is_not_read_back_as_photos(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_boxes(monkeypatch)
    photos = tmp_path / "photos"
    make_photos(photos)
    out = photos / "results"
    argv = ["predict", str(tiny_ckpt), str(photos), "--out", str(out), "--save-images", *FAST]
    assert main(argv) == 0
    assert (out / "images" / "wide.jpg").is_file()  # the annotated copies now sit inside the source folder
    # A second pass over the same folder (here a resume) must list the two photos, not their annotated copies.
    assert main([*argv, "--resume"]) == 0
    assert images_in(out) == ["tall.png", "wide.jpg"]
    assert not (out / "images" / "results").exists()  # no copies of copies, nesting deeper on each run


def test_file_names_with_backslashes_predict_fine(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    if os.sep == "\\":
        pytest.skip("a backslash is a separator on Windows")
    fake_boxes(monkeypatch)
    photos = tmp_path / "photos"
    make_photos(photos, names=("cam1\\wide.jpg", "tall.png"))
    out = tmp_path / "out"
    assert main(["predict", str(tiny_ckpt), str(photos), "--out", str(out), *FAST]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert images_in(out) == ["cam1\\wide.jpg", "tall.png"]
    coco = json.loads((out / "coco.json").read_text())
    assert {im["file_name"]: (im["width"], im["height"]) for im in coco["images"]}["cam1\\wide.jpg"] == (64, 36)


def test_unsupported_photo_types_are_counted_and_named_in_the_summary(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    fake_boxes(monkeypatch)
    photos = tmp_path / "photos"
    make_photos(photos)
    for name in ("b.gif", "c.heic", "sub/d.HEIC", "clip.wmv"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(b"not read")
    (photos / "notes.txt").write_text("field notes are not photos")
    out = tmp_path / "out"
    assert main(["predict", str(tiny_ckpt), str(photos), "--out", str(out), *FAST]) == 0
    summary = capsys.readouterr().out
    assert "2 images" in summary
    assert "4 file(s) of unsupported types skipped (b.gif, c.heic, clip.wmv and 1 more" in summary
    assert "notes.txt" not in summary

    # A folder holding nothing readable says what it did find.
    only = tmp_path / "only_heic"
    only.mkdir()
    (only / "x.heic").write_bytes(b"not read")
    assert main(["predict", str(tiny_ckpt), str(only), "--out", str(tmp_path / "o2"), *FAST]) == 2
    assert "1 file(s) of unsupported types skipped (x.heic" in capsys.readouterr().err
