"""`birddet predict` end to end: odd image files, output formats, batching, resume, interrupts, unsafe checkpoints.

A tiny detector with random weights at 128 px and a tiny 32 px classifier keep every run under a few seconds.
Random detectors put boxes anywhere, so tests that need known boxes replace `BirdDetector.predict` with a fake
that returns fixed boxes relative to each input's size (and records what it was given).
"""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import megadetector_validate
from PIL import Image
from pycocotools.coco import COCO
from test_species import AVES, write_tiny_classifier

from birddet.cli import main
from birddet.config import config_from_dict
from birddet.engine.checkpoint import save_checkpoint
from birddet.models.detector import BirdDetector, Prediction, build_detector
from birddet.pipeline.predict import PROGRESS_NAME, PredictOptions, run_prediction
from birddet.pipeline.species import SpeciesClassifier
from birddet.pipeline.writers import CSV_COLUMNS

CATEGORIES = {5: "songbird", 17: "wader"}
GOOD = ["rgb.jpg", "cmyk.jpg", "grey.png", "grey16.png", "rgba.png", "palette.png", "rotated.jpg", "sub/deep.JPG"]
BAD = ["truncated.jpg", "empty.jpg", "not_image.png", "huge.png"]


def _tiny_config(weights: str | None = None) -> dict:
    backbone: dict = {"preset": "vit_reg4_tiny16_rms_avg"}
    if weights:
        backbone["weights"] = weights
    return {
        "model": {
            "backbone": backbone,
            "image_size": 128,
            "pyramid": {"out_channels": 32},
            "rpn": {"pre_nms_top_n_test": 100, "post_nms_top_n_test": 50},
            "roi_heads": {"representation_size": 64, "detections_per_img": 20},
        }
    }


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height``: enough for the size check, no pixel data needed."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def _make_images(root: Path) -> Path:
    rng = np.random.default_rng(0)

    def noise(w: int, h: int) -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    root.mkdir(parents=True, exist_ok=True)
    noise(128, 96).save(root / "rgb.jpg")
    noise(112, 80).convert("CMYK").save(root / "cmyk.jpg")
    noise(100, 100).convert("L").save(root / "grey.png")
    Image.fromarray((rng.integers(0, 65536, (90, 120))).astype(np.uint16)).save(root / "grey16.png")
    rgba = noise(96, 96).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "rgba.png")
    noise(80, 120).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png")
    # Stored landscape 160x96 with orientation 6 (rotate 90 on display): displayed portrait 96x160.
    exif = Image.Exif()
    exif[0x0112] = 6
    noise(160, 96).save(root / "rotated.jpg", exif=exif)
    (root / "sub").mkdir(exist_ok=True)
    noise(64, 64).save(root / "sub" / "deep.JPG")
    buf = io.BytesIO()
    noise(128, 128).save(buf, "JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "not_image.png").write_text("this is text, not a PNG")
    _png_header_only(root / "huge.png", 13000, 12000)  # over our limit, under Pillow's
    return root


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Images, a classifier file, and two checkpoints: random-init backbone, and backbone from the classifier."""
    base = tmp_path_factory.mktemp("predict")
    images = _make_images(base / "images")
    clf = write_tiny_classifier(base / "species.pt")
    torch.manual_seed(0)
    plain = build_detector(config_from_dict(_tiny_config()), CATEGORIES)
    torch.manual_seed(0)
    from_clf = build_detector(config_from_dict(_tiny_config(str(clf))), CATEGORIES)
    return {
        "images": images,
        "classifier": clf,
        "ckpt": save_checkpoint(base / "plain.pt", plain),
        "ckpt_clf": save_checkpoint(base / "from_classifier.pt", from_clf),
    }


def fake_boxes(
    monkeypatch: pytest.MonkeyPatch, *, fail_after: int | None = None, exc: type[BaseException] = RuntimeError
) -> list[list[tuple[int, int]]]:
    """Replace the detector with two fixed boxes per image (scores 0.9 and 0.05); return the (w, h) seen per call."""
    calls: list[list[tuple[int, int]]] = []

    def predict(self: BirdDetector, images: list[torch.Tensor], **_: object) -> list[Prediction]:
        if fail_after is not None and len(calls) >= fail_after:
            raise exc("injected failure")
        calls.append([(int(t.shape[-1]), int(t.shape[-2])) for t in images])
        out = []
        for t in images:
            h, w = t.shape[-2:]
            boxes = torch.tensor([[0.1 * w, 0.2 * h, 0.5 * w, 0.9 * h], [0.6 * w, 0.0, 1.0 * w, 0.3 * h]])
            out.append(Prediction(boxes, torch.tensor([0.9, 0.05]), [5, 17], ["songbird", "wader"], (w, h)))
        return out

    monkeypatch.setattr(BirdDetector, "predict", predict)
    return calls


def _read(out: Path) -> tuple[dict, dict, list[dict]]:
    md = json.loads((out / "megadetector.json").read_text())
    coco = json.loads((out / "coco.json").read_text())
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return md, coco, rows


def test_odd_images_are_converted_and_bad_ones_become_failures_in_every_format(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "predict", str(assets["ckpt"]), str(assets["images"]), "--out", str(out), "--classifier",
            str(assets["classifier"]), "--conf", "0.0", "--classify-conf", "0.0", "--top-k", "2",
            "--workers", "2", "--batch-size", "3", "--save-images",
        ]
    )  # fmt: skip
    assert rc == 0
    md, coco, rows = _read(out)

    # MegaDetector 1.4: fields, ranges, one entry per file, failures with a reason and null detections; and
    # MegaDetector's own validator accepts the file.
    assert md["info"]["format_version"] == "1.4"
    megadetector_validate(out / "megadetector.json")
    assert md["detection_categories"] == {"5": "songbird", "17": "wader"}
    by_file = {im["file"]: im for im in md["images"]}
    assert sorted(by_file) == sorted(GOOD + BAD)
    for name in BAD:
        assert by_file[name]["detections"] is None and by_file[name]["failure"]
    assert "empty" in by_file["empty.jpg"]["failure"]
    assert "truncated" in by_file["truncated.jpg"]["failure"]
    assert "exceeds" in by_file["huge.png"]["failure"]
    n_dets = 0
    for name in GOOD:
        assert "failure" not in by_file[name]
        for det in by_file[name]["detections"]:
            n_dets += 1
            x, y, w, h = det["bbox"]
            assert 0 <= x <= 1 and 0 <= y <= 1 and 0 <= w <= 1 - x + 1e-4 and 0 <= h <= 1 - y + 1e-4
            assert 0 <= det["conf"] <= 1 and det["category"] in md["detection_categories"]
            assert len(det["classifications"]) == 2
            for cls_id, score in det["classifications"]:
                assert cls_id in md["classification_categories"] and 0 <= score <= 1
    assert n_dets > 0

    # COCO: pycocotools loads it; sizes are the displayed ones (EXIF applied); boxes stay inside the image.
    api = COCO(str(out / "coco.json"))
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in coco["images"]}
    assert sorted(sizes) == sorted(GOOD)
    assert sizes["rotated.jpg"] == (96, 160)
    assert sizes["cmyk.jpg"] == (112, 80) and sizes["grey16.png"] == (120, 90)
    for ann in coco["annotations"]:
        w, h = next((im["width"], im["height"]) for im in coco["images"] if im["id"] == ann["image_id"])
        x, y, bw, bh = ann["bbox"]
        assert x >= 0 and y >= 0 and x + bw <= w + 0.01 and y + bh <= h + 0.01
    if coco["annotations"]:
        api.loadRes(coco["annotations"])

    # CSV: header, one row per detection plus one per failure and one per image without detections.
    with open(out / "predictions.csv", encoding="utf-8") as fh:
        assert next(csv.reader(fh)) == list(CSV_COLUMNS)
    assert sum(1 for r in rows if r["failure"]) == len(BAD)
    assert sum(1 for r in rows if not r["failure"] and r["count"] != "0") == n_dets

    # Annotated copies keep the relative path; the rotated one is drawn upright.
    for name in GOOD:
        assert (out / "images" / name).is_file()
    with Image.open(out / "images" / "rotated.jpg") as im:
        assert im.size == (96, 160)


def test_known_boxes_are_written_in_displayed_pixels_and_only_confident_ones_are_classified(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_boxes(monkeypatch)
    out = tmp_path / "out"
    opts = PredictOptions(conf=0.0, classifier=str(assets["classifier"]), classify_conf=0.5, workers=0)
    run_prediction(assets["ckpt"], [assets["images"] / "rotated.jpg"], out, opts)
    assert calls == [[(96, 160)]]  # the detector saw the image upright
    md, coco, rows = _read(out)
    (ann1, ann2) = coco["annotations"]
    assert ann1["bbox"] == pytest.approx([9.6, 32.0, 38.4, 112.0], abs=0.01)
    assert ann2["species_index"] is None  # score 0.05 < classify_conf
    det1, det2 = md["images"][0]["detections"]
    assert det1["bbox"] == pytest.approx([0.1, 0.2, 0.4, 0.7], abs=1e-4)
    assert "classifications" in det1 and "classifications" not in det2
    assert rows[0]["species"] and not rows[1]["species"]
    assert rows[0]["rollup_rank"] in {"species", "genus", "family", "order", "class", "phylum", "kingdom"}


def test_crops_of_a_whole_batch_go_to_the_classifier_in_one_call(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_boxes(monkeypatch)
    sizes: list[int] = []
    original = SpeciesClassifier.classify

    def spy(self: SpeciesClassifier, crops: torch.Tensor) -> list:
        sizes.append(int(crops.shape[0]))
        return original(self, crops)

    monkeypatch.setattr(SpeciesClassifier, "classify", spy)
    opts = PredictOptions(conf=0.0, classifier=str(assets["classifier"]), batch_size=4, workers=0)
    run_prediction(assets["ckpt"], [assets["images"]], tmp_path / "out", opts)
    # 12 files in batches of 4, each batch with readable images: one classifier call per batch, holding the one
    # box per image that passes classify_conf (0.9; the 0.05 box is not classified), from several images at once.
    assert sum(sizes) == len(GOOD)
    assert len(sizes) == 3 and max(sizes) > 1


def test_taxon_restricts_species_to_that_taxon(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "predict", str(assets["ckpt"]), str(assets["images"] / "rgb.jpg"), "--out", str(out),
            "--classifier", str(assets["classifier"]), "--conf", "0.0", "--classify-conf", "0.0",
            "--taxon", "Aves", "--workers", "0",
        ]
    )  # fmt: skip
    assert rc == 0
    md, _, _ = _read(out)
    dets = md["images"][0]["detections"]
    assert dets
    for det in dets:
        ids = {int(c) for c, _ in det["classifications"]}
        assert ids <= AVES and len(det["classifications"]) == 3
        assert sum(s for _, s in det["classifications"]) == pytest.approx(1.0, abs=0.01)


def test_default_classifier_is_the_detectors_birder_backbone_file(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_boxes(monkeypatch)
    out = tmp_path / "out"
    run_prediction(assets["ckpt_clf"], [assets["images"] / "rgb.jpg"], out, PredictOptions(workers=0))
    md, _, _ = _read(out)
    assert md["info"]["classifier"] == str(assets["classifier"])
    assert "classifications" in md["images"][0]["detections"][0]


def test_random_init_detector_runs_detection_only_with_a_warning(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_boxes(monkeypatch)
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        run_prediction(assets["ckpt"], [assets["images"] / "rgb.jpg"], out, PredictOptions(workers=0))
    assert "no species classifier" in caplog.text
    md, coco, rows = _read(out)
    assert "classifier" not in md["info"] and "classification_categories" not in md
    assert all("classifications" not in d for d in md["images"][0]["detections"])
    assert rows[0]["category"] == "songbird" and rows[0]["species"] == ""


def test_list_entries_that_are_missing_become_failures(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_boxes(monkeypatch)
    lst = tmp_path / "list.txt"
    lst.write_text(f"{assets['images'] / 'rgb.jpg'}\nnowhere/missing.jpg\n")
    out = tmp_path / "out"
    run_prediction(assets["ckpt"], [lst], out, PredictOptions(workers=0, formats=["megadetector"]))
    md = json.loads((out / "megadetector.json").read_text())
    failures = {im["file"]: im.get("failure") for im in md["images"]}
    assert failures["nowhere/missing.jpg"] and "not found" in failures["nowhere/missing.jpg"]
    assert not (out / "coco.json").exists()


def _strip_times(data: dict) -> dict:
    info = data.get("info", {})
    for key in ("detection_completion_time", "classification_completion_time", "date_created"):
        info.pop(key, None)
    return data


def test_resume_after_a_crash_continues_and_matches_a_clean_run(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = [assets["images"]]
    opts = dict(conf=0.0, classify_conf=0.0, classifier=str(assets["classifier"]), batch_size=1, workers=0)
    run_prediction(assets["ckpt"], sources, tmp_path / "clean", PredictOptions(**opts, checkpoint_every=1))

    # Crash after 3 detector calls (bad files need no call, so more than 3 images are finished).
    with monkeypatch.context() as m:
        real = BirdDetector.predict
        count = {"n": 0}

        def crashing(self: BirdDetector, *args: object, **kwargs: object) -> list[Prediction]:
            if count["n"] == 3:
                raise RuntimeError("injected crash")
            count["n"] += 1
            return real(self, *args, **kwargs)

        m.setattr(BirdDetector, "predict", crashing)
        with pytest.raises(RuntimeError, match="injected crash"):
            run_prediction(assets["ckpt"], sources, tmp_path / "resumed", PredictOptions(**opts, checkpoint_every=1))
    lines = (tmp_path / "resumed" / PROGRESS_NAME).read_text().splitlines()
    finished = [json.loads(x) for x in lines[1:]]
    assert sum(r["failure"] is None for r in finished) == 3

    seen: list[int] = []
    real = BirdDetector.predict

    def counting(self: BirdDetector, images: list[torch.Tensor], **kwargs: object) -> list[Prediction]:
        seen.append(len(images))
        return real(self, images, **kwargs)

    monkeypatch.setattr(BirdDetector, "predict", counting)
    run_prediction(assets["ckpt"], sources, tmp_path / "resumed", PredictOptions(**opts, resume=True))
    assert sum(seen) == len(GOOD) - 3  # finished images were not detected again

    clean, resumed = _read(tmp_path / "clean"), _read(tmp_path / "resumed")
    assert _strip_times(resumed[0]) == _strip_times(clean[0])
    assert _strip_times(resumed[1]) == _strip_times(clean[1])
    assert resumed[2] == clean[2]


def test_resume_with_other_settings_is_refused(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_boxes(monkeypatch)
    src = [assets["images"] / "rgb.jpg"]
    run_prediction(assets["ckpt"], src, tmp_path / "out", PredictOptions(workers=0, conf=0.2))
    rc = main(
        ["predict", str(assets["ckpt"]), str(src[0]), "--out", str(tmp_path / "out"), "--resume", "--conf", "0.3"]
    )
    assert rc == 2


def test_ctrl_c_writes_outputs_for_the_finished_images(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_boxes(monkeypatch, fail_after=2, exc=KeyboardInterrupt)
    out = tmp_path / "out"
    good = [str(assets["images"] / n) for n in GOOD[:4]]
    rc = main(["predict", str(assets["ckpt"]), *good, "--out", str(out), "--batch-size", "1", "--workers", "0"])
    assert rc == 130
    md, coco, _ = _read(out)
    assert [im["file"] for im in md["images"]] == [Path(g).name for g in good[:2]]
    assert len(coco["images"]) == 2


@pytest.mark.parametrize("what", ["missing", "unsafe"])
def test_missing_or_unsafe_checkpoint_exits_2_without_running_it(
    assets: dict[str, Path], tmp_path: Path, what: str
) -> None:
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt.pt"
    if what == "unsafe":

        class Payload:
            def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
                return (open, (str(marker), "w"))

        torch.save({"model": Payload(), "config": {}, "categories": {}}, ckpt)
    out = tmp_path / "out"
    rc = main(["predict", str(ckpt), str(assets["images"] / "rgb.jpg"), "--out", str(out)])
    assert rc == 2
    assert not marker.exists()
    assert not (out / "megadetector.json").exists()


def test_unavailable_cuda_device_is_an_input_error(assets: dict[str, Path], tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    rc = main(["predict", str(assets["ckpt"]), str(assets["images"]), "--out", str(tmp_path / "o"), "--device", "cuda"])
    assert rc == 2


def test_tiled_dense_predict_writes_every_box_and_counts(assets: dict[str, Path], tmp_path: Path) -> None:
    """A real (random) detector, tiled, with the cap lifted: every box reaches MegaDetector JSON, COCO and CSV."""
    src = assets["images"] / "rgb.jpg"
    out = tmp_path / "out"
    argv = ["predict", str(assets["ckpt"]), str(src), "--out", str(out), "--no-classifier", "--workers", "0"]
    rc = main([*argv, "--conf", "0.0", "--tile", "64", "--tile-overlap", "0.5", "--merge", "nmm", "--max-dets", "150"])
    assert rc == 0
    md, coco, rows = _read(out)
    n = len(md["images"][0]["detections"])
    assert 20 < n <= 150  # beyond the checkpoint's detections_per_img (20): windows add up
    assert len(coco["annotations"]) == n and len(rows) == n
    assert {r["count"] for r in rows} == {str(n)}
    settings = json.loads((out / PROGRESS_NAME).read_text().splitlines()[0])["settings"]
    assert settings["tile"] == 64 and settings["merge"] == "nmm" and settings["max_dets"] == 150
    # a resume must use the same tiling
    assert main([*argv, "--conf", "0.0", "--tile", "64", "--merge", "nms", "--max-dets", "150", "--resume"]) == 2


def test_save_images_draws_only_boxes_above_draw_conf(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import birddet.pipeline.predict as predict_module

    drawn: list[list[float]] = []
    monkeypatch.setattr(
        predict_module, "save_annotated", lambda img, dets, *a, **k: drawn.append([d.score for d in dets])
    )
    fake_boxes(monkeypatch)  # scores 0.9 and 0.05 per image
    src = [assets["images"] / "rgb.jpg"]
    opts = PredictOptions(workers=0, conf=0.01, save_images=True, use_classifier=False)
    run_prediction(assets["ckpt"], src, tmp_path / "out", opts)
    md, _, _ = _read(tmp_path / "out")
    assert len(md["images"][0]["detections"]) == 2  # files keep everything >= --conf
    assert drawn == [[pytest.approx(0.9)]]  # the picture shows only >= --draw-conf (0.3)


def test_bad_tiling_options_exit_2(assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = str(assets["images"] / "rgb.jpg")
    for extra in (["--tile", "8"], ["--tile", "256", "--tile-overlap", "1.5"], ["--max-dets", "0"]):
        assert main(["predict", str(assets["ckpt"]), src, "--out", str(tmp_path / "o"), *extra]) == 2
        assert "Traceback" not in capsys.readouterr().err
