"""`birddet score --results PRED/coco.json` matches images by `file_name` and categories by name (issue 18, item 3).

`birddet predict` numbers images 1..N in its own order and converters number them in theirs, so a results file
that is a COCO dataset is matched to the ground truth by file name; trusting its ids swapped images silently
whenever the id sets coincided. The results here are what predict writes (`pipeline.writers.coco_dict`), with
every ground-truth box found exactly: any image or category mix-up scores below AP 1.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from birddet.cli import main
from birddet.engine.scoring import score_files
from birddet.errors import InputError
from birddet.pipeline.writers import Detection, ImageResult, coco_dict

# file name, width, height (16:9, portrait, 3:1, 4:3) and one xywh box per image, all different
IMAGES = [
    ("a.jpg", 320, 180, [20, 30, 80, 60]),
    ("b.jpg", 180, 320, [100, 200, 50, 90]),
    ("c.jpg", 300, 100, [200, 10, 60, 70]),
    ("d.jpg", 200, 150, [5, 80, 40, 40]),
]
GT_CATEGORIES = [{"id": 3, "name": "wren"}, {"id": 7, "name": "robin"}]


def _gt(path: Path, *, ids: list[int], prefix: str = "", names: list[str] | None = None) -> Path:
    """Ground truth with the given image ids (in `IMAGES` order): image k holds one robin, except d, a wren."""
    images, anns = [], []
    for k, ((name, w, h, box), image_id) in enumerate(zip(IMAGES, ids)):
        images.append({"id": image_id, "file_name": prefix + (names[k] if names else name), "width": w, "height": h})
        anns.append({"id": k + 1, "image_id": image_id, "category_id": 3 if name == "d.jpg" else 7, "bbox": box,
                     "area": box[2] * box[3], "iscrowd": 0})  # fmt: skip
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": GT_CATEGORIES}))
    return path


def _predict_coco(
    path: Path, *, categories: dict[int, str] | None = None, files: list[str] | None = None, extra: bool = False
) -> Path:
    """What `birddet predict` writes: images numbered 1..N in order, every box found under its name's id in
    `categories` (default: the ground truth's own ids); `extra` adds a gull box on a.jpg."""
    categories = categories or {3: "wren", 7: "robin"}
    id_of = {name: cid for cid, name in categories.items()}
    results = []
    for k, (name, w, h, (x, y, bw, bh)) in enumerate(IMAGES):
        species = "wren" if name == "d.jpg" else "robin"
        dets = [Detection((x, y, x + bw, y + bh), 0.9, id_of[species], species)]
        if extra and name == "a.jpg":
            dets.append(Detection((150.0, 100.0, 250.0, 170.0), 0.95, id_of["gull"], "gull"))
        results.append(ImageResult((files or [i[0] for i in IMAGES])[k], f"/photos/{name}", w, h, dets))
    path.write_text(json.dumps(coco_dict(results, categories=categories, taxonomy=None)))
    return path


def _ap(result: Any) -> float:
    return result.stats["AP"]


def test_predict_coco_json_against_ground_truth_numbered_in_another_order_scores_by_file_name(tmp_path, caplog):
    gt = _gt(tmp_path / "gt.json", ids=[4, 3, 2, 1])  # the same id set as predict's 1..4, in the other order
    pred = _predict_coco(tmp_path / "coco.json")
    with caplog.at_level(logging.INFO):
        result = score_files(gt, pred)
    assert _ap(result) == pytest.approx(1.0)  # old code: every image swapped, AP 0.0
    assert "by file_name (4 exact, 0 by unique basename)" in caplog.text


def test_score_cli_prints_the_file_name_matched_ap(tmp_path, capsys):
    gt = _gt(tmp_path / "gt.json", ids=[4, 3, 2, 1])
    pred = _predict_coco(tmp_path / "coco.json")
    metrics = tmp_path / "m.json"
    assert main(["score", "--gt", str(gt), "--results", str(pred), "--out", str(metrics), "--no-plots"]) == 0
    assert json.loads(metrics.read_text())["stats"]["AP"] == pytest.approx(1.0)


def test_other_source_roots_fall_back_to_unique_basenames(tmp_path, caplog):
    gt = _gt(tmp_path / "gt.json", ids=[11, 12, 13, 14], prefix="site1/val/")
    pred = _predict_coco(tmp_path / "coco.json")  # predict run on the val folder itself: a.jpg, b.jpg, ...
    with caplog.at_level(logging.INFO):
        assert _ap(score_files(gt, pred)) == pytest.approx(1.0)
    assert "0 exact, 4 by unique basename" in caplog.text


def test_an_ambiguous_basename_is_not_guessed(tmp_path):
    gt = _gt(tmp_path / "gt.json", ids=[1, 2, 3, 4], names=["x/a.jpg", "y/a.jpg", "c.jpg", "d.jpg"])
    pred = _predict_coco(tmp_path / "coco.json", files=["z/a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    with pytest.raises(InputError, match=r"2 image\(s\) with detections match no file_name .*z/a\.jpg, b\.jpg"):
        score_files(gt, pred)


def test_two_results_images_landing_on_one_ground_truth_image_are_an_error(tmp_path):
    gt = _gt(tmp_path / "gt.json", ids=[1, 2, 3, 4], names=["val/a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    pred = _predict_coco(tmp_path / "coco.json", files=["p/a.jpg", "q/a.jpg", "c.jpg", "d.jpg"])
    with pytest.raises(InputError, match=r"several images match one image .*p/a\.jpg, q/a\.jpg"):
        score_files(gt, pred)


def test_names_that_partly_match_are_an_error_even_when_the_ids_line_up(tmp_path):
    gt = _gt(tmp_path / "gt.json", ids=[1, 2, 3, 4], names=["a.jpg", "b.jpg", "c.jpg", "other.jpg"])
    pred = _predict_coco(tmp_path / "coco.json")  # d.jpg is not in the ground truth; ids 1..4 all are
    with pytest.raises(InputError) as e:
        score_files(gt, pred)
    msg = str(e.value)
    assert "d.jpg" in msg and "other.jpg" in msg and "3 image(s) did match" in msg


def test_neither_names_nor_ids_line_up_names_both(tmp_path):
    gt = _gt(tmp_path / "gt.json", ids=[101, 102, 103, 104], names=["p.jpg", "q.jpg", "r.jpg", "s.jpg"])
    pred = _predict_coco(tmp_path / "coco.json")
    with pytest.raises(InputError) as e:
        score_files(gt, pred)
    msg = str(e.value)
    assert "neither image file names nor image ids" in msg
    assert "a.jpg" in msg and "p.jpg" in msg and "1, 2, 3, 4" in msg


def test_no_name_matches_but_the_ids_do_keeps_the_ids_with_a_warning(tmp_path, caplog):
    gt = _gt(tmp_path / "gt.json", ids=[1, 2, 3, 4], names=["A.JPG", "B.JPG", "C.JPG", "D.JPG"])
    pred = _predict_coco(tmp_path / "coco.json")
    with caplog.at_level(logging.WARNING):
        assert _ap(score_files(gt, pred)) == pytest.approx(1.0)
    assert "no file_name matches" in caplog.text and "matched by id" in caplog.text


def test_ground_truth_images_missing_from_the_results_count_as_misses(tmp_path, caplog):
    gt = _gt(tmp_path / "gt.json", ids=[4, 3, 2, 1])
    data = json.loads(_predict_coco(tmp_path / "coco.json").read_text())
    data["images"] = [i for i in data["images"] if i["file_name"] != "b.jpg"]  # predict could not read b.jpg
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in {i["id"] for i in data["images"]}]
    pred = tmp_path / "partial.json"
    pred.write_text(json.dumps(data))
    with caplog.at_level(logging.INFO):
        result = score_files(gt, pred)
    robin = next(r for r in result.per_class if r["name"] == "robin")
    assert robin["AR100"] == pytest.approx(2 / 3)  # a, c found; b missed
    assert "1 ground-truth image(s) are not in the results" in caplog.text


def test_results_categories_are_matched_by_name_and_unknown_ones_left_out(tmp_path, caplog):
    gt = _gt(tmp_path / "gt.json", ids=[1, 2, 3, 4])
    # the model numbers {gull, robin, wren} 1..3; the GT has wren 3, robin 7: id 3 means different birds
    pred = _predict_coco(tmp_path / "coco.json", categories={1: "gull", 2: "robin", 3: "wren"}, extra=True)
    with caplog.at_level(logging.INFO):
        result = score_files(gt, pred)
    assert _ap(result) == pytest.approx(1.0)  # the confident gull box is not a false positive of any GT class
    assert "'gull'" in caplog.text and "left out of scoring" in caplog.text


def test_a_ground_truth_category_the_results_do_not_know_lists_both_maps(tmp_path):
    gt = _gt(tmp_path / "gt.json", ids=[1, 2, 3, 4])
    pred = _predict_coco(tmp_path / "coco.json", categories={1: "robin", 2: "wren"})  # renumbered, same names
    assert _ap(score_files(gt, pred)) == pytest.approx(1.0)
    data = json.loads(pred.read_text())
    data["categories"] = [{"id": 1, "name": "robin"}, {"id": 2, "name": "warbler"}]
    pred.write_text(json.dumps(data))
    with pytest.raises(InputError) as e:
        score_files(gt, pred)
    msg = str(e.value)
    assert "3 ('wren')" in msg and "{1: 'robin', 2: 'warbler'}" in msg and "{3: 'wren', 7: 'robin'}" in msg


def test_a_plain_results_list_keeps_id_matching(tmp_path):
    gt = _gt(tmp_path / "gt.json", ids=[4, 3, 2, 1])
    dets = [
        {"image_id": image_id, "category_id": 3 if name == "d.jpg" else 7, "bbox": box, "score": 0.9}
        for (name, _, _, box), image_id in zip(IMAGES, [4, 3, 2, 1])
    ]
    pred = tmp_path / "list.json"
    pred.write_text(json.dumps(dets))
    assert _ap(score_files(gt, pred)) == pytest.approx(1.0)
