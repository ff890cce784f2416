"""Annotated images: boxes drawn where the detections are, labels readable and inside, files written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from birddet.pipeline.taxonomy import Rollup, Taxonomy
from birddet.pipeline.visualize import draw_detections, label_for, save_annotated
from birddet.pipeline.writers import Classification, Detection

GREY = (128, 128, 128)


@pytest.fixture
def taxonomy() -> Taxonomy:
    return Taxonomy(
        {
            "00000_Animalia_Chordata_Aves_Passeriformes_Fringillidae_Spinus_tristis": 0,
            "00001_Animalia_Chordata_Aves_Passeriformes_Fringillidae_Spinus_pinus": 1,
        },
        {0: "American Goldfinch"},
    )


def _det(box: tuple[float, float, float, float], cls: int | None = 0, rollup: Rollup | None = None) -> Detection:
    classifications = [] if cls is None else [Classification(cls, 0.87)]
    return Detection(box, 0.93, 1, "bird", classifications, rollup)


def test_label_prefers_common_name_then_scientific_then_category(taxonomy: Taxonomy) -> None:
    assert label_for(_det((0, 0, 1, 1)), taxonomy)[0] == "American Goldfinch 0.87"
    assert label_for(_det((0, 0, 1, 1)), taxonomy, use_common_names=False)[0] == "Spinus tristis 0.87"
    assert label_for(_det((0, 0, 1, 1), cls=1), taxonomy)[0] == "Spinus pinus 0.87"
    assert label_for(_det((0, 0, 1, 1), cls=None), taxonomy)[0] == "bird 0.93"
    genus = _det((0, 0, 1, 1), rollup=Rollup("genus", "Spinus", 0.9))
    assert label_for(genus, taxonomy)[0] == "Spinus (genus) 0.90"


def test_draw_changes_box_pixels_and_leaves_far_pixels_and_input_alone(taxonomy: Taxonomy) -> None:
    image = Image.new("RGB", (200, 150), GREY)
    out = draw_detections(image, [_det((40, 60, 140, 130))], taxonomy)
    assert out.size == image.size and out.mode == "RGB"
    assert np.all(np.asarray(image) == GREY)  # input untouched
    pixels = np.asarray(out)
    assert np.any(pixels[60:131, 40] != GREY)  # left edge of the box
    assert np.any(pixels[130, 40:141] != GREY)  # bottom edge
    assert np.all(pixels[140:, 160:] == GREY)  # far corner untouched


def test_label_of_box_at_image_edge_stays_inside(taxonomy: Taxonomy) -> None:
    image = Image.new("L", (120, 90), 200)  # greyscale input is converted, not rejected
    out = draw_detections(image, [_det((100, 0, 119, 30))], taxonomy)
    pixels = np.asarray(out)
    # Label sits inside the top edge and is pushed left, so columns left of the box are painted.
    assert np.any(pixels[0:10, 0:100] != 200)


def test_save_annotated_writes_readable_file_atomically(tmp_path: Path, taxonomy: Taxonomy) -> None:
    image = Image.new("RGB", (64, 48), GREY)
    for name in ("a.jpg", "sub/b.png"):
        path = save_annotated(image, [_det((5, 5, 40, 40))], tmp_path / name, taxonomy)
        with Image.open(path) as saved:
            assert saved.size == (64, 48)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.jpg", "b.png"]
    with pytest.raises(ValueError, match="format"):
        save_annotated(image, [], tmp_path / "c.unknown", taxonomy)


def test_labels_never_cover_each_other_and_stay_inside() -> None:
    from birddet.pipeline.visualize import place_labels

    # a tight flock: 60 birds of 12 px on a 200 x 120 image, labels 40 x 14
    boxes = [(float(x), float(y), x + 12.0, y + 12.0) for y in range(4, 110, 16) for x in range(4, 190, 22)]
    spots = place_labels(boxes, [(40.0, 14.0)] * len(boxes), (200, 120))
    shown = [s for s in spots if s is not None]
    assert 0 < len(shown) < len(boxes)  # not all fit: some boxes go unlabelled rather than overlapped
    for i, a in enumerate(shown):
        assert a[0] >= 0 and a[1] >= 0 and a[2] <= 200 and a[3] <= 120
        for b in shown[i + 1 :]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    # the first (most confident) box always gets the spot above it when there is room
    assert place_labels([(50.0, 50.0, 80.0, 80.0)], [(40.0, 14.0)], (200, 120)) == [(50.0, 36.0, 90.0, 50.0)]


def test_line_width_grows_with_the_image() -> None:
    from birddet.pipeline.visualize import line_width

    assert line_width((640, 480)) == 2
    assert line_width((4000, 3000)) == 10
    assert line_width((20000, 15000)) == 50


def test_dense_flock_draws_every_box_and_only_the_strongest_labels(taxonomy: Taxonomy) -> None:
    image = Image.new("RGB", (300, 200), GREY)
    dets = [
        Detection((float(x), float(y), x + 10.0, y + 10.0), 0.5 + 0.001 * i, 1, "bird", [], None)
        for i, (x, y) in enumerate((x, y) for y in range(20, 190, 15) for x in range(5, 290, 15))
    ]
    pixels = np.asarray(draw_detections(image, dets, taxonomy))
    for d in dets:  # every box outline is drawn (its left edge changed colour)
        x1, y1, _, y2 = (int(v) for v in d.box_xyxy)
        assert np.any(pixels[y1 : y2 + 1, x1] != GREY)
