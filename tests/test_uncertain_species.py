"""A box whose species is uncertain keeps the detector's category and the best species guess, in every output.

A classifier trained on one's own crops has opaque class names (no ranks), so below ``--rollup-threshold`` the
roll-up has nothing to roll up to. Such a box must read "bird, maybe sanhaco_da_amazonia (0.36)", not
"unknown (unknown) 0.36": the CSV, COCO and MegaDetector files keep the detector's category and the top species with
its probability, and the drawn label shows both numbers, each after the name it belongs to.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from birddet.backbone.presets import get_preset
from birddet.backbone.vit import ViT
from birddet.backbone.weights import save_birder_file
from birddet.cli import main
from birddet.config import config_from_dict
from birddet.engine.checkpoint import save_checkpoint
from birddet.models.detector import BirdDetector, Prediction, build_detector
from birddet.pipeline import visualize
from birddet.pipeline.results import Classification, Detection, ImageResult
from birddet.pipeline.taxonomy import Rollup, Taxonomy
from birddet.pipeline.visualize import label_for
from birddet.pipeline.writers import CSV_COLUMNS, coco_dict, predictions_csv_text

# What `birddet train-classifier` writes for a dataset of feeder photos: its category names, no lineage.
OWN_CLASSES = ["sanhaco_da_amazonia", "bem_te_vi", "sabia_laranjeira"]
DETECTOR_CATEGORIES = {1: "bird"}
# The CSV columns of the first release, in their order: they keep their place and meaning.
FIRST_RELEASE_COLUMNS = (
    "file", "count", "x_min", "y_min", "x_max", "y_max", "det_score", "category", "species", "common_name",
    "species_score", "rollup_taxon", "rollup_rank", "rollup_score", "failure",
)  # fmt: skip


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny detector checkpoint, a tiny own-crops classifier file, and a 16:9 and a portrait photo."""
    base = tmp_path_factory.mktemp("uncertain")
    torch.manual_seed(0)
    clf_net = ViT(get_preset("vit_reg4_tiny16_rms_avg"), num_classes=len(OWN_CLASSES), image_size=(32, 32))
    with torch.no_grad():
        for p in clf_net.parameters():
            p.normal_(0.0, 0.05)  # the zero-initialised head would make every probability exactly 1/3
    classifier = save_birder_file(
        clf_net.eval(),
        base / "own_crops.pt",
        class_to_idx={name: i for i, name in enumerate(OWN_CLASSES)},
        rgb_stats={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    )
    config = {
        "model": {
            "backbone": {"preset": "vit_reg4_tiny16_rms_avg"},
            "image_size": 128,
            "pyramid": {"out_channels": 32},
            "rpn": {"pre_nms_top_n_test": 50, "post_nms_top_n_test": 20},
            "roi_heads": {"representation_size": 64, "detections_per_img": 10},
        }
    }
    torch.manual_seed(0)
    detector = save_checkpoint(base / "detector.pt", build_detector(config_from_dict(config), DETECTOR_CATEGORIES))
    images = base / "images"
    images.mkdir()
    gen = torch.Generator().manual_seed(1)
    for name, (w, h) in {"feeder_wide.jpg": (192, 108), "feeder_portrait.jpg": (90, 160)}.items():
        pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=gen).numpy()
        Image.fromarray(pixels).save(images / name)
    return {"detector": detector, "classifier": classifier, "images": images}


def _two_birds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The detector finds two birds per image at fixed places relative to its size (scores 0.91 and 0.6)."""

    def predict(self: BirdDetector, images: list[torch.Tensor], **_: object) -> list[Prediction]:
        out = []
        for t in images:
            h, w = t.shape[-2:]
            boxes = torch.tensor([[0.1 * w, 0.2 * h, 0.5 * w, 0.9 * h], [0.55 * w, 0.05 * h, 0.95 * w, 0.4 * h]])
            out.append(Prediction(boxes, torch.tensor([0.91, 0.6]), [1, 1], ["bird", "bird"], (w, h)))
        return out

    monkeypatch.setattr(BirdDetector, "predict", predict)


def _record_labels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every label text `--save-images` draws, in drawing order."""
    drawn: list[str] = []
    real: Callable[..., tuple[str, int]] = visualize.label_for

    def recording(*args: object, **kwargs: object) -> tuple[str, int]:
        text, key = real(*args, **kwargs)
        drawn.append(text)
        return text, key

    monkeypatch.setattr(visualize, "label_for", recording)
    return drawn


def test_uncertain_boxes_keep_the_detector_category_and_the_species_guess_in_every_output(
    run_inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _two_birds(monkeypatch)
    drawn = _record_labels(monkeypatch)
    out = tmp_path / "out"
    rc = main(
        [
            "predict", str(run_inputs["detector"]), str(run_inputs["images"]), "--out", str(out),
            "--classifier", str(run_inputs["classifier"]), "--rollup-threshold", "0.99", "--top-k", "2",
            "--conf", "0.0", "--classify-conf", "0.0", "--workers", "0", "--save-images",
        ]
    )  # fmt: skip
    assert rc == 0

    # predictions.csv: the first release's columns unchanged in place, the new ones appended.
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert tuple(header[: len(FIRST_RELEASE_COLUMNS)]) == FIRST_RELEASE_COLUMNS
    assert tuple(header) == CSV_COLUMNS
    assert CSV_COLUMNS[: len(FIRST_RELEASE_COLUMNS) + 2] == (
        *FIRST_RELEASE_COLUMNS,
        "identified_as",
        "species_uncertain",
    )
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted({r["file"] for r in rows}) == ["feeder_portrait.jpg", "feeder_wide.jpg"]
    assert len(rows) == 4
    guesses: dict[tuple[str, str], tuple[str, float]] = {}
    for row in rows:
        species_score = float(row["species_score"])
        assert 1 / len(OWN_CLASSES) < species_score < 0.99  # a real guess, under the threshold
        assert row["category"] == "bird" and row["identified_as"] == "bird"
        assert row["species_uncertain"] == "true"
        assert row["species"] in OWN_CLASSES
        assert row["det_score"] in {"0.91", "0.6"}
        guesses[(row["file"], row["det_score"])] = (row["species"], species_score)

    # coco.json: category is the detector's; the guess and the flag ride along on each annotation.
    coco_path = out / "coco.json"
    coco = json.loads(coco_path.read_text(encoding="utf-8"))
    assert coco["categories"] == [{"id": 1, "name": "bird"}]
    files = {im["id"]: (im["file_name"], im["width"], im["height"]) for im in coco["images"]}
    assert sorted(files.values()) == [("feeder_portrait.jpg", 90, 160), ("feeder_wide.jpg", 192, 108)]
    assert len(coco["annotations"]) == 4
    for ann in coco["annotations"]:
        file = files[ann["image_id"]][0]
        species, species_score = guesses[(file, f"{round(ann['score'], 4)}")]
        assert ann["category_id"] == 1
        assert ann["identified_as"] == "bird" and ann["species_uncertain"] is True
        assert ann["species_name"] == species
        assert ann["species_index"] == OWN_CLASSES.index(species)
        assert ann["species_score"] == pytest.approx(species_score, abs=1e-4)
    assert len(COCO(str(coco_path)).getAnnIds(catIds=[1])) == 4  # pycocotools still reads it

    # megadetector.json: detector category, top species first in `classifications`, names in the header.
    md = json.loads((out / "megadetector.json").read_text(encoding="utf-8"))
    assert md["detection_categories"] == {"1": "bird"}
    assert set(md["classification_categories"].values()) <= set(OWN_CLASSES)
    for image in md["images"]:
        assert len(image["detections"]) == 2
        for det in image["detections"]:
            assert det["category"] == "1"
            species, species_score = guesses[(image["file"], f"{det['conf']}")]
            (top_id, top_conf), _second = det["classifications"]
            assert isinstance(top_id, str) and isinstance(top_conf, float)
            assert md["classification_categories"][top_id] == species
            assert top_conf == pytest.approx(species_score, abs=1e-3)
            assert set(det) == {"category", "conf", "bbox", "classifications"}  # nothing outside the format

    # The drawn labels: the detector's category and score, then the guess with a "?" and its probability.
    expected = {
        f"bird {float(det_score):.2f} · {species}? {score:.2f}" for (_, det_score), (species, score) in guesses.items()
    }
    assert len(drawn) == 4 and set(drawn) == expected
    assert all("unknown" not in text for text in drawn)
    for name, size in {"feeder_wide.jpg": (192, 108), "feeder_portrait.jpg": (90, 160)}.items():
        with Image.open(out / "images" / name) as annotated:
            assert annotated.size == size


def _own_crops_detection(probability: float, det_score: float = 0.91) -> Detection:
    return Detection(
        (10.0, 20.0, 60.0, 90.0),
        det_score,
        1,
        "bird",
        [Classification(0, probability), Classification(2, 0.2)],
        Rollup("unknown", "unknown", probability),
    )


def test_label_of_an_uncertain_box_names_the_category_then_the_guess_with_both_numbers() -> None:
    own = Taxonomy({name: i for i, name in enumerate(OWN_CLASSES)})
    text, key = label_for(_own_crops_detection(0.36), own)
    assert text == "bird 0.91 · sanhaco_da_amazonia? 0.36"
    assert key == 1  # coloured as the detector category, not as the guessed species
    assert label_for(_own_crops_detection(0.36), None)[0] == "bird 0.91 · class 0? 0.36"

    inat = Taxonomy({"00000_Animalia_Chordata_Aves_Passeriformes_Turdidae_Turdus_migratorius": 0}, {0: "robin"})
    uncertain = Detection((0, 0, 5, 5), 0.91, 1, "bird", [Classification(0, 0.36)], Rollup("unknown", "unknown", 0.36))
    assert label_for(uncertain, inat)[0] == "bird 0.91 · robin? 0.36"
    assert label_for(uncertain, inat, use_common_names=False)[0] == "bird 0.91 · Turdus migratorius? 0.36"


def test_confident_species_and_rolled_up_boxes_keep_their_labels_and_say_so_in_the_files() -> None:
    """Where a species or a higher rank passes the threshold, the existing roll-up answer stands."""
    taxonomy = Taxonomy(
        {
            "00000_Animalia_Chordata_Aves_Passeriformes_Fringillidae_Spinus_tristis": 0,
            "00001_Animalia_Chordata_Aves_Passeriformes_Fringillidae_Spinus_pinus": 1,
        },
        {0: "American Goldfinch"},
    )
    confident = Detection(
        (0, 0, 8, 6), 0.93, 1, "bird", [Classification(0, 0.87)], Rollup("species", "Spinus tristis", 0.87, 0)
    )
    genus = Detection(
        (0, 0, 8, 6),
        0.93,
        1,
        "bird",
        [Classification(0, 0.45), Classification(1, 0.45)],
        Rollup("genus", "Spinus", 0.9),
    )
    unclassified = Detection((0, 0, 8, 6), 0.93, 1, "bird")
    assert label_for(confident, taxonomy)[0] == "American Goldfinch 0.87"
    assert label_for(genus, taxonomy)[0] == "Spinus (genus) 0.90"
    assert label_for(unclassified, taxonomy)[0] == "bird 0.93"
    assert [(d.identified_as, d.species_uncertain) for d in (confident, genus, unclassified)] == [
        ("Spinus tristis", False),
        ("Spinus", False),
        ("bird", None),
    ]

    result = ImageResult("a.jpg", "/x/a.jpg", 16, 9, [confident, genus, unclassified])
    rows = list(csv.DictReader(predictions_csv_text([result], taxonomy=taxonomy).splitlines()))
    assert [(r["identified_as"], r["species_uncertain"], r["rollup_taxon"]) for r in rows] == [
        ("Spinus tristis", "false", "Spinus tristis"),
        ("Spinus", "false", "Spinus"),
        ("bird", "", ""),
    ]
    anns = coco_dict([result], categories=DETECTOR_CATEGORIES, taxonomy=taxonomy)["annotations"]
    assert [(a["category_id"], a["identified_as"], a["species_uncertain"]) for a in anns] == [
        (1, "Spinus tristis", False),
        (1, "Spinus", False),
        (1, "bird", None),
    ]


def test_a_failed_image_keeps_its_reason_in_the_failure_column() -> None:
    """The failure row is built by column name: appending columns must not move the reason out of `failure`."""
    text = predictions_csv_text([ImageResult("b.jpg", "/x/b.jpg", None, None, failure="truncated JPEG")], taxonomy=None)
    (row,) = csv.DictReader(text.splitlines())
    assert row["failure"] == "truncated JPEG" and row["species_uncertain"] == "" and row["identified_as"] == ""
