"""`birddet stats`: counts, COCO size bins, suggested image and anchor sizes, and the files it writes."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from birddet import cli
from birddet.data.stats import compute_stats, suggest_sizes


def _data(long_side: int = 1920, box: float = 40.0, n: int = 20) -> dict:
    images = [
        {"id": i, "file_name": f"{i}.jpg", "width": long_side, "height": long_side * 9 // 16} for i in range(1, n + 1)
    ]
    anns = [{"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [10, 10, box, box]} for i in range(1, n)]
    anns.append({"id": 99, "image_id": 1, "category_id": 1, "bbox": [100, 100, 100, 100], "iscrowd": 1})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "gull"}, {"id": 2, "name": "tern"}]}


def test_counts_bins_and_relative_sizes():
    s = compute_stats(_data(box=40.0))
    assert (s["images"], s["boxes"], s["negatives"], s["crowd_or_difficult"]) == (20, 19, 1, 1)
    assert s["boxes_per_class"] == {"gull": 9, "tern": 10}
    assert s["coco_area_bins"] == {"small": 0, "medium": 19, "large": 0}  # 40^2 = 1600 is in [32^2, 96^2)
    assert s["box_side_px"]["p50"] == pytest.approx(40.0)
    assert s["box_side_relative"]["p50"] == pytest.approx(40.0 / (1920 * 1080) ** 0.5)
    assert s["image_aspect_w_over_h"]["p50"] == pytest.approx(16 / 9)


def test_suggestions_scale_with_bird_size():
    # 40 px birds on 1920 px frames: 16 px needs 1920 * 16 / 40 = 768 px
    small = suggest_sizes(compute_stats(_data(box=40.0)), num_levels=4)
    assert small["image_size"] == 768
    assert small["anchor_sizes"] == [16, 32, 64, 128]
    assert len(small["reasons"]) == 2 and "90% of boxes" in small["reasons"][0]
    big = suggest_sizes(compute_stats(_data(box=400.0)), num_levels=5)
    assert big["image_size"] == 256 and big["anchor_sizes"][0] == 56  # 400 px at 256/1920 = 53 px
    tiny = suggest_sizes(compute_stats(_data(box=6.0)), num_levels=5)
    assert tiny["image_size"] == 1536 and "tile" in tiny["reasons"][0]  # 16 / 6 * 1920 = 5120 > cap


def test_stats_command_writes_json_plots_and_gallery(tmp_path, capsys):
    data = _data(long_side=160, box=30.0, n=6)
    (tmp_path / "img").mkdir()
    for img in data["images"]:
        Image.new("RGB", (img["width"], img["height"]), (50, 90, 60)).save(tmp_path / "img" / img["file_name"])
    (tmp_path / "d.json").write_text(json.dumps(data))
    code = cli.main(
        ["stats", str(tmp_path / "d.json"), "--images", str(tmp_path / "img"), "--out", str(tmp_path / "o")]
    )
    out = capsys.readouterr().out
    assert code == 0 and "6 images (1 without boxes)" in out and "suggest model.image_size=" in out
    saved = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert saved["suggestions"]["image_size"] == 160 and saved["boxes"] == 5
    with Image.open(tmp_path / "o" / "gallery.png") as g:
        assert g.width >= 320 and g.height >= 320
    assert (tmp_path / "o" / "histograms.png").stat().st_size > 10_000
