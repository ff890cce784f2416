"""Tests that catch the one-line bugs of `tools/mutate.py` (issue 18): each asserts the numbers, files or pixels a user
relies on, in the shapes where a wrong line shows.

Axes matter only when they differ, so images are 16:9 and portrait, and resize factors differ per axis. Categories
matter only when a file numbers them differently from another, so val files renumber and reorder them. A crop is
checked by its pixels: each image carries a solid colour in a known box, and the crop the classifier receives must
show that colour at its centre; "inside the image" would pass for a crop of the wrong box or image.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from test_species import write_tiny_classifier

from birddet.backbone.presets import get_preset
from birddet.backbone.vit import ViT
from birddet.backbone.weights import save_birder_file
from birddet.data.coco import CategoryMap, CocoDetection
from birddet.data.crops import CocoCrops, KeepPixels
from birddet.engine import budget as B
from birddet.engine.evaluator import evaluate, load_ground_truth
from birddet.engine.trainer import SeededDataset
from birddet.engine.two_stage import MATCH_IOU, classifier_top1_on_matches, merge_labels
from birddet.models.classifier import CROP_MARGIN, crops_for_classifier, square_crop_box
from birddet.models.detector import BirdDetector, Prediction, coco_results, rescale_boxes
from birddet.pipeline.species import SpeciesClassifier
from birddet.pipeline.tiling import to_image_coords

GREY = (128, 128, 128)


def _image(width: int, height: int, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> np.ndarray:
    """HxWx3 uint8: grey, with `colour` filling the xyxy `box`."""
    pixels = np.full((height, width, 3), GREY, dtype=np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = colour
    return pixels


def _centre_colour(crop: torch.Tensor, rgb_stats: dict[str, list[float]] | None = None) -> list[float]:
    """Mean RGB (0-255) of the central 4x4 pixels of a [3, H, W] crop (normalised ones are mapped back first)."""
    c = crop.float()
    if rgb_stats is not None:
        mean = torch.tensor(rgb_stats["mean"]).view(3, 1, 1)
        std = torch.tensor(rgb_stats["std"]).view(3, 1, 1)
        c = (c * std + mean) * 255.0
    h, w = c.shape[-2:]
    return c[:, h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2].mean(dim=(1, 2)).tolist()


def _assert_crop_of(crop: torch.Tensor, name: str, root: Path, rgb_stats: dict[str, list[float]]) -> None:
    """`crop` (normalised, as the classifier receives it) is the crop rule applied to image `name`'s known box: the
    same pixels, and the box's colour at its centre."""
    _, _, _, box, colour = next(b for b in BATCH if b[0] == name)
    image = torch.from_numpy(np.array(Image.open(root / name).convert("RGB"))).permute(2, 0, 1)
    expected = crops_for_classifier(image, torch.tensor([box], dtype=torch.float32), tuple(crop.shape[-2:]), rgb_stats)
    torch.testing.assert_close(crop, expected[0], msg=f"the crop of {name} is not the crop of its box {box}")
    got = _centre_colour(crop, rgb_stats)
    assert got == pytest.approx(list(colour), abs=3.0), f"{name}: crop centre is {got}, the box is {colour}"


# -- per-axis rescale -------------------------------------------------------------------------------------------------
def test_boxes_of_a_file_stored_at_another_size_scale_per_axis(tmp_path):
    # The JSON says 640x360 (16:9); the file on disk is 320x240: x shrinks by 1/2, y by 2/3.
    Image.fromarray(_image(320, 240, (32, 24, 96, 72), (200, 30, 30))).save(tmp_path / "a.png")
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 640, "height": 360}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [64, 36, 128, 72], "area": 9216, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "songbird"}],
    }  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    image, target = CocoDetection(tmp_path / "ann.json", tmp_path, KeepPixels(), skip_bad_images=False)[0]
    assert tuple(image.shape) == (3, 240, 320)
    torch.testing.assert_close(target["boxes"], torch.tensor([[32.0, 24.0, 96.0, 72.0]]))


def test_detections_map_back_to_the_original_image_per_axis():
    # A 320x180 network input of a 960x360 photo: x grows 3 times, y 2 times.
    boxes = torch.tensor([[32.0, 18.0, 64.0, 36.0], [300.0, 150.0, 320.0, 180.0]])
    out = rescale_boxes(boxes, (180, 320), (360, 960))
    torch.testing.assert_close(out, torch.tensor([[96.0, 36.0, 192.0, 72.0], [900.0, 300.0, 960.0, 360.0]]))


def test_eval_results_are_rescaled_to_the_original_size_per_axis():
    from birddet.engine.runner import to_coco_results

    out = {
        "boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0]]),
        "labels": torch.tensor([1]),
        "scores": torch.tensor([0.9]),
    }
    # A 200x100 network input of a 100x60 original: x by 1/2, y by 3/5.
    (r,) = to_coco_results(out, torch.zeros(3, 100, 200), {"image_id": 7, "orig_size": (60, 100)}, [0, 4])
    assert (r["image_id"], r["category_id"]) == (7, 4)
    assert r["bbox"] == pytest.approx([5.0, 12.0, 20.0, 24.0])


# -- the crop rule ----------------------------------------------------------------------------------------------------
def test_crop_margin_is_the_documented_15_percent_of_the_longer_side():
    assert CROP_MARGIN == 0.15
    # 40x20 box in a 16:9 image: the square side is 40 * (1 + 2 * 0.15) = 52 about the box centre (120, 70).
    assert square_crop_box([100, 60, 140, 80], (320, 180)) == (94, 44, 146, 96)
    # Portrait: the longer side is the height, 30 -> 39, about (50, 200).
    assert square_crop_box([40, 185, 60, 215], (180, 320)) == (30, 180, 70, 220)  # rounded: 30.5 -> 30, 69.5 -> 70


def test_a_crop_at_the_bottom_of_a_landscape_image_is_shifted_back_inside():
    # 16x28 box at the bottom right of 320x180: the 36.4 px square is moved up and left to end at the borders.
    assert square_crop_box([300, 150, 316, 178], (320, 180)) == (284, 144, 320, 180)
    # And at the right of a portrait image.
    assert square_crop_box([150, 300, 178, 316], (180, 320)) == (144, 284, 180, 320)


def test_training_crops_and_predict_crops_use_the_default_margin(tmp_path):
    import inspect

    assert inspect.signature(CocoCrops).parameters["margin"].default == CROP_MARGIN
    assert inspect.signature(SpeciesClassifier).parameters["margin"].default == CROP_MARGIN


# -- classifier val categories ----------------------------------------------------------------------------------------
def _split(path: Path, images: list[tuple[str, int, int]], anns: list[tuple[int, str]], cats: dict[int, str]) -> Path:
    """A COCO file: `images` (file, width, height); `anns` (image index, category name) with one box each."""
    ids = {name.casefold(): cid for cid, name in cats.items()}
    coco = {
        "images": [{"id": i + 1, "file_name": f, "width": w, "height": h} for i, (f, w, h) in enumerate(images)],
        "annotations": [
            {"id": k + 1, "image_id": i + 1, "category_id": ids[name.casefold()], "bbox": [10 + 30 * k, 10, 20, 30],
             "area": 600, "iscrowd": 0}
            for k, (i, name) in enumerate(anns)
        ],
        "categories": [{"id": cid, "name": name} for cid, name in cats.items()],
    }  # fmt: skip
    path.write_text(json.dumps(coco))
    return path


def test_classifier_val_categories_are_matched_by_name_not_by_position(tmp_path):
    Image.fromarray(_image(320, 180, (0, 0, 1, 1), GREY)).save(tmp_path / "wide.png")
    Image.fromarray(_image(180, 320, (0, 0, 1, 1), GREY)).save(tmp_path / "tall.png")
    images = [("wide.png", 320, 180), ("tall.png", 180, 320)]
    train = _split(
        tmp_path / "train.json",
        images,
        [(0, "songbird"), (0, "wader"), (1, "raptor"), (1, "songbird")],
        {1: "songbird", 2: "wader", 3: "raptor"},
    )
    # val numbers and lists its categories its own way: by position, wader would be songbird, raptor wader, ...
    val = _split(
        tmp_path / "val.json",
        images,
        [(0, "wader"), (0, "raptor"), (1, "songbird"), (1, "wader")],
        {30: "Raptor", 10: "wader", 20: "Songbird"},
    )
    train_set = CocoCrops(train, tmp_path, size=32)
    assert train_set.class_names == ["songbird", "wader", "raptor"]
    val_set = CocoCrops(val, tmp_path, size=32, class_names=train_set.class_names)
    assert [train_set.class_names[label] for label in val_set.labels] == ["wader", "raptor", "songbird", "wader"]
    assert val_set.class_counts() == [1, 2, 1]


# -- the budget clock -------------------------------------------------------------------------------------------------
def test_cpu_budget_clock_counts_process_time_and_wall_clock_real_time(monkeypatch):
    now = {"wall": 100.0, "cpu": 5.0}
    monkeypatch.setattr(B, "time", SimpleNamespace(perf_counter=lambda: now["wall"], process_time=lambda: now["cpu"]))
    cpu, wall = B.BudgetClock("cpu"), B.BudgetClock("wall")
    keeper = B.BudgetKeeper(1.0, clock="cpu")
    now["wall"] += 30.0  # another process had the CPU: 30 s passed, this process ran for 2 of them
    now["cpu"] += 2.0
    assert (cpu.elapsed(), wall.elapsed(), keeper.elapsed()) == (2.0, 30.0, 2.0)
    assert B.BudgetClock("cpu", offset_s=7.0).elapsed() == 7.0  # a resumed run adds what it had spent


# -- cropping boxes from the right image of a batch -------------------------------------------------------------------
#: Three images of different shapes, each with a solid box: (file, width, height, box xyxy, colour).
BATCH = [
    ("a_wide.png", 320, 180, (40, 30, 120, 110), (220, 40, 40)),
    ("b_tall.png", 180, 320, (20, 150, 100, 230), (40, 200, 60)),
    ("c_four_three.png", 240, 180, (150, 60, 210, 150), (50, 60, 230)),
]


@pytest.fixture(scope="module")
def batch_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batch")
    for name, w, h, box, colour in BATCH:
        Image.fromarray(_image(w, h, box, colour)).save(root / name)  # PNG: the colours survive exactly
    return root


def _spy_crops(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Record the normalised crops and the probabilities of every classifier pass."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = SpeciesClassifier.probabilities

    def spy(self: SpeciesClassifier, crops: torch.Tensor) -> torch.Tensor:
        probs = real(self, crops)
        seen.append((crops.detach().cpu().clone(), probs.detach().cpu().clone()))
        return probs

    monkeypatch.setattr(SpeciesClassifier, "probabilities", spy)
    return seen


def test_classify_images_crops_each_box_from_its_own_image(batch_files, tmp_path, monkeypatch):
    species = SpeciesClassifier.load(write_tiny_classifier(tmp_path / "species.pt"))
    seen = _spy_crops(monkeypatch)
    images = [torch.from_numpy(np.array(Image.open(batch_files / f))).permute(2, 0, 1) for f, *_ in BATCH]
    boxes = [torch.tensor([box], dtype=torch.float32) for _, _, _, box, _ in BATCH]
    per_image = species.classify_images(images, boxes)
    assert [len(r) for r in per_image] == [1, 1, 1]
    (crops, _), = seen  # fmt: skip
    for crop, (name, *_) in zip(crops, BATCH, strict=True):
        _assert_crop_of(crop, name, batch_files, species.info.rgb_stats)


def test_predict_crops_each_box_from_its_own_image_of_the_batch(batch_files, tmp_path, monkeypatch):
    from test_predict import CATEGORIES, _read, _tiny_config

    from birddet.config import config_from_dict
    from birddet.engine.checkpoint import save_checkpoint
    from birddet.models.detector import build_detector
    from birddet.pipeline.predict import PredictOptions, run_prediction

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "det.pt", build_detector(config_from_dict(_tiny_config()), CATEGORIES))
    by_size = {(w, h): box for _, w, h, box, _ in BATCH}

    def predict(self: BirdDetector, images: list[torch.Tensor], **_: object) -> list[Prediction]:
        out = []
        for t in images:
            h, w = t.shape[-2:]
            # score exactly classify_conf: "at least classify_conf" is classified
            out.append(Prediction(torch.tensor([by_size[(w, h)]], dtype=torch.float32), torch.tensor([0.5]), [5],
                                  ["songbird"], (w, h)))  # fmt: skip
        return out

    monkeypatch.setattr(BirdDetector, "predict", predict)
    seen = _spy_crops(monkeypatch)
    clf = write_tiny_classifier(tmp_path / "species.pt")
    opts = PredictOptions(conf=0.0, classifier=str(clf), classify_conf=0.5, batch_size=3, workers=0, device="cpu")
    run_prediction(ckpt, [batch_files / f for f, *_ in BATCH], tmp_path / "out", opts)

    assert len(seen) == 1 and seen[0][0].shape[0] == 3  # one pass for the batch, one crop per image
    rgb_stats = SpeciesClassifier.load(clf).info.rgb_stats
    for crop, (name, *_) in zip(seen[0][0], BATCH, strict=True):
        _assert_crop_of(crop, name, batch_files, rgb_stats)
    _, coco, rows = _read(tmp_path / "out")
    files = {im["id"]: Path(im["file_name"]).name for im in coco["images"]}
    written = {files[a["image_id"]]: a["bbox"] for a in coco["annotations"]}
    for name, _, _, (x0, y0, x1, y1), _ in BATCH:
        assert written[name] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.01), name
    assert all(r["species"] for r in rows)  # every box was classified


# -- eval --classifier ------------------------------------------------------------------------------------------------
def _two_class_classifier(path: Path, names: list[str]) -> Path:
    torch.manual_seed(0)
    net = ViT(get_preset("vit_reg4_tiny16_rms_avg"), num_classes=len(names), image_size=(32, 32))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    stats = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    return save_birder_file(net, path, class_to_idx={n: i for i, n in enumerate(names)}, rgb_stats=stats)


def test_eval_with_classifier_crops_each_xywh_box_from_its_image(batch_files, tmp_path, monkeypatch):
    from test_eval_command import _checkpoint

    from birddet.engine import runner
    from birddet.engine.two_stage import evaluate_two_stage

    species = {1: "songbird", 2: "wader"}
    gt = {
        "images": [{"id": i + 1, "file_name": f, "width": w, "height": h} for i, (f, w, h, _, _) in enumerate(BATCH)],
        "annotations": [
            {"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 2, "bbox": [x0, y0, x1 - x0, y1 - y0],
             "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
            for i, (_, _, _, (x0, y0, x1, y1), _) in enumerate(BATCH)
        ],
        "categories": [{"id": k, "name": v} for k, v in species.items()],
    }  # fmt: skip
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(gt))
    # The detector finds each bird exactly, in COCO [x, y, w, h]; image 1's bird twice, under both labels and
    # shifted by 4 px (IoU 0.82 > roi_heads.nms_thresh 0.5): one bird, one result.
    detections = [{**a, "score": 0.9} for a in gt["annotations"]]
    x, y, w, h = gt["annotations"][0]["bbox"]
    detections.append({"image_id": 1, "category_id": 2, "bbox": [x + 4, y + 4, w, h], "score": 0.6})
    monkeypatch.setattr(runner, "run_detector", lambda *a, **k: [dict(d) for d in detections])
    seen = _spy_crops(monkeypatch)
    clf = _two_class_classifier(tmp_path / "cls.pt", list(species.values()))

    out = tmp_path / "eval"
    evaluate_two_stage(_checkpoint(tmp_path / "det.pt", species), clf, ann=ann, images=batch_files, out_dir=out,
                       workers=0, device="cpu", plots=False)  # fmt: skip
    assert [c.shape[0] for c, _ in seen] == [1, 1, 1]  # one bird per image
    for (crops, _), (name, *_) in zip(seen, BATCH, strict=True):
        _assert_crop_of(crops[0], name, batch_files, {"mean": [0.5] * 3, "std": [0.25] * 3})
    results = json.loads((out / "results.json").read_text())
    assert [r["image_id"] for r in results] == [1, 2, 3]
    for r, (_, probs), a in zip(results, seen, gt["annotations"], strict=True):
        assert r["bbox"] == a["bbox"]
        top = int(probs[0].argmax())
        assert r["category_id"] == top + 1  # classes are in the categories' order here
        assert r["score"] == pytest.approx(0.9 * float(probs[0, top]), abs=1e-6)  # detection x species probability


def test_merge_labels_reads_coco_xywh_boxes():
    # [x, y, w, h]: (0, 0)-(100, 100) and (20, 20)-(110, 110) overlap with IoU 0.547: one bird at 0.5. Read as
    # x0, y0, x1, y1 the second would be (20, 20)-(90, 90), IoU 0.49: two birds.
    a = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "score": 0.9}
    b = {"image_id": 1, "category_id": 2, "bbox": [20, 20, 90, 90], "score": 0.8}
    assert merge_labels([a, b], 0.5) == [a]
    c = {"image_id": 1, "category_id": 2, "bbox": [40, 0, 100, 100], "score": 0.8}  # IoU 0.43 either way
    assert merge_labels([a, c], 0.5) == [a, c]


def test_classifier_top1_counts_only_detections_matched_at_iou_half():
    assert MATCH_IOU == 0.5
    gt = load_ground_truth(
        {
            "images": [{"id": 1, "file_name": "a.png", "width": 320, "height": 180}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 50, 60, 40], "area": 2400,
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "songbird"}, {"id": 2, "name": "wader"}],
        }
    )  # fmt: skip
    # Right species but IoU 0.33 (shifted half a width): not a match, so nothing to score.
    shifted = [{"image_id": 1, "category_id": 1, "bbox": [130, 50, 60, 40], "score": 0.9}]
    top1, matched = classifier_top1_on_matches(gt, shifted)
    assert matched == 0 and np.isnan(top1)
    # Wrong species at IoU 0.71: matched, and wrong.
    close = [{"image_id": 1, "category_id": 2, "bbox": [110, 50, 60, 40], "score": 0.9}]
    assert classifier_top1_on_matches(gt, close) == (0.0, 1)


# -- labels, results, stats -------------------------------------------------------------------------------------------
def test_category_map_maps_labels_to_the_files_ids_both_ways():
    cmap = CategoryMap.from_categories(
        [{"id": 30, "name": "raptor"}, {"id": 7, "name": "wader"}, {"id": 12, "name": "songbird"}]
    )
    assert [cmap.to_coco_id(label) for label in (1, 2, 3)] == [7, 12, 30]  # sorted by id
    assert [cmap.to_label(cid) for cid in (7, 12, 30)] == [1, 2, 3]
    assert [cmap.name(label) for label in (1, 2, 3)] == ["wader", "songbird", "raptor"]


def test_coco_results_are_xywh_of_the_xyxy_boxes():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 100.0], [200.0, 5.0, 230.0, 15.0]])
    res = coco_results(4, boxes, torch.tensor([0.9, 0.3]), [7, 12])
    assert [r["bbox"] for r in res] == [[10.0, 20.0, 40.0, 80.0], [200.0, 5.0, 30.0, 10.0]]
    assert [(r["image_id"], r["category_id"], r["score"]) for r in res] == [(4, 7, 0.9), (4, 12, 0.3)]


def test_coco_stats_are_reported_under_their_own_names():
    gt = load_ground_truth(
        {
            "images": [{"id": 1, "file_name": "a.png", "width": 320, "height": 180}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 50, 100, 80], "area": 8000,
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "songbird"}],
        }
    )  # fmt: skip
    # IoU 0.67 with the only bird: a hit at IoU 0.5, a miss at 0.75.
    result = evaluate(gt, [{"image_id": 1, "category_id": 1, "bbox": [120, 50, 100, 80], "score": 0.9}])
    assert result.stats["AP50"] == pytest.approx(1.0) and result.stats["AP75"] == pytest.approx(0.0)
    assert result.stats["AR1"] == pytest.approx(0.4)  # hits at the thresholds 0.50 to 0.65: 4 of 10


# -- tiling -----------------------------------------------------------------------------------------------------------
def test_a_windows_boxes_move_by_its_offset_per_axis():
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0]])
    out = to_image_coords(boxes, torch.tensor([256, 96, 512, 352]))
    torch.testing.assert_close(out, torch.tensor([[257.0, 98.0, 286.0, 136.0]]))


# -- training data per epoch ------------------------------------------------------------------------------------------
class _Draws:
    """A dataset whose item is a draw from NumPy's global RNG: what an augmentation sees."""

    transforms = None

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> Any:
        return float(np.random.rand())


def test_each_epoch_augments_a_sample_differently_and_reproducibly():
    seeded = SeededDataset(_Draws(), seed=0)
    first = [seeded[i] for i in range(4)]
    assert [seeded[i] for i in range(4)] == first  # the same epoch again: the same augmentation
    assert len(set(first)) == 4  # and each sample its own
    seeded.epoch = 1
    second = [seeded[i] for i in range(4)]
    assert all(a != b for a, b in zip(first, second, strict=True))
