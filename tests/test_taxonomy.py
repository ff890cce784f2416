"""Taxonomy: class-name parsing, common names, filters, restrict and the rank roll-up arithmetic."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from birddet.errors import InputError
from birddet.pipeline.taxonomy import RANKS, Rollup, Taxonomy, load_common_names, parse_class_name

CLASS_NAMES = [
    "00000_Animalia_Chordata_Aves_Passeriformes_Fringillidae_Spinus_tristis",
    "00001_Animalia_Chordata_Aves_Passeriformes_Fringillidae_Spinus_pinus",
    "00002_Animalia_Chordata_Aves_Passeriformes_Fringillidae_Haemorhous_mexicanus",
    "00003_Animalia_Chordata_Aves_Passeriformes_Paridae_Poecile_atricapillus",
    "00004_Animalia_Chordata_Aves_Accipitriformes_Accipitridae_Buteo_jamaicensis",
    "00005_Animalia_Chordata_Mammalia_Rodentia_Sciuridae_Sciurus_carolinensis",
    "00006_Plantae_Tracheophyta_Magnoliopsida_Asterales_Asteraceae_Helianthus_annuus",
]
COMMON = {
    0: "American Goldfinch",
    1: "Pine Siskin",
    2: "House Finch",
    3: "Black-capped Chickadee",
    4: "Red-tailed Hawk",
}


@pytest.fixture
def taxonomy() -> Taxonomy:
    return Taxonomy({n: i for i, n in enumerate(CLASS_NAMES)}, COMMON)


def _p(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# -- parsing ----------------------------------------------------------------------------------------------


def test_parse_inat21_class_name_gives_all_ranks_with_binomial_species() -> None:
    ranks = parse_class_name("03838_Animalia_Chordata_Aves_Passeriformes_Fringillidae_Spinus_tristis")
    assert tuple(ranks) == RANKS
    assert ranks["order"] == "Passeriformes"
    assert ranks["genus"] == "Spinus"
    assert ranks["species"] == "Spinus tristis"


def test_parse_joins_everything_after_genus_into_the_epithet() -> None:
    ranks = parse_class_name("00001_Animalia_Chordata_Aves_Passeriformes_Fringillidae_Spinus_tristis_salicamans")
    assert ranks["species"] == "Spinus tristis salicamans"


def test_parse_accepts_lineage_without_numeric_prefix_when_it_starts_with_a_kingdom() -> None:
    assert parse_class_name("Animalia_Chordata_Aves_Passeriformes_Fringillidae_Spinus_tristis")["class"] == "Aves"


@pytest.mark.parametrize("name", ["songbird", "red_tailed_hawk_juvenile_male_adult_x", "00001_Animalia_Chordata"])
def test_parse_opaque_names_become_species_only(name: str) -> None:
    assert parse_class_name(name) == {"species": name}


def test_opaque_taxon_has_no_path_above_species() -> None:
    t = Taxonomy({"songbird": 0, "raptor": 1}).taxon(0)
    assert t.is_opaque
    assert t.scientific_name == "songbird"
    assert t.path("genus") == ()
    assert t.path("species") == ("songbird",)


def test_taxon_path_is_the_lineage_down_to_the_rank(taxonomy: Taxonomy) -> None:
    t = taxonomy.taxon(0)
    assert t.path("family") == ("Animalia", "Chordata", "Aves", "Passeriformes", "Fringillidae")
    assert t.path("kingdom") == ("Animalia",)
    assert t.common_name == "American Goldfinch"


def test_description_has_common_name_binomial_and_lineage(taxonomy: Taxonomy) -> None:
    assert taxonomy.description(0) == (
        "American Goldfinch (Spinus tristis); Animalia > Chordata > Aves > Passeriformes > Fringillidae > Spinus"
    )
    assert taxonomy.description(5).startswith("Sciurus carolinensis; Animalia >")
    assert Taxonomy({"songbird": 0}).description(0) == "songbird"


def test_class_to_idx_with_gaps_is_rejected() -> None:
    with pytest.raises(InputError, match="without gaps"):
        Taxonomy({"a": 0, "b": 2})


# -- common names -----------------------------------------------------------------------------------------


def test_load_common_names_reads_birder_json(tmp_path: Path) -> None:
    path = tmp_path / "names.json"
    path.write_text(json.dumps({"0": "American Goldfinch", "4": "Red-tailed Hawk"}), encoding="utf-8")
    names = load_common_names(path)
    assert names == {0: "American Goldfinch", 4: "Red-tailed Hawk"}
    taxonomy = Taxonomy({n: i for i, n in enumerate(CLASS_NAMES)}, path)
    assert taxonomy.taxon(4).common_name == "Red-tailed Hawk"
    assert taxonomy.taxon(1).common_name is None


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('["a", "b"]', "not an object"),
        ('{"abc": "Goldfinch"}', "not a class index"),
        ('{"0": ""}', "non-empty string"),
        ('{"0": 5}', "non-empty string"),
    ],
)
def test_malformed_common_names_file_names_the_file(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "bad_names.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=fragment) as info:
        load_common_names(path)
    assert "bad_names.json" in str(info.value)


def test_missing_common_names_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_common_names(tmp_path / "nope.json")


def test_common_name_for_unknown_class_index_is_rejected() -> None:
    with pytest.raises(InputError, match="classifier has 7 classes"):
        Taxonomy({n: i for i, n in enumerate(CLASS_NAMES)}, {99: "Dodo"})


# -- filters ----------------------------------------------------------------------------------------------


def test_taxon_filter_matches_any_rank_case_insensitively(taxonomy: Taxonomy) -> None:
    assert taxonomy.indices_in_taxon("Aves") == [0, 1, 2, 3, 4]
    assert taxonomy.indices_in_taxon("aves") == [0, 1, 2, 3, 4]
    assert taxonomy.indices_in_taxon("PASSERIFORMES") == [0, 1, 2, 3]
    assert taxonomy.indices_in_taxon("spinus tristis") == [0]
    assert taxonomy.indices_in_taxon("Spinus") == [0, 1]
    assert taxonomy.indices_in_taxon("house finch") == [2]


def test_unknown_taxon_suggests_close_matches(taxonomy: Taxonomy) -> None:
    with pytest.raises(InputError, match="did you mean 'Aves'"):
        taxonomy.indices_in_taxon("Avez")


def test_species_list_matches_scientific_class_and_common_names(taxonomy: Taxonomy, tmp_path: Path) -> None:
    path = tmp_path / "species.txt"
    path.write_text(f"# my feeder\nSpinus tristis\n\nhouse finch\n{CLASS_NAMES[4]}\n", encoding="utf-8")
    assert taxonomy.indices_for_species_list(path) == [0, 2, 4]
    assert taxonomy.indices_for_species_list(["Pine Siskin"]) == [1]


def test_species_list_reports_every_unmatched_line_number(taxonomy: Taxonomy, tmp_path: Path) -> None:
    path = tmp_path / "species.txt"
    path.write_text("Spinus tristis\nDodo\n\nSpinus tristiss\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        taxonomy.indices_for_species_list(path)
    msg = str(info.value)
    assert "species.txt" in msg and "2 entries" in msg
    assert "line 2: 'Dodo'" in msg and "line 4: 'Spinus tristiss'" in msg
    assert "did you mean 'Spinus tristis'" in msg


def test_species_list_higher_taxon_is_not_a_species(taxonomy: Taxonomy) -> None:
    with pytest.raises(InputError, match="line 1"):
        taxonomy.indices_for_species_list(["Aves"])


# -- restrict ---------------------------------------------------------------------------------------------


def test_restrict_zeroes_others_and_renormalises_rows(taxonomy: Taxonomy) -> None:
    probs = torch.stack([_p(0.1, 0.2, 0.3, 0.4, 0, 0, 0), _p(0, 0, 0, 0, 0.5, 0.5, 0)])
    out = taxonomy.restrict(probs, [1, 3])
    expected_row0 = _p(0, 0.2 / 0.6, 0, 0.4 / 0.6, 0, 0, 0)
    torch.testing.assert_close(out[0], expected_row0)
    # No mass on allowed classes: uniform over them, never NaN.
    torch.testing.assert_close(out[1], _p(0, 0.5, 0, 0.5, 0, 0, 0))
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2))


def test_restrict_rejects_empty_or_out_of_range_allowed(taxonomy: Taxonomy) -> None:
    probs = torch.full((7,), 1 / 7)
    with pytest.raises(InputError):
        taxonomy.restrict(probs, [])
    with pytest.raises(InputError):
        taxonomy.restrict(probs, [7])


# -- roll-up ----------------------------------------------------------------------------------------------


def _one(taxonomy: Taxonomy, probs: torch.Tensor, threshold: float = 0.5) -> Rollup:
    (result,) = taxonomy.rollup(probs, threshold)
    return result


def test_rollup_reports_species_when_top_species_passes(taxonomy: Taxonomy) -> None:
    r = _one(taxonomy, _p(0.6, 0.1, 0.1, 0.1, 0.05, 0.05, 0.0))
    assert (r.rank, r.name, r.class_index) == ("species", "Spinus tristis", 0)
    assert r.score == pytest.approx(0.6)


def test_rollup_reports_genus_when_its_sum_passes(taxonomy: Taxonomy) -> None:
    r = _one(taxonomy, _p(0.3, 0.3, 0.1, 0.1, 0.1, 0.1, 0.0))
    assert (r.rank, r.name, r.class_index) == ("genus", "Spinus", None)
    assert r.score == pytest.approx(0.6)


def test_rollup_reports_family_when_genera_fall_short(taxonomy: Taxonomy) -> None:
    r = _one(taxonomy, _p(0.2, 0.1, 0.25, 0.15, 0.15, 0.15, 0.0))
    assert (r.rank, r.name) == ("family", "Fringillidae")
    assert r.score == pytest.approx(0.55)


def test_rollup_reports_order_then_class(taxonomy: Taxonomy) -> None:
    r = _one(taxonomy, _p(0.2, 0.05, 0.1, 0.2, 0.3, 0.15, 0.0))
    assert (r.rank, r.name) == ("order", "Passeriformes")
    assert r.score == pytest.approx(0.55)
    r = _one(taxonomy, _p(0.1, 0.1, 0.1, 0.1, 0.3, 0.3, 0.0))
    assert (r.rank, r.name) == ("class", "Aves")
    assert r.score == pytest.approx(0.7)


def test_rollup_reports_best_kingdom_when_nothing_passes(taxonomy: Taxonomy) -> None:
    r = _one(taxonomy, _p(0.2, 0.1, 0.1, 0.1, 0.2, 0.2, 0.1), threshold=0.95)
    assert (r.rank, r.name) == ("kingdom", "Animalia")
    assert r.score == pytest.approx(0.9)


def test_rollup_of_opaque_taxonomy_is_species_or_unknown() -> None:
    taxonomy = Taxonomy({"songbird": 0, "raptor": 1})
    assert _one(taxonomy, _p(0.4, 0.6)).name == "raptor"
    r = _one(taxonomy, _p(0.45, 0.55), threshold=0.7)
    assert (r.rank, r.name) == ("unknown", "unknown")
    assert r.score == pytest.approx(0.55)


def test_rollup_batch_matches_rows_one_by_one(taxonomy: Taxonomy) -> None:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(16, 7) * 2, dim=1)
    batch = taxonomy.rollup(probs, 0.6)
    assert len(batch) == 16
    for row, expected in zip(probs, batch, strict=True):
        assert _one(taxonomy, row, 0.6) == expected


def test_rollup_of_10000_classes_batch_64_is_vectorised() -> None:
    class_to_idx = {
        f"{i:05d}_Animalia_Chordata_C{i // 1000}_O{i // 200}_F{i // 50}_G{i // 2}_sp{i}": i for i in range(10_000)
    }
    taxonomy = Taxonomy(class_to_idx)
    probs = torch.softmax(torch.randn(64, 10_000) * 3, dim=1)
    # One intra-op thread: on a machine whose cores are busy with other work, OpenMP threads spin-wait
    # and multiply the time tenfold, which says nothing about whether the code is vectorised.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        taxonomy.rollup(probs, 0.5)
        timings = []
        for _ in range(5):
            start = time.process_time()  # CPU time: a busy machine delays the call but does not add to it
            taxonomy.rollup(probs, 0.5)
            timings.append(time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
    # About 1 ms of CPU measured; the bound is loose (cache contention on a busy machine still costs some CPU time),
    # yet a per-class Python loop (hundreds of ms) would fail it.
    assert min(timings) < 0.025
