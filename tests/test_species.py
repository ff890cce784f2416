"""The species classifier wrapper: loading a birder file, frozen weights, batched crops, filters, top-k, roll-up."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from birddet.backbone.presets import get_preset
from birddet.backbone.vit import ViT
from birddet.backbone.weights import WeightsError, save_birder_file
from birddet.errors import InputError
from birddet.pipeline.species import SpeciesClassifier, default_classifier_source

# iNat21-style names: three birds (two in one genus), a mammal and a plant.
CLASS_NAMES = [
    "00000_Animalia_Chordata_Aves_Passeriformes_Fringillidae_Spinus_tristis",
    "00001_Animalia_Chordata_Aves_Passeriformes_Fringillidae_Spinus_pinus",
    "00002_Animalia_Chordata_Aves_Accipitriformes_Accipitridae_Buteo_jamaicensis",
    "00003_Animalia_Chordata_Mammalia_Rodentia_Sciuridae_Sciurus_carolinensis",
    "00004_Plantae_Tracheophyta_Magnoliopsida_Rosales_Rosaceae_Rosa_canina",
]
AVES = {0, 1, 2}


def write_tiny_classifier(path: Path, *, size: int = 32, seed: int = 0) -> Path:
    """A tiny-preset classifier with random weights at ``size`` px, saved in birder's format with the names above."""
    torch.manual_seed(seed)
    net = ViT(get_preset("vit_reg4_tiny16_rms_avg"), num_classes=len(CLASS_NAMES), image_size=(size, size))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.2)  # spread logits so the softmax is not uniform
    return save_birder_file(
        net,
        path,
        class_to_idx={n: i for i, n in enumerate(CLASS_NAMES)},
        rgb_stats={"mean": [0.4, 0.45, 0.5], "std": [0.25, 0.25, 0.25]},
    )


@pytest.fixture
def classifier_file(tmp_path: Path) -> Path:
    return write_tiny_classifier(tmp_path / "species.pt")


def test_loaded_classifier_is_frozen_in_eval_mode_with_file_size_and_stats(classifier_file: Path) -> None:
    clf = SpeciesClassifier.load(classifier_file)
    assert not clf.net.training
    assert all(not p.requires_grad for p in clf.net.parameters())
    assert clf.size == (32, 32)
    assert clf.info.rgb_stats["mean"] == [0.4, 0.45, 0.5]
    assert clf.taxonomy.taxon(0).scientific_name == "Spinus tristis"


def test_crops_from_many_images_go_through_one_forward_pass(classifier_file: Path) -> None:
    clf = SpeciesClassifier.load(classifier_file, top_k=3)
    images = [torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8) for _ in range(3)]
    boxes = [
        torch.tensor([[5.0, 5.0, 30.0, 40.0], [40.0, 10.0, 79.0, 59.0]]),
        torch.zeros((0, 4)),
        torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
    ]
    out = clf.classify_images(images, boxes)
    assert clf.forward_calls == 1
    assert [len(r) for r in out] == [2, 0, 1]
    for result in out[0] + out[2]:
        scores = [c.score for c in result.classifications]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-5
        # The roll-up's taxon holds at least the top species' probability, and reaches the threshold (0.5) unless
        # nothing does (then the best kingdom is reported).
        assert result.rollup.score >= scores[0] - 1e-6
        assert result.rollup.score >= 0.5 or result.rollup.rank == "kingdom"


def test_batched_results_equal_one_crop_at_a_time(classifier_file: Path) -> None:
    clf = SpeciesClassifier.load(classifier_file)
    img = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 30.0, 60.0, 62.0]])
    together = clf.classify_images([img], [boxes])[0]
    alone = [clf.classify_images([img], [b[None]])[0][0] for b in boxes]
    for a, b in zip(together, alone, strict=True):
        assert [c.class_index for c in a.classifications] == [c.class_index for c in b.classifications]
        assert [c.score for c in a.classifications] == pytest.approx([c.score for c in b.classifications], abs=1e-5)


def test_taxon_restriction_renormalises_and_never_lists_filtered_classes(classifier_file: Path) -> None:
    clf = SpeciesClassifier.load(classifier_file, taxon="Aves", top_k=5)
    crops = torch.randn(4, 3, 32, 32)
    probs = clf.probabilities(crops)
    assert torch.allclose(probs.sum(dim=1), torch.ones(4), atol=1e-5)
    assert torch.all(probs[:, [3, 4]] == 0)
    for r in clf.classify(crops):
        assert {c.class_index for c in r.classifications} <= AVES
        assert len(r.classifications) == 3  # top-k capped by the allowed classes


def test_species_list_intersects_with_taxon(classifier_file: Path, tmp_path: Path) -> None:
    lst = tmp_path / "species.txt"
    lst.write_text("Spinus tristis\nSciurus carolinensis\n")
    clf = SpeciesClassifier.load(classifier_file, taxon="Aves", species_list=lst)
    assert clf.allowed == [0]
    lst.write_text("Sciurus carolinensis\n")
    with pytest.raises(InputError, match="belongs to taxon"):
        SpeciesClassifier.load(classifier_file, taxon="Aves", species_list=lst)


def test_unknown_taxon_and_encoder_without_head_are_input_errors(classifier_file: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Aves"):
        SpeciesClassifier.load(classifier_file, taxon="Avez")
    net = ViT(get_preset("vit_reg4_tiny16_rms_avg"), num_classes=0, image_size=(32, 32))
    encoder = save_birder_file(net, tmp_path / "encoder.pt", class_to_idx={})
    with pytest.raises(WeightsError, match="no classification head"):
        SpeciesClassifier.load(encoder)


def test_default_source_is_an_existing_file_or_a_cached_registered_name(
    classifier_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BIRDDET_CACHE", str(tmp_path / "cache"))
    assert default_classifier_source(str(classifier_file)) == (str(classifier_file), "")
    source, why = default_classifier_source(None)
    assert source is None and "not initialised" in why
    source, why = default_classifier_source("vit_reg4_m16_rms_avg_i-jepa-inat21")
    assert source is None and "not in the cache" in why
    cached = tmp_path / "cache" / "weights" / "vit_reg4_m16_rms_avg_i-jepa-inat21.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert default_classifier_source("vit_reg4_m16_rms_avg_i-jepa-inat21")[0] == "vit_reg4_m16_rms_avg_i-jepa-inat21"


def test_crop_size_can_be_overridden_to_trade_accuracy_for_speed(classifier_file: Path) -> None:
    clf = SpeciesClassifier.load(classifier_file, size=16)
    assert clf.size == (16, 16)
    crops = clf.crops(torch.zeros((3, 40, 40), dtype=torch.uint8), torch.tensor([[0.0, 0.0, 20.0, 20.0]]))
    assert crops.shape == (1, 3, 16, 16)
    assert len(clf.classify(crops)) == 1
