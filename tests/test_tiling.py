"""Tiling geometry and merging (`birddet.pipeline.tiling`): windows, exact mapping back, cut boxes, NMS/NMM."""

from __future__ import annotations

import pytest
import torch
from test_tiled_predict import blob_boxes

from birddet.errors import InputError
from birddet.pipeline.tiling import (
    TileOptions,
    drop_cut_duplicates,
    edge_cut_mask,
    iter_window_batches,
    match_matrix,
    merge_detections,
    tile_windows,
    tiled_detect,
    to_image_coords,
    window_starts,
)


# -- windows ------------------------------------------------------------------------------------------------------------
def test_window_starts_shift_the_last_window_inward() -> None:
    # stride 768 for 1024 at 25 %: 0, 768, 1536, then the last one ends exactly at 3000 (never padded past it)
    assert window_starts(3000, 1024, 0.25) == [0, 768, 1536, 1976]
    assert window_starts(1024 + 768, 1024, 0.25) == [0, 768]  # exact fit: no extra window
    assert window_starts(4000, 1000, 0.0) == [0, 1000, 2000, 3000]


def test_side_not_longer_than_a_tile_is_one_window() -> None:
    assert window_starts(1024, 1024, 0.25) == [0]
    assert window_starts(300, 1024, 0.25) == [0]
    small = tile_windows(300, 200, 1024, 0.25)
    assert small.tolist() == [[0, 0, 300, 200]]


def test_tile_windows_cover_a_16_9_image_inside_its_bounds() -> None:
    w, h = 1920, 1080
    win = tile_windows(w, h, 640, 0.25)
    assert win.dtype == torch.int64
    assert (win[:, 0] >= 0).all() and (win[:, 1] >= 0).all()
    assert (win[:, 2] <= w).all() and (win[:, 3] <= h).all()
    assert ((win[:, 2] - win[:, 0]) == 640).all() and ((win[:, 3] - win[:, 1]) == 640).all()
    assert win[:, 2].max() == w and win[:, 3].max() == h
    # every pixel is covered
    cover = torch.zeros(h, w, dtype=torch.bool)
    for x0, y0, x1, y1 in win.tolist():
        cover[y0:y1, x0:x1] = True
    assert cover.all()
    # row-major: 4 columns (0, 480, 960, 1280) x 2 rows (0, 440)
    assert sorted(set(win[:, 0].tolist())) == [0, 480, 960, 1280]
    assert sorted(set(win[:, 1].tolist())) == [0, 440]


def test_panorama_narrower_than_a_tile_in_height() -> None:
    win = tile_windows(5000, 400, 1024, 0.25)
    assert (win[:, 1] == 0).all() and (win[:, 3] == 400).all()
    assert win[-1, 2] == 5000


def test_every_bird_smaller_than_the_overlap_is_whole_in_some_window() -> None:
    win = tile_windows(2000, 1500, 512, 0.25)
    g = torch.Generator().manual_seed(0)
    side = int(0.25 * 512)
    for _ in range(200):
        x = int(torch.randint(0, 2000 - side, (1,), generator=g))
        y = int(torch.randint(0, 1500 - side, (1,), generator=g))
        inside = (win[:, 0] <= x) & (win[:, 1] <= y) & (win[:, 2] >= x + side) & (win[:, 3] >= y + side)
        assert inside.any()


def test_window_batches_are_lazy_views_converted_per_batch() -> None:
    image = torch.arange(3 * 40 * 60, dtype=torch.int64).reshape(3, 40, 60).remainder(256).to(torch.uint8)
    win = tile_windows(60, 40, 32, 0.5)
    batches = iter_window_batches(image, win, 2)
    chunk, crops = next(batches)
    assert len(crops) == 2 and chunk.tolist() == win[:2].tolist()
    x0, y0, x1, y1 = win[1].tolist()
    assert torch.equal(crops[1], image[:, y0:y1, x0:x1])
    assert crops[1].data_ptr() == image[:, y0:, x0:].data_ptr()  # a view: nothing copied before the detector
    assert sum(len(c) for _, c in batches) == len(win) - 2


# -- mapping and cut boxes --------------------------------------------------------------------------------------------
def test_boxes_map_back_to_the_image_exactly() -> None:
    local = torch.tensor([[0.0, 0.0, 10.5, 20.25], [100.0, 3.0, 131.0, 40.0]])
    mapped = to_image_coords(local, torch.tensor([768, 440, 1792, 1464]))
    assert torch.equal(mapped, torch.tensor([[768.0, 440.0, 778.5, 460.25], [868.0, 443.0, 899.0, 480.0]]))


def test_edge_cut_mask_ignores_window_edges_on_the_image_border() -> None:
    window = (0, 0, 100, 100)  # top-left window of a 300x200 image: only its right and bottom edges are inner
    boxes = torch.tensor(
        [
            [0.0, 0.0, 20.0, 20.0],  # on the image border: not cut
            [80.0, 10.0, 99.5, 30.0],  # touches the inner right edge
            [10.0, 90.0, 30.0, 100.0],  # touches the inner bottom edge
            [40.0, 40.0, 60.0, 60.0],  # inside
        ]
    )
    assert edge_cut_mask(boxes, window, (300, 200), margin=2.0).tolist() == [False, True, True, False]
    whole_image = edge_cut_mask(boxes, (0, 0, 300, 200), (300, 200), margin=2.0)
    assert not whole_image.any()


def test_cut_box_goes_only_when_a_window_holds_the_bird_whole() -> None:
    boxes = torch.tensor(
        [
            [90.0, 10.0, 100.0, 30.0],  # cut half of a bird (right edge of window 1)
            [90.0, 10.0, 110.0, 30.0],  # the whole bird, from window 2
            [95.0, 50.0, 100.0, 60.0],  # cut, no whole partner: the only record of that bird
            [90.0, 10.0, 100.0, 30.0],  # cut, same place as the first but another class
        ]
    )
    labels = torch.tensor([1, 1, 1, 2])
    cut = torch.tensor([True, False, True, True])
    assert drop_cut_duplicates(boxes, labels, cut, 0.5).tolist() == [False, True, True, True]
    assert drop_cut_duplicates(boxes, labels, cut, 0.5, chunk=1).tolist() == [False, True, True, True]


# -- matching and merging ---------------------------------------------------------------------------------------------
def test_match_matrix_iou_agrees_with_torchvision_and_ios_uses_the_smaller_box() -> None:
    from torchvision.ops import box_iou

    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 25.0]])
    b = torch.tensor([[0.0, 0.0, 5.0, 5.0], [0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 40.0, 40.0]])
    assert torch.allclose(match_matrix(a, b, "iou"), box_iou(a, b))
    ios = match_matrix(a, b, "ios")
    assert ios[0, 0] == 1.0 and ios[0, 1] == 1.0 and ios[0, 2] == 0.0  # contained either way -> 1
    assert ios[1, 1] == pytest.approx(150 / 200)


def _overlapping() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 0.0, 11.0, 10.0],  # IoU 0.818 with box 0
            [0.0, 0.0, 4.0, 10.0],  # inside box 0: IoU 0.4, IoS 1
            [1.0, 0.0, 11.0, 10.0],  # same place as box 1 but another class
            [50.0, 50.0, 60.0, 60.0],  # alone
        ]
    )
    return boxes, torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]), torch.tensor([1, 1, 1, 2, 1])


def test_nms_iou_is_class_aware() -> None:
    boxes, scores, labels = _overlapping()
    b, s, lab = merge_detections(boxes, scores, labels, method="nms", metric="iou", threshold=0.5)
    assert s.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.5])  # box 1 suppressed; box 2 (IoU 0.4) survives
    assert lab.tolist() == [1, 1, 2, 1]
    assert torch.equal(b[0], boxes[0])


def test_nms_ios_also_removes_a_part_inside_a_whole_box() -> None:
    boxes, scores, labels = _overlapping()
    b, s, lab = merge_detections(boxes, scores, labels, method="nms", metric="ios", threshold=0.5)
    assert s.tolist() == pytest.approx([0.9, 0.6, 0.5])
    assert torch.equal(b, boxes[[0, 3, 4]])


def test_nmm_merges_matched_boxes_into_their_union_with_the_best_score() -> None:
    boxes, scores, labels = _overlapping()
    b, s, lab = merge_detections(boxes, scores, labels, method="nmm", metric="iou", threshold=0.5)
    assert s.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.5])
    assert b[0].tolist() == [0.0, 0.0, 11.0, 10.0]  # union of boxes 0 and 1
    assert b[1].tolist() == [0.0, 0.0, 4.0, 10.0]
    b, s, _ = merge_detections(boxes, scores, labels, method="nmm", metric="ios", threshold=0.5)
    assert s.tolist() == pytest.approx([0.9, 0.6, 0.5])
    assert b[0].tolist() == [0.0, 0.0, 11.0, 10.0]


def test_merge_of_nothing_is_nothing() -> None:
    empty = torch.zeros(0, 4)
    for method in ("nms", "nmm"):
        for metric in ("iou", "ios"):
            b, s, lab = merge_detections(
                empty, torch.zeros(0), torch.zeros(0, dtype=torch.int64), method=method, metric=metric
            )
            assert b.shape == (0, 4) and s.shape == (0,) and lab.shape == (0,)


def test_tile_options_reject_bad_values() -> None:
    with pytest.raises(InputError, match="--tile-overlap"):
        TileOptions(512, overlap=1.0)
    with pytest.raises(InputError, match="--merge"):
        TileOptions(512, merge="wbf")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="--tile must"):
        TileOptions(8)


# -- one image end to end, with a detector that reports where the bright squares are -------------------------------
def _square_finder(crops: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """A 'detector' that returns the bounding box of each bright blob in each crop (exact geometry)."""
    outs = []
    for crop in crops:
        b = blob_boxes(crop)
        outs.append({"boxes": b, "scores": torch.full((len(b),), 0.9), "labels": torch.ones(len(b), dtype=torch.int64)})
    return outs


def test_tiled_detect_finds_each_square_once_with_exact_boxes() -> None:
    image = torch.zeros(3, 700, 1000, dtype=torch.uint8)
    truth = [[10, 10, 40, 40], [240, 100, 270, 130], [490, 490, 520, 520], [960, 660, 1000, 700], [250, 600, 262, 612]]
    for x0, y0, x1, y1 in truth:
        image[:, y0:y1, x0:x1] = 255
    for merge in ("nms", "nmm"):
        opts = TileOptions(256, overlap=0.25, full_image=False, merge=merge, batch_size=3)
        out = tiled_detect(image, _square_finder, opts, full_image_size=256)
        found = sorted(out["boxes"].tolist())
        assert found == sorted([[float(v) for v in t] for t in truth]), merge
