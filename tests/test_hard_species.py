"""`birddet synth --species hard`: six look-alike songbirds for telling species-classifier recipes apart.

What a user relies on: six named species in the COCO file, every one drawn, the same files from the same seed, the
easy set unchanged, the option reachable from the CLI and from a classifier config, and birds that differ by field
marks (not by silhouette): the sexes of a dimorphic species differ in colour where the species' sexes are drawn.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw

from birddet.cli import main
from birddet.config import ClassifierConfig, config_from_dict
from birddet.data.synthetic import SYNTH_CATEGORIES, make_synthetic_coco
from birddet.data.synthetic_species import HARD_SPECIES, HARD_SPECIES_CATEGORIES, draw_hard_species

NAMES = ["house_finch", "purple_finch", "house_sparrow", "great_tit", "blue_tit", "eurasian_siskin"]


def test_hard_species_set_names_six_species_and_draws_each_of_them(tmp_path) -> None:
    rc = main(["synth", str(tmp_path / "hard"), "--preset", "realistic", "--species", "hard", "--images", "30",
               "--size", "320", "480"])  # fmt: skip
    assert rc == 0
    train = json.loads((tmp_path / "hard" / "train.json").read_text())
    assert [c["name"] for c in train["categories"]] == NAMES
    counts = Counter(a["category_id"] for a in train["annotations"])
    assert set(counts) == {1, 2, 3, 4, 5, 6}, counts


def test_same_seed_same_files_and_the_easy_set_is_unchanged(tmp_path) -> None:
    a = make_synthetic_coco(
        tmp_path / "a", num_train=4, num_val=1, preset="realistic", species="hard", image_size=(256, 320)
    )
    b = make_synthetic_coco(
        tmp_path / "b", num_train=4, num_val=1, preset="realistic", species="hard", image_size=(256, 320)
    )
    assert a["train"].read_text() == b["train"].read_text()
    for name in ("train_000000.jpg", "train_000003.jpg"):
        assert (a["images"] / name).read_bytes() == (b["images"] / name).read_bytes()
    easy = make_synthetic_coco(tmp_path / "easy", num_train=2, num_val=1)
    assert json.loads(easy["train"].read_text())["categories"] == SYNTH_CATEGORIES


def test_a_classifier_config_can_ask_for_the_hard_species() -> None:
    cfg = config_from_dict({"data": {"synthetic": {"species": "hard"}}}, schema=ClassifierConfig)
    assert cfg.data.synthetic.species == "hard"
    with pytest.raises(ValueError, match="species"):
        make_synthetic_coco("/nonexistent", num_train=1, num_val=1, species="medium")


def _drawn(category_id: int, seed: int) -> np.ndarray:
    canvas = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    draw_hard_species(ImageDraw.Draw(canvas), np.random.default_rng(seed), category_id)
    return np.asarray(canvas)


def test_all_six_share_one_silhouette_and_differ_in_colour() -> None:
    masks = {cid: _drawn(cid, 0)[..., 3] > 0 for cid in range(1, 7)}
    colours = {cid: _drawn(cid, 0)[..., :3][masks[cid]].mean(axis=0) for cid in range(1, 7)}
    for cid in range(2, 7):  # the silhouettes overlap by most of their area: shape alone does not tell them apart
        inter = (masks[1] & masks[cid]).sum()
        union = (masks[1] | masks[cid]).sum()
        assert inter / union > 0.6, (cid, inter / union)
    assert len(HARD_SPECIES_CATEGORIES) == 6
    assert min(np.abs(colours[a] - colours[b]).sum() for a in colours for b in colours if a < b) > 0


def test_dimorphic_species_draw_both_sexes() -> None:
    house_finch = NAMES.index("house_finch") + 1
    assert HARD_SPECIES[house_finch - 1].female is not None
    # Over seeds both plumages appear: the male's red head and the female's brown one.
    reds = [_drawn(house_finch, s)[..., :3].reshape(-1, 3) for s in range(12)]
    red_share = [((p[:, 0] > 170) & (p[:, 1] < 90)).mean() for p in reds]
    assert max(red_share) > 0.02 and min(red_share) < 0.002, red_share
