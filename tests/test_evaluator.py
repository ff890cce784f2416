"""The evaluator gives pycocotools' numbers exactly, and rejects bad ground truth / results with a useful message."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from birddet.engine.evaluator import (
    STAT_NAMES,
    EvalResult,
    evaluate,
    load_ground_truth,
    load_results,
)
from birddet.engine.reports import (
    confusion_matrix,
    format_table,
    plot_confusion_matrix,
    plot_pr_curves,
    write_metrics_json,
    write_per_class_csv,
)
from birddet.engine.scoring import score_files
from birddet.errors import InputError


# -- synthetic data -------------------------------------------------------------------------------------------------
def make_case(seed: int = 0, num_images: int = 24) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """GT + detections covering pycocotools' corner cases: several classes, one without any ground truth, crowd
    regions, images without GT, images without detections, one image with 150 detections (> maxDets 100), tiny
    (< 32^2) and huge boxes, score ties, and detections of a class absent from the image."""
    rng = np.random.default_rng(seed)
    categories = [{"id": c, "name": n} for c, n in [(1, "robin"), (3, "wren"), (7, "heron"), (9, "owl")]]
    images = [{"id": 100 + i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(num_images)]
    anns: list[dict[str, Any]] = []
    dets: list[dict[str, Any]] = []

    def box(kind: str) -> list[float]:
        if kind == "tiny":
            w, h = rng.uniform(2, 28, 2)
        elif kind == "huge":
            w, h = rng.uniform(300, 620), rng.uniform(250, 470)
        else:
            w, h = rng.uniform(20, 200, 2)
        x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
        return [round(float(x), 2), round(float(y), 2), round(float(w), 2), round(float(h), 2)]

    for n, img in enumerate(images):
        if n % 6 == 5:  # image without ground truth (detections there are all false positives)
            gts = []
        else:
            gts = [
                (int(rng.choice([1, 3, 7])), box(rng.choice(["tiny", "mid", "mid", "huge"])))
                for _ in range(rng.integers(1, 6))
            ]
        for cat, b in gts:
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0})  # fmt: skip
        if n % 5 == 1:  # a crowd region: detections inside it are ignored, not false positives
            b = box("huge")
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": 1, "bbox": b,
                         "area": b[2] * b[3] * 0.7, "iscrowd": 1})  # fmt: skip
        if n % 7 == 3:  # image without detections (its GT are misses)
            continue
        for cat, b in gts:  # jittered true positives, sometimes with the wrong class
            if rng.random() < 0.85:
                j = [v + rng.normal(0, 0.08 * max(b[2], b[3], 4)) for v in b]
                j[2], j[3] = max(j[2], 1.0), max(j[3], 1.0)
                c = cat if rng.random() < 0.8 else int(rng.choice([1, 3, 7, 9]))
                dets.append({"image_id": img["id"], "category_id": c, "bbox": [round(v, 2) for v in j],
                             "score": round(float(rng.uniform(0.2, 1.0)), 2)})  # fmt: skip
        n_fp = 150 if n == 2 else int(rng.integers(0, 8))
        for _ in range(n_fp):
            dets.append({"image_id": img["id"], "category_id": int(rng.choice([1, 3, 7, 9])),
                         "bbox": box(rng.choice(["tiny", "mid", "huge"])),
                         "score": round(float(rng.uniform(0.0, 0.9)), 2)})  # fmt: skip
    return {"images": images, "annotations": anns, "categories": categories}, dets


def raw_pycocotools(gt: dict[str, Any], dets: list[dict[str, Any]], cat_ids: list[int] | None = None) -> COCOeval:
    """The reference: pycocotools used the documented way, on deep copies (loadRes mutates its input)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.fixture(scope="module")
def case() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return make_case()


def write(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path


# -- parity ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stats_equal_pycocotools_bit_for_bit(seed: int) -> None:
    gt, dets = make_case(seed)
    ref = raw_pycocotools(gt, dets)
    coco_gt = load_ground_truth(copy.deepcopy(gt))
    result = evaluate(coco_gt, load_results(copy.deepcopy(dets), coco_gt))
    assert list(result.stats) == list(STAT_NAMES)
    assert [result.stats[n] for n in STAT_NAMES] == ref.stats.tolist()  # exact, not approx
    assert 0 < result.stats["AP"] < 1 and result.stats["APs"] > -1  # the case exercises real values


def test_case_covers_the_corner_cases(case: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    gt, dets = case
    per_image = np.bincount([d["image_id"] - 100 for d in dets], minlength=len(gt["images"]))
    assert per_image.max() > 100 and (per_image == 0).any()
    assert any(a["iscrowd"] for a in gt["annotations"])
    assert {img["id"] for img in gt["images"]} - {a["image_id"] for a in gt["annotations"]}
    areas = [a["area"] for a in gt["annotations"]]
    assert min(areas) < 32**2 and max(areas) > 96**2


def test_per_class_equals_a_per_category_pycocotools_run(case: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    gt, dets = case
    coco_gt = load_ground_truth(gt)
    result = evaluate(coco_gt, load_results(dets, coco_gt))
    assert [r["category_id"] for r in result.per_class] == [1, 3, 7, 9]
    for row in result.per_class:
        ref = raw_pycocotools(gt, dets, cat_ids=[row["category_id"]])
        assert (row["AP"], row["AP50"], row["AR100"]) == (ref.stats[0], ref.stats[1], ref.stats[8])
    owl = result.per_class[-1]
    assert (owl["name"], owl["num_gt"], owl["AP"], owl["AR100"]) == ("owl", 0, -1.0, -1.0)  # no GT: pycocotools' -1
    robin_gt = sum(1 for a in gt["annotations"] if a["category_id"] == 1 and not a["iscrowd"])
    assert result.per_class[0]["num_gt"] == robin_gt


def test_inputs_are_not_modified(case: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    gt, dets = case
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    coco_gt = load_ground_truth(gt)
    evaluate(coco_gt, dets)
    assert gt == gt_before and dets == dets_before  # pycocotools' loadRes / _prepare would have added keys


def test_custom_max_dets_follow_summarize_semantics(case: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    gt, dets = case
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        ev.params.maxDets = [1, 5, 20]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()  # positional maxDets[0..2] is what it does; we must do the same
    ours = evaluate(load_ground_truth(gt), dets, max_dets=(1, 5, 20))
    # summarize() computes stats[1:] at maxDets[0..2] by position; its stats[0] calls `_summarize(1)` with the
    # default maxDets=100, so it is -1 here. We use maxDets[2] there too, the way stats[1] does.
    assert ev.stats[0] == -1.0
    assert [ours.stats[n] for n in STAT_NAMES[1:]] == ev.stats[1:].tolist()
    s = ev.eval["precision"][:, :, :, 0, 2]
    assert ours.stats["AP"] == np.mean(s[s > -1]) > 0
    with pytest.raises(InputError, match="max_dets"):
        evaluate(load_ground_truth(gt), dets, max_dets=(10, 1))


def test_custom_iou_thresholds_and_area_ranges(case: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    gt, dets = case
    coco_gt = load_ground_truth(gt)
    result = evaluate(coco_gt, dets, iou_thrs=[0.5], area_ranges={"all": (0, 1e10), "small": (0, 32**2)})
    assert result.stats["AP"] == result.stats["AP50"] == evaluate(coco_gt, dets).stats["AP50"]
    assert result.stats["AP75"] == -1.0 and result.stats["APm"] == -1.0  # slices it was not asked for


def test_empty_results_score_zero_with_a_warning(case: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    gt, _ = case
    coco_gt = load_ground_truth(gt)
    with pytest.warns(UserWarning, match="no detections"):
        dets = load_results([], coco_gt)
    result = evaluate(coco_gt, dets)
    assert all(result.stats[n] == 0.0 for n in STAT_NAMES)
    assert [r["AP"] for r in result.per_class] == [0.0, 0.0, 0.0, -1.0]


def test_dataset_json_with_scores_is_accepted_as_results(
    tmp_path: Path, case: tuple[dict[str, Any], list[dict[str, Any]]]
) -> None:
    gt, dets = case
    as_dataset = {**gt, "annotations": [{**d, "id": i + 1} for i, d in enumerate(dets)]}
    coco_gt = load_ground_truth(write(tmp_path / "gt.json", gt))
    loaded = load_results(write(tmp_path / "dt.json", as_dataset), coco_gt)
    assert evaluate(coco_gt, loaded).stats == evaluate(coco_gt, dets).stats


def test_missing_iscrowd_and_area_get_defaults(case: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    gt, dets = case
    bare = {**gt, "annotations": [{k: v for k, v in a.items() if k not in ("iscrowd", "area")}
                                  for a in gt["annotations"] if not a["iscrowd"]]}  # fmt: skip
    result = evaluate(load_ground_truth(bare), dets)  # raw pycocotools: KeyError 'iscrowd'
    assert 0 < result.stats["AP"] < 1


# -- ground-truth errors --------------------------------------------------------------------------------------------
def _gt() -> dict[str, Any]:
    return {
        "images": [{"id": 1}, {"id": 2}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 11, "image_id": 2, "category_id": 5, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},
        ],
        "categories": [{"id": 5, "name": "bird"}],
    }


def _with(**changes: Any) -> dict[str, Any]:
    gt = _gt()
    gt.update(changes)
    return gt


def _ann(**changes: Any) -> dict[str, Any]:
    gt = _gt()
    gt["annotations"][1].update(changes)
    return gt


GT_ERRORS = [
    ("missing images", {k: v for k, v in _gt().items() if k != "images"}, r"missing top-level key 'images'"),
    ("annotations not a list", _with(annotations={}), r"'annotations' must be a list"),
    ("image without id", _with(images=[{"id": 1}, {"file_name": "a.jpg"}]), r"images\[1\] has no 'id'"),
    ("string image id", _with(images=[{"id": 1}, {"id": "2"}]), r"images\[1\] has id '2'.*integers"),
    ("duplicate image ids", _with(images=[{"id": i % 3} for i in range(9)]), r"duplicate image ids 0, 1, 2"),
    (
        "many duplicate ids",
        _with(images=[{"id": i % 8} for i in range(16)]),
        r"duplicate image ids 0, 1, 2, 3, 4 \(\+3 more; 8 in total\)",
    ),
    ("duplicate category ids", _with(categories=[{"id": 5}, {"id": 5}]), r"duplicate category ids 5\b"),
    ("duplicate annotation ids", _ann(id=10), r"duplicate annotation ids 10\b"),
    ("unknown image", _ann(image_id=99), r"annotation id 11 names image_id 99.*not in 'images'"),
    ("unknown category", _ann(category_id=6), r"annotation id 11 names category_id 6.*not in 'categories'"),
    ("null bbox", _ann(bbox=None), r"annotation id 11 has bbox None"),
    (
        "no bbox key",
        _with(annotations=[{"id": 10, "image_id": 1, "category_id": 5}]),
        r"annotation id 10 has no 'bbox'",
    ),
    ("three numbers", _ann(bbox=[1, 2, 3]), r"annotation id 11 has bbox \[1, 2, 3\].*four finite numbers"),
    ("nan in bbox", _ann(bbox=[1, 2, float("nan"), 4]), r"annotation id 11 has bbox \[1, 2, nan, 4\]"),
    ("string in bbox", _ann(bbox=[1, 2, "3", 4]), r"annotation id 11 has bbox"),
    ("not an object", [1, 2], r"must be a JSON object.*got a list"),
]


@pytest.mark.parametrize("gt,pattern", [c[1:] for c in GT_ERRORS], ids=[c[0] for c in GT_ERRORS])
def test_bad_ground_truth_names_the_problem(gt: Any, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern) as err:
        load_ground_truth(gt)
    assert "\n" not in str(err.value)


def test_gt_file_missing_or_not_json(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.json: ground-truth file not found"):
        load_ground_truth(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"images": [')
    with pytest.raises(InputError, match=r"bad\.json: not valid JSON \(line 1"):
        load_ground_truth(tmp_path / "bad.json")


def test_gt_without_pycocotools_prints(capsys: pytest.CaptureFixture[str]) -> None:
    evaluate(load_ground_truth(_gt()), [{"image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10], "score": 0.9}])
    assert capsys.readouterr().out == ""


# -- result errors --------------------------------------------------------------------------------------------------
def _det(**changes: Any) -> list[dict[str, Any]]:
    dets = [{"image_id": i % 2 + 1, "category_id": 5, "bbox": [0, 0, 10, 10], "score": 0.5} for i in range(6)]
    dets[3] = {**dets[3], **changes}
    return dets


RESULT_ERRORS = [
    ("not a list", 42, r"results must be a list.*got int"),
    ("object without annotations", {"images": []}, r"'annotations' list"),
    ("item not an object", [1], r"result 0 must be an object"),
    ("missing score", [{"image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1]}], r"result 0 has no 'score'"),
    ("unknown image ids", _det(image_id=42), r"image ids 42 are not in the ground truth"),
    (
        "many unknown image ids",
        [{"image_id": 50 + i, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 1} for i in range(7)],
        r"image ids 50, 51, 52, 53, 54 \(\+2 more; 7 in total\)",
    ),
    ("unknown category", _det(category_id=8), r"category ids 8 are not in the ground truth"),
    ("string image id", _det(image_id="1"), r"result 3 has image_id '1'.*integer"),
    ("short bbox", _det(bbox=[0, 0, 1]), r"result 3 \(image_id 2\) has bbox \[0, 0, 1\].*four finite numbers"),
    ("inf bbox", _det(bbox=[0, 0, float("inf"), 1]), r"result 3 \(image_id 2\) has bbox \[0, 0, inf, 1\]"),
    ("nan score", _det(score=float("nan")), r"result 3 \(image_id 2\) has score nan.*finite number"),
    ("string score", _det(score="high"), r"result 3 \(image_id 2\) has score 'high'"),
]


@pytest.mark.parametrize("dets,pattern", [c[1:] for c in RESULT_ERRORS], ids=[c[0] for c in RESULT_ERRORS])
def test_bad_results_name_the_problem(dets: Any, pattern: str) -> None:
    coco_gt = load_ground_truth(_gt())
    with pytest.raises(InputError, match=pattern) as err:
        load_results(dets, coco_gt)
    assert "\n" not in str(err.value)


def test_results_file_missing_or_not_json(tmp_path: Path) -> None:
    coco_gt = load_ground_truth(_gt())
    with pytest.raises(InputError, match=r"dt\.json: results file not found"):
        load_results(tmp_path / "dt.json", coco_gt)
    (tmp_path / "dt.json").write_text("[{]")
    with pytest.raises(InputError, match=r"dt\.json: not valid JSON"):
        load_results(tmp_path / "dt.json", coco_gt)


def test_evaluate_checks_unvalidated_results_too() -> None:
    with pytest.raises(InputError, match="image ids 9"):
        evaluate(load_ground_truth(_gt()), [{"image_id": 9, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 1.0}])


# -- reports --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scored(case: tuple[dict[str, Any], list[dict[str, Any]]]) -> tuple[COCO, list[dict[str, Any]], EvalResult]:
    gt, dets = case
    coco_gt = load_ground_truth(gt)
    dets = load_results(dets, coco_gt)
    return coco_gt, dets, evaluate(coco_gt, dets)


def test_plots_are_written(tmp_path: Path, scored: tuple[COCO, list[dict[str, Any]], EvalResult]) -> None:
    coco_gt, dets, result = scored
    paths = plot_pr_curves(result, tmp_path)
    paths.append(plot_confusion_matrix(coco_gt, dets, tmp_path / "cm.png"))
    assert [p.name for p in paths] == ["pr_curve.png", "pr_curves_per_class.png", "cm.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_confusion_matrix_counts_hits_mixups_misses_and_false_positives() -> None:
    gt = {
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 5, "name": "robin"}, {"id": 6, "name": "wren"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 6, "bbox": [50, 50, 10, 10]},
            {"id": 3, "image_id": 2, "category_id": 6, "bbox": [0, 0, 10, 10]},
            {"id": 4, "image_id": 2, "category_id": 5, "bbox": [100, 100, 50, 50], "iscrowd": 1},
        ],
    }
    dets = [
        {"image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10], "score": 0.9},  # hit robin
        {"image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 9], "score": 0.8},  # duplicate: false positive
        {"image_id": 1, "category_id": 5, "bbox": [50, 50, 10, 10], "score": 0.7},  # wren called robin
        {"image_id": 2, "category_id": 6, "bbox": [300, 300, 5, 5], "score": 0.9},  # false positive
        {"image_id": 2, "category_id": 6, "bbox": [110, 110, 5, 5], "score": 0.9},  # inside crowd: ignored
        {"image_id": 2, "category_id": 6, "bbox": [0, 0, 10, 10], "score": 0.1},  # below threshold -> wren missed
    ]
    matrix, cats = confusion_matrix(load_ground_truth(gt), dets)
    assert cats == [5, 6]
    assert matrix.tolist() == [[1, 0, 0], [1, 0, 1], [1, 1, 0]]


def test_tables_and_files(tmp_path: Path, scored: tuple[COCO, list[dict[str, Any]], EvalResult]) -> None:
    _, _, result = scored
    table = format_table(result)
    assert "AP50" in table and "heron" in table and "n/a" in table
    metrics = json.loads(write_metrics_json(result, tmp_path / "m.json").read_text())
    assert metrics["stats"] == result.stats
    assert [r["name"] for r in metrics["per_class"]] == ["robin", "wren", "heron", "owl"]
    csv_lines = write_per_class_csv(result, tmp_path / "c.csv").read_text().splitlines()
    assert csv_lines[0] == "category_id,name,num_gt,AP,AP50,AR100" and len(csv_lines) == 5
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files


def test_score_files_writes_the_report(tmp_path: Path, case: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    gt, dets = case
    gt_path, dt_path = write(tmp_path / "gt.json", gt), write(tmp_path / "dt.json", dets)
    result = score_files(gt_path, dt_path, tmp_path / "report")
    names = {p.name for p in (tmp_path / "report").iterdir()}
    assert names == {"metrics.json", "per_class.csv", "pr_curve.png", "pr_curves_per_class.png", "confusion_matrix.png"}
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["stats"] == result.stats

    score_files(gt_path, dt_path, tmp_path / "b" / "val_metrics.json", plots=False)
    assert {p.name for p in (tmp_path / "b").iterdir()} == {"val_metrics.json", "per_class.csv"}


def test_score_files_without_out_writes_nothing(tmp_path: Path) -> None:
    gt_path = write(tmp_path / "gt.json", _gt())
    dt_path = write(tmp_path / "dt.json", _det())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = score_files(gt_path, dt_path)
    assert result.stats["AP50"] > 0 and sorted(p.name for p in tmp_path.iterdir()) == ["dt.json", "gt.json"]
