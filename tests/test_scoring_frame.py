"""Scoring paths that used to give the wrong AP without an error: the image frame, the maxDets cap, unreadable val
images and the padding colour.

Most tests here use a *perfect detector*: the torchvision model's forward is replaced by one that finds the white
rectangles drawn on a black image, in whatever pixels it is given (eval-resized images, tiling windows). Whatever
the bookkeeping does to those boxes afterwards is then the only thing AP can measure: a perfect detector must
score AP50 1.0.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from test_trainer import tiny_config
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from birddet.cli import main
from birddet.data.coco import CocoDetection
from birddet.data.transforms import build_eval_transforms, build_train_transforms
from birddet.engine import distributed as D
from birddet.engine.checkpoint import save_checkpoint
from birddet.engine.detection import DetectionTask
from birddet.engine.reports import metrics_dict
from birddet.engine.runner import run_detector
from birddet.models.detector import build_detector

CATEGORIES = {1: "bird"}

# Image 1: a 400x300 file described as 800x450 (x factor 2, y factor 1.5); image 2: a 240x360 portrait file
# described as 300x600 (1.25, 1.667). Boxes are COCO [x, y, w, h] in the JSON's frame.
FRAME_IMAGES = [
    {"id": 1, "file": "wide.png", "file_size": (400, 300), "json_size": (800, 450)},
    {"id": 2, "file": "tall.png", "file_size": (240, 360), "json_size": (300, 600)},
]
FRAME_BOXES = {1: [[100, 90, 160, 120], [500, 240, 180, 150]], 2: [[40, 150, 120, 150], [150, 400, 100, 120]]}


def perfect_forward(self: GeneralizedRCNN, images: list[torch.Tensor], targets: Any = None) -> list[dict[str, Any]]:
    """Every white rectangle in each image, in that image's pixels, capped at the model's detections_per_img."""
    assert targets is None, "the perfect detector only predicts"
    out = []
    for image in images:
        mask = (image.float().mean(0) > 0.5).cpu().numpy().astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        boxes = [[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:n].tolist()]
        boxes = boxes[: self.roi_heads.detections_per_img]
        out.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.linspace(0.99, 0.5, max(len(boxes), 1))[: len(boxes)],
                "labels": torch.ones(len(boxes), dtype=torch.int64),
            }
        )
    return out


@pytest.fixture
def perfect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GeneralizedRCNN, "forward", perfect_forward)


def _write_split(root: Path, images: list[dict[str, Any]], boxes: dict[int, list[list[float]]]) -> Path:
    """White rectangles on black files of `file_size` at the JSON boxes mapped onto the file; the JSON as given."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    anns = []
    for img in images:
        (fw, fh), (jw, jh) = img["file_size"], img["json_size"]
        pixels = np.zeros((fh, fw, 3), np.uint8)
        for x, y, w, h in boxes[img["id"]]:
            x0, y0 = round(x * fw / jw), round(y * fh / jh)
            x1, y1 = round((x + w) * fw / jw), round((y + h) * fh / jh)
            pixels[y0:y1, x0:x1] = 255
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": 1, "bbox": [x, y, w, h]})
            anns[-1].update(area=w * h, iscrowd=0)
        Image.fromarray(pixels).save(root / "images" / img["file"])
    coco = {
        "images": [
            {"id": i["id"], "file_name": i["file"], "width": i["json_size"][0], "height": i["json_size"][1]}
            for i in images
        ],
        "annotations": anns,
        "categories": [{"id": 1, "name": "bird"}],
    }
    ann = root / "val.json"
    ann.write_text(json.dumps(coco))
    return ann


def _config(image_size: int = 512, detections_per_img: int = 100) -> Any:
    cfg = tiny_config(None)
    cfg.model.image_size = image_size
    cfg.model.roi_heads.detections_per_img = detections_per_img
    return cfg


def _checkpoint(path: Path, **kw: Any) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(path, build_detector(_config(**kw), CATEGORIES))


def _eval(ckpt: Path, ann: Path, out: Path, *flags: str) -> int:
    argv = ["eval", str(ckpt), "--ann", str(ann), "--images", str(ann.parent / "images"), "--out", str(out)]
    return main([*argv, "--no-plots", "--device", "cpu", "--workers", "0", *flags])


def _assert_results_match_gt(results: list[dict[str, Any]], boxes: dict[int, list[list[float]]], tol: float) -> None:
    by_image: dict[int, list[list[float]]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r["bbox"])
    assert set(by_image) == set(boxes)
    for image_id, expected in boxes.items():
        got = sorted(by_image[image_id])
        assert len(got) == len(expected)
        for g, e in zip(got, sorted(expected), strict=True):
            assert g == pytest.approx(e, abs=tol), image_id


# -- 1. results are in the JSON's frame -------------------------------------------------------------------------
@pytest.mark.parametrize("tile", [None, "512"], ids=["resized", "tiled"])
def test_eval_reports_a_file_of_another_size_in_the_json_frame(perfect, tmp_path: Path, capsys, tile) -> None:
    ann = _write_split(tmp_path / "data", FRAME_IMAGES, FRAME_BOXES)
    out = tmp_path / "eval"
    assert _eval(_checkpoint(tmp_path / "det.pt"), ann, out, *(["--tile", tile] if tile else [])) == 0, (
        capsys.readouterr().err
    )
    _assert_results_match_gt(json.loads((out / "results.json").read_text()), FRAME_BOXES, tol=3.0)
    stats = json.loads((out / "metrics.json").read_text())["stats"]
    assert stats["AP50"] == pytest.approx(1.0) and stats["AP75"] == pytest.approx(1.0)


def test_training_validation_scores_in_the_json_frame(perfect, tmp_path: Path) -> None:
    ann = _write_split(tmp_path / "data", FRAME_IMAGES, FRAME_BOXES)
    task = _task(_config(), ann)
    stats, _ = task.validate(task.build_model(None).eval())
    assert stats["AP50"] == pytest.approx(1.0) and stats["AP75"] == pytest.approx(1.0)


def test_run_detector_maps_each_axis_by_its_own_factor(perfect, tmp_path: Path) -> None:
    ann = _write_split(tmp_path / "data", FRAME_IMAGES, FRAME_BOXES)
    detector = build_detector(_config(image_size=256), CATEGORIES)
    ds = CocoDetection(ann, ann.parent / "images", build_eval_transforms(256), skip_bad_images=False)
    assert [ds[i][1]["orig_size"] for i in range(2)] == [(450, 800), (600, 300)]  # (h, w) of the JSON
    _assert_results_match_gt(run_detector(detector, ds), FRAME_BOXES, tol=6.0)


def test_two_stage_eval_scores_in_the_json_frame_and_crops_the_decoded_file(
    perfect, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_birder_file
) -> None:
    from birddet.engine.two_stage import evaluate_two_stage
    from birddet.pipeline.species import SpeciesClassifier

    ann = _write_split(tmp_path / "data", FRAME_IMAGES, FRAME_BOXES)
    gt = json.loads(ann.read_text())
    gt["categories"] = [{"id": 1, "name": "class_0"}, {"id": 2, "name": "class_1"}]
    ann.write_text(json.dumps(gt))
    classifier = make_birder_file("cls.pt", num_classes=2, image_size=(32, 32))
    crops: list[tuple[tuple[int, int], list[list[float]]]] = []
    real_crops = SpeciesClassifier.crops

    def spy(self: SpeciesClassifier, image: torch.Tensor, boxes: torch.Tensor) -> Any:
        crops.append((tuple(image.shape[-2:]), sorted(boxes.tolist())))
        return real_crops(self, image, boxes)

    monkeypatch.setattr(SpeciesClassifier, "crops", spy)
    det = save_checkpoint(tmp_path / "det.pt", build_detector(_config(), {1: "class_0", 2: "class_1"}))
    out = tmp_path / "eval"
    evaluate_two_stage(det, classifier, ann=ann, images=ann.parent / "images", out_dir=out, workers=0, plots=False)
    _assert_results_match_gt(json.loads((out / "results.json").read_text()), FRAME_BOXES, tol=3.0)
    files = {(h, w): img for img in FRAME_IMAGES for w, h in [img["file_size"]]}
    assert {shape for shape, _ in crops} == set(files)
    for shape, boxes in crops:  # the crops are cut where the birds are in the decoded file
        img = files[shape]
        (fw, fh), (jw, jh) = img["file_size"], img["json_size"]
        expected = sorted(
            [x * fw / jw, y * fh / jh, (x + w) * fw / jw, (y + h) * fh / jh] for x, y, w, h in FRAME_BOXES[img["id"]]
        )
        for g, e in zip(boxes, expected, strict=True):
            assert g == pytest.approx(e, abs=2.0)


# -- 4. maxDets follows the model's cap -------------------------------------------------------------------------
def _flock(root: Path) -> tuple[Path, dict[int, list[list[float]]]]:
    """One 640x480 image holding 300 birds of 24x24 px on a 32 px grid."""
    boxes = {1: [[32 * c + 4, 32 * r + 4, 24, 24] for r in range(15) for c in range(20)]}
    image = {"id": 1, "file": "flock.png", "file_size": (640, 480), "json_size": (640, 480)}
    return _write_split(root, [image], boxes), boxes


def _task(cfg: Any, ann: Path) -> DetectionTask:
    for split in (cfg.data.train, cfg.data.val):
        split.ann, split.images = str(ann), str(ann.parent / "images")
    task = DetectionTask(cfg, D.DistContext())
    task.build_data(None)
    return task


def test_validation_scores_as_many_boxes_as_the_model_keeps_and_records_it(perfect, tmp_path: Path) -> None:
    ann, _ = _flock(tmp_path / "data")
    task = _task(_config(image_size=640, detections_per_img=300), ann)
    stats, result = task.validate(task.build_model(None).eval())
    assert stats["AP"] == pytest.approx(1.0)  # scored at pycocotools' 100 it was 0.337
    assert metrics_dict(result)["max_dets"] == [1, 10, 300]


@pytest.mark.parametrize("tile", [None, "1024"], ids=["resized", "tiled"])
def test_eval_without_max_dets_scores_the_checkpoints_cap(perfect, tmp_path: Path, tile) -> None:
    ann, boxes = _flock(tmp_path / "data")
    out = tmp_path / "eval"
    ckpt = _checkpoint(tmp_path / "det.pt", image_size=640, detections_per_img=300)
    assert _eval(ckpt, ann, out, *(["--tile", tile] if tile else [])) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["max_dets"] == [1, 10, 300]
    assert metrics["stats"]["AP"] == pytest.approx(1.0)
    assert len(json.loads((out / "results.json").read_text())) == 300


def test_tiled_predict_keeps_detections_per_img_unless_max_dets_is_given(perfect, tmp_path: Path) -> None:
    ann, _ = _flock(tmp_path / "data")
    detector = build_detector(_config(image_size=256, detections_per_img=50), CATEGORIES)
    image = ann.parent / "images" / "flock.png"
    assert len(detector.predict(image, conf=0.0, tile=256)[0].scores) == 50  # windows hold 50 each, 300 merged
    assert len(detector.predict(image, conf=0.0, tile=256, max_dets=400)[0].scores) > 250


# -- 5. an unreadable val image stops eval, named -----------------------------------------------------------------
@pytest.mark.parametrize("workers", ["0", "1"])
def test_eval_stops_on_an_unreadable_image_with_one_line_naming_it(tmp_path: Path, capsys, workers) -> None:
    ann = _write_split(tmp_path / "data", FRAME_IMAGES, FRAME_BOXES)
    buf = io.BytesIO()
    Image.open(ann.parent / "images" / "wide.png").save(buf, "PNG")
    (ann.parent / "images" / "wide.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    out = tmp_path / "eval"
    code = _eval(_checkpoint(tmp_path / "det.pt", image_size=128), ann, out, "--workers", workers)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("eval:")]  # not tqdm's bar
    assert len(lines) == 1 and lines[0].startswith("birddet: error: "), err
    assert "wide.png" in lines[0] and "image id 1 " in lines[0] and "remove image id 1 " in lines[0]
    assert not (out / "results.json").exists()


def test_run_detector_refuses_a_dataset_that_substitutes_bad_images(tmp_path: Path) -> None:
    ann = _write_split(tmp_path / "data", FRAME_IMAGES, FRAME_BOXES)
    substituting = CocoDetection(ann, ann.parent / "images", build_eval_transforms(128))
    with pytest.raises(ValueError, match="skip_bad_images=False"):
        run_detector(build_detector(_config(image_size=128), CATEGORIES), substituting)


# -- 7. padding is the model's mean in training, eval and predict ------------------------------------------------
STATS = {"mean": [0.2, 0.5, 0.8], "std": [0.25, 0.2, 0.3]}


def test_training_pads_with_the_value_eval_and_predict_pad_with(tmp_path: Path) -> None:
    ann = _write_split(tmp_path / "data", FRAME_IMAGES, FRAME_BOXES)
    cfg = _config(image_size=128)
    cfg.model.rgb_stats = STATS
    cfg.data.augment.scale_range, cfg.data.augment.hflip, cfg.data.augment.color_jitter = [0.5, 0.5], 0.0, 0.0
    task = _task(cfg, ann)
    detector = task.build_model(None).eval()
    normalize = detector.model.transform.normalize
    image, _ = task.train_set[0]  # the 16:9 photo at half scale: the bottom and right are padding
    train_pad = normalize(image)[:, -8:, -8:]
    # Eval and predict: torchvision pads the normalised batch (a 16:9 image in a 128 px square) with 0.
    eval_image, _ = CocoDetection(ann, ann.parent / "images", build_eval_transforms(128), skip_bad_images=False)[0]
    batch = detector.model.transform([eval_image])[0].tensors[0]
    assert torch.count_nonzero(batch[:, -8:, :]) == 0
    # The same value up to uint8 rounding of the mean (half a grey level over the std).
    tolerance = 0.5 / 255 / min(STATS["std"]) + 1e-6
    assert train_pad.abs().max() <= tolerance, train_pad.abs().amax(dim=(1, 2))


def test_mosaic_pads_with_the_models_mean_too() -> None:
    from birddet.data.transforms import pad_fill

    t = build_train_transforms(64, scale_range=(0.5, 0.5), hflip=0.0, color_jitter=0.0, mosaic=1.0, rgb_stats=STATS)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (40, 90, 3), dtype=np.uint8)
    extra = [(photo, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))] * 3
    np.random.seed(0)
    image, _, _ = t(photo, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), extra)
    corner = (image[:, -1, -1] * 255).round().tolist()
    assert corner == list(pad_fill(STATS)) == [51, 128, 204]
