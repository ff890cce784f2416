"""Species-level scoring of detect-then-classify: hand-made cases, name matching, and `birddet eval --classifier`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from birddet.cli import main
from birddet.engine.evaluator import evaluate, load_ground_truth
from birddet.engine.two_stage import classifier_top1_on_matches, match_species, merge_labels, species_results
from birddet.errors import InputError
from birddet.pipeline.taxonomy import Taxonomy

SPECIES = {1: "songbird", 2: "wader", 3: "raptor"}


def _gt() -> dict:
    """Two images: a songbird and a wader in image 1, a raptor in image 2."""
    images = [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100}]
    images.append({"id": 2, "file_name": "b.jpg", "width": 200, "height": 100})
    boxes = [(1, 1, [10, 10, 40, 40]), (1, 2, [100, 20, 50, 60]), (2, 3, [60, 10, 50, 50])]
    anns = [
        {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for k, (i, c, b) in enumerate(boxes)
    ]
    cats = [{"id": k, "name": v} for k, v in SPECIES.items()]
    return {"images": images, "annotations": anns, "categories": cats}


def test_correct_wrong_and_missed_birds_score_as_species_ap_and_classifier_top1():
    """Image 1: the songbird is found and named right, the wader is found but called a raptor; image 2: the raptor
    is missed. Scores are detection x species probability."""
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [100, 20, 50, 60], "score": 0.8},
    ]
    probs = torch.tensor([[0.8, 0.15, 0.05], [0.1, 0.2, 0.7]])
    results = species_results(dets, probs, {0: 1, 1: 2, 2: 3})
    assert [r["category_id"] for r in results] == [1, 3]
    assert [r["score"] for r in results] == pytest.approx([0.9 * 0.8, 0.8 * 0.7])
    coco_gt = load_ground_truth(_gt())
    result = evaluate(coco_gt, results)
    per_species = {r["name"]: r["AP50"] for r in result.per_class}
    assert per_species == pytest.approx({"songbird": 1.0, "wader": 0.0, "raptor": 0.0})
    assert result.stats["AP50"] == pytest.approx(1 / 3)
    top1, matched = classifier_top1_on_matches(coco_gt, results)
    assert (top1, matched) == (0.5, 2)  # two birds found, one named right; the missed raptor does not count


def test_boxes_the_detector_gave_under_two_labels_are_one_bird():
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [11, 10, 40, 41], "score": 0.6},
        {"image_id": 1, "category_id": 2, "bbox": [120, 10, 40, 40], "score": 0.5},
    ]
    kept = merge_labels(dets, 0.5)
    assert [d["score"] for d in kept] == [0.9, 0.5]


def test_species_names_match_case_insensitively_and_a_larger_classifier_is_restricted():
    taxonomy = Taxonomy({"Raptor": 0, "songbird": 1, "owl": 2, "WADER": 3})
    assert match_species(taxonomy, {7: "songbird", 8: "wader", 9: "raptor"}, ann="gt", classifier="c") == {
        1: 7,
        3: 8,
        0: 9,
    }


def test_an_unmatched_species_name_lists_both_sets():
    taxonomy = Taxonomy({"songbird": 0, "wader": 1, "raptor": 2})
    with pytest.raises(InputError) as err:
        match_species(taxonomy, {1: "songbird", 2: "heron"}, ann="gt.json", classifier="cls.pt")
    msg = str(err.value)
    assert "'heron'" in msg and "'songbird', 'heron'" in msg and "'songbird', 'wader', 'raptor'" in msg


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny classifier trained for a few steps on the synthetic crops, and a random tiny detector."""
    from test_classifier_training import tiny_classifier_config
    from test_eval_command import _checkpoint

    from birddet.data.synthetic import make_synthetic_coco
    from birddet.engine.classification import train_classifier

    root = tmp_path_factory.mktemp("two_stage")
    make_synthetic_coco(root / "data", num_train=8, num_val=4, seed=0)
    train_classifier(tiny_classifier_config(root / "data", epochs=1), root / "cls")
    det = _checkpoint(root / "det.pt", SPECIES)
    return {"data": root / "data", "cls": root / "cls" / "best.pt", "det": det, "root": root}


def test_eval_with_classifier_writes_species_metrics_and_two_stage_record(trained, capsys):
    d = trained["data"]
    out = trained["root"] / "eval"
    argv = ["eval", str(trained["det"]), "--classifier", str(trained["cls"]), "--ann", str(d / "val.json")]
    code = main([*argv, "--images", str(d / "images"), "--out", str(out), "--workers", "0", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["stats"]) >= {"AP", "AP50"} and [r["name"] for r in metrics["per_class"]] == list(
        SPECIES.values()
    )
    two = metrics["two_stage"]
    assert two["score"].startswith("detection score x species probability")
    results = json.loads((out / "results.json").read_text())
    # The record says what the results say: top-1 over the detections matched to a bird (None when none matched).
    top1, matched = classifier_top1_on_matches(load_ground_truth(d / "val.json"), results)
    assert two["classifier_matched"] == matched and two["classifier_top1"] == (None if matched == 0 else top1)
    assert all(r["category_id"] in SPECIES for r in results) and len(results) == two["num_detections"]
    # The two factors are kept apart for `birddet report`'s crop gallery, and eval names what it ran on.
    assert all(r["score"] == pytest.approx(r["det_score"] * r["species_prob"], abs=1e-5) for r in results)
    inputs = json.loads((out / "eval_inputs.json").read_text())
    assert inputs["ann"] == str((d / "val.json").resolve()) and inputs["classifier"] == str(trained["cls"])
    assert "classifier top-1" in capsys.readouterr().out


def test_eval_with_classifier_and_unknown_species_exits_2_listing_both_sets(trained, tmp_path, capsys):
    d = trained["data"]
    gt = json.loads((d / "val.json").read_text())
    gt["categories"][1]["name"] = "Grey Heron"
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(gt))
    argv = ["eval", str(trained["det"]), "--classifier", str(trained["cls"]), "--ann", str(ann)]
    code = main([*argv, "--images", str(d / "images"), "--workers", "0", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'Grey Heron'" in err and "'songbird', 'wader', 'raptor'" in err


def test_predict_with_the_trained_classifier_names_species(trained, monkeypatch):
    from test_predict import _read, fake_boxes

    from birddet.pipeline.predict import PredictOptions, run_prediction

    fake_boxes(monkeypatch)  # two fixed boxes per image, scores 0.9 and 0.05
    out = trained["root"] / "predict"
    opts = PredictOptions(conf=0.0, classifier=str(trained["cls"]), classify_conf=0.5, workers=0, device="cpu")
    images = sorted((trained["data"] / "images").glob("val_*.jpg"))[:2]
    run_prediction(trained["det"], images, out, opts)
    md, _, rows = _read(out)
    assert set(md["classification_categories"].values()) <= set(SPECIES.values())
    named = [r["species"] for r in rows if r["species"]]
    assert len(named) == 2 and set(named) <= set(SPECIES.values())  # one confident box per image
