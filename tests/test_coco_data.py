"""COCO loading: structural errors name the ids, bad boxes are repaired or dropped with a warning, and the
dataset serves torchvision-style targets (contiguous labels, crowd boxes as ignore regions, negatives kept)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from birddet.data.coco import CROWD_LABEL, CategoryMap, CocoDetection, load_coco_dataset
from birddet.data.sampler import GroupedBatchSampler, create_aspect_ratio_groups
from birddet.data.transforms import build_eval_transforms
from birddet.errors import InputError


def _coco(images=None, annotations=None, categories=None) -> dict:
    return {
        "images": images if images is not None else [{"id": 1, "file_name": "a.png", "width": 100, "height": 50}],
        "annotations": annotations if annotations is not None else [],
        "categories": categories if categories is not None else [{"id": 5, "name": "wren"}],
    }


def _ann(id_, bbox, image_id=1, category_id=5, **kw) -> dict:
    return {"id": id_, "image_id": image_id, "category_id": category_id, "bbox": bbox, **kw}


def _write(tmp_path: Path, data: dict, make_images: bool = True) -> tuple[Path, Path]:
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    if make_images:
        for img in data["images"]:
            Image.new("RGB", (img["width"], img["height"]), (10, 20, 30)).save(root / img["file_name"])
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return ann, root


def _load(tmp_path, data, **kw):
    return load_coco_dataset(*_write(tmp_path, data), **kw)


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [\n  oops]}')
    with pytest.raises(InputError, match=r"bad\.json: malformed JSON at line 2"):
        load_coco_dataset(path, tmp_path)


def test_missing_key_and_wrong_type(tmp_path):
    data = _coco()
    del data["categories"]
    with pytest.raises(InputError, match="missing top-level key 'categories'"):
        _load(tmp_path, data)
    bad = _coco(images=[{"id": "1", "file_name": "a.png", "width": 100, "height": 50}])
    with pytest.raises(InputError, match="'id' must be an integer"):
        load_coco_dataset(*_write(tmp_path, bad, make_images=False))


def test_duplicate_ids_are_named(tmp_path):
    data = _coco(annotations=[_ann(7, [1, 1, 5, 5]), _ann(7, [2, 2, 5, 5])])
    with pytest.raises(InputError, match=r"duplicate annotation ids \[7\]"):
        _load(tmp_path, data)
    imgs = [
        {"id": 3, "file_name": "a.png", "width": 10, "height": 10},
        {"id": 3, "file_name": "b.png", "width": 10, "height": 10},
    ]
    with pytest.raises(InputError, match=r"duplicate image ids \[3\]"):
        _load(tmp_path, _coco(images=imgs))


def test_unknown_category_and_image_ids_are_named(tmp_path):
    with pytest.raises(InputError, match=r"annotation id 9 .*unknown category_id 99"):
        _load(tmp_path, _coco(annotations=[_ann(9, [1, 1, 5, 5], category_id=99)]))
    with pytest.raises(InputError, match=r"annotation id 4 .*unknown image_id 42"):
        _load(tmp_path, _coco(annotations=[_ann(4, [1, 1, 5, 5], image_id=42)]))


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "sub/../../x.png", "C:\\x.png"])
def test_file_name_escaping_root_is_refused(tmp_path, name):
    data = _coco(images=[{"id": 12, "file_name": name, "width": 10, "height": 10}])
    with pytest.raises(InputError, match=r"escapes the image root .*12"):
        load_coco_dataset(*_write(tmp_path, data, make_images=False), check_files=False)


def test_missing_image_file_is_listed(tmp_path):
    data = _coco(images=[{"id": 1, "file_name": "gone.png", "width": 10, "height": 10}])
    ann, root = _write(tmp_path, data, make_images=False)
    with pytest.raises(InputError, match=r"1 image file\(s\) not found .*gone\.png"):
        load_coco_dataset(ann, root)
    load_coco_dataset(ann, root, check_files=False)  # evaluation-only uses may skip the check


def test_bad_boxes_are_dropped_or_clipped_with_ids(tmp_path, caplog):
    anns = [
        _ann(1, [10, 10, 20, 20]),  # fine
        _ann(2, [math.nan, 10, 20, 20]),  # NaN
        _ann(3, [10, 10, -5, 20]),  # negative width
        _ann(4, [10, 10, 20, 0]),  # zero height
        _ann(5, [-1.5, 40, 101.0, 11.5]),  # slightly outside (<= 2 px): clipped
        _ann(6, [300, 10, 20, 20]),  # far outside
    ]
    data, report = _load(tmp_path, _coco(annotations=anns))
    assert [a["id"] for a in data["annotations"]] == [1, 5]
    assert report.dropped_nonfinite == [2]
    assert report.dropped_nonpositive == [3, 4]
    assert report.dropped_far_outside == [6]
    assert report.clipped == [5]
    assert data["annotations"][1]["bbox"] == pytest.approx([0.0, 40.0, 99.5, 10.0])
    text = "\n".join(report.warnings)
    assert "width or height <= 0; annotation ids [3, 4]" in text
    assert "far outside" in text and "[6]" in text and "NaN" in text
    assert "4 dropped" in report.summary()
    assert "annotation ids [3, 4]" in caplog.text


def test_dataset_targets_negatives_and_crowd(tmp_path):
    images = [
        {"id": 10, "file_name": "a.png", "width": 100, "height": 50},
        {"id": 20, "file_name": "neg.png", "width": 40, "height": 80},
    ]
    cats = [{"id": 42, "name": "heron"}, {"id": 5, "name": "wren"}, {"id": 17, "name": "kite"}]
    anns = [
        _ann(1, [10, 5, 20, 10], image_id=10, category_id=17),
        _ann(2, [0, 0, 50, 50], image_id=10, category_id=42, iscrowd=1),
    ]
    ds = CocoDetection(*_write(tmp_path, _coco(images, anns, cats)))
    assert len(ds) == 2 and ds.image_ids == [10, 20]
    image, target = ds[0]
    assert image.shape == (3, 50, 100) and image.dtype == torch.float32 and image.max() <= 1.0
    # the crowd box comes last, labelled CROWD_LABEL: no target, but the detector must not sample it as background
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 5.0, 30.0, 15.0], [0.0, 0.0, 50.0, 50.0]]))
    assert target["labels"].tolist() == [2, CROWD_LABEL] and target["labels"].dtype == torch.int64  # 5->1, 17->2
    assert target["image_id"] == 10 and target["orig_size"] == (50, 100)
    assert ds.report.num_crowd == 1 and ds.report.num_negative_images == 1
    _, negative = ds[1]
    assert negative["boxes"].shape == (0, 4) and negative["labels"].shape == (0,)
    assert ds.aspect_ratios() == [2.0, 0.5]
    images_b, targets_b = CocoDetection.collate_fn([ds[0], ds[1]])
    assert len(images_b) == 2 and targets_b[1]["image_id"] == 20


def test_eval_transform_scale_in_target(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 100, "height": 50}]
    ds = CocoDetection(*_write(tmp_path, _coco(images, [_ann(1, [10, 10, 20, 20])])), build_eval_transforms(50))
    image, target = ds[0]
    assert image.shape == (3, 25, 50)
    assert target["scale"] == pytest.approx((0.5, 0.5))
    torch.testing.assert_close(target["boxes"], torch.tensor([[5.0, 5.0, 15.0, 15.0]]))


def test_bad_image_is_skipped_and_recorded(tmp_path, caplog):
    images = [
        {"id": 1, "file_name": "broken.png", "width": 10, "height": 10},
        {"id": 2, "file_name": "ok.png", "width": 10, "height": 10},
    ]
    ann, root = _write(tmp_path, _coco(images))
    (root / "broken.png").write_text("not a png")
    ds = CocoDetection(ann, root)
    _, target = ds[0]
    assert target["image_id"] == 2
    assert list(ds.skipped) == [str(root / "broken.png")]
    assert "broken.png" in caplog.text
    strict = CocoDetection(ann, root, skip_bad_images=False)
    with pytest.raises(InputError, match="broken.png"):
        strict[0]


def test_category_map_round_trip_with_noncontiguous_ids():
    cm = CategoryMap.from_categories(
        [{"id": 42, "name": "heron"}, {"id": 5, "name": "wren"}, {"id": 17, "name": "kite"}]
    )
    assert cm.coco_ids == [5, 17, 42] and cm.num_classes == 4
    assert [cm.to_label(i) for i in (5, 17, 42)] == [1, 2, 3]
    assert [cm.to_coco_id(lbl) for lbl in (1, 2, 3)] == [5, 17, 42]
    assert cm.name(3) == "heron"
    restored = CategoryMap.from_dict(json.loads(json.dumps(cm.as_dict())))  # keys become str in JSON
    assert restored == cm
    assert CategoryMap.from_categories({"42": "heron", 5: "wren", 17: "kite"}) == cm  # checkpoint form
    with pytest.raises(InputError, match="category id 6"):
        cm.to_label(6)
    with pytest.raises(ValueError):
        cm.to_coco_id(0)  # background has no category


def test_given_category_map_must_cover_the_file(tmp_path):
    data = _coco(annotations=[_ann(1, [1, 1, 5, 5])])
    with pytest.raises(InputError, match=r"categories the model was not trained on: 5 \('wren'\)"):
        CocoDetection(*_write(tmp_path, data), category_map=CategoryMap([1], ["x"]))


def test_grouped_batch_sampler_groups_and_covers_every_index():
    ratios = [0.5, 2.0, 0.6, 1.5, 0.7, 1.2, 0.8]
    groups = create_aspect_ratio_groups(ratios)
    assert groups == [0, 1, 0, 1, 0, 1, 0]
    sampler = GroupedBatchSampler(list(range(7)), groups, batch_size=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    assert sorted(i for b in batches for i in b) == list(range(7))
    for b in batches[:3]:
        assert len({groups[i] for i in b}) == 1
    assert len(create_aspect_ratio_groups(np.linspace(0.3, 3, 20), k=2)) == 20
    assert max(create_aspect_ratio_groups([0.1, 10.0], k=2)) == 5
