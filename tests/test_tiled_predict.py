"""Tiled and dense prediction through `BirdDetector.predict`: windows reach the model in bounded batches, boxes come
back in the image's pixels, caps are lifted for one call and restored, memory stays bounded on a huge image."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from birddet.config import config_from_dict
from birddet.models.detector import BirdDetector, build_detector
from birddet.pipeline.tiling import TileOptions, tiled_detect

TINY = {
    "model": {
        "backbone": {"preset": "vit_reg4_tiny16_rms_avg"},
        "image_size": 128,
        "pyramid": {"out_channels": 32},
        "rpn": {"pre_nms_top_n_test": 200, "post_nms_top_n_test": 100},
        "roi_heads": {"representation_size": 64, "detections_per_img": 20},
    }
}
CATEGORIES = {5: "songbird", 17: "wader"}


def blob_boxes(crop: torch.Tensor, min_side: int = 1) -> torch.Tensor:
    """xyxy boxes of the bright 4-connected blobs of a crop (uint8, or float in [0, 1]) with sides >= `min_side`."""
    crop = crop.float() / 255 if crop.dtype == torch.uint8 else crop
    mask = (crop[0] > 0.5).numpy().astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    boxes = [[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:].tolist() if min(w, h) >= min_side]
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def tiny_detector() -> BirdDetector:
    torch.manual_seed(0)
    return build_detector(config_from_dict(TINY), CATEGORIES).eval()


def test_tiled_predict_sends_bounded_batches_and_returns_image_pixels() -> None:
    det = tiny_detector()
    calls: list[list[tuple[int, int]]] = []
    forward = det.model.forward

    def spy(images, targets=None):  # type: ignore[no-untyped-def]
        calls.append([tuple(i.shape[-2:]) for i in images])
        return forward(images, targets)

    det.model.forward = spy  # type: ignore[method-assign]
    image = (torch.rand(3, 300, 520) * 255).to(torch.uint8)  # 5 x 3 windows of 128 at 25 % (stride 96)
    pred = det.predict(image, conf=0.0, tile=128, tile_overlap=0.25, batch_size=5, max_dets=50)[0]
    window_calls, full_call = calls[:-1], calls[-1]
    assert [len(c) for c in window_calls] == [5, 5, 5, 3]
    assert all(hw == (128, 128) for c in window_calls for hw in c)
    assert full_call == [(74, 128)]  # the whole image, longest side resized to image_size before the model
    assert pred.image_size == (520, 300)
    assert 0 < len(pred.scores) <= 50
    assert (pred.boxes[:, 0] >= 0).all() and (pred.boxes[:, 2] <= 520).all() and (pred.boxes[:, 3] <= 300).all()
    assert torch.all(pred.scores[:-1] >= pred.scores[1:])
    calls.clear()
    det.predict(image, conf=0.0, tile=128, full_image=False, batch_size=16)
    assert [len(c) for c in calls] == [16, 2]


def test_image_smaller_than_a_tile_is_one_window_and_no_extra_full_pass() -> None:
    det = tiny_detector()
    image = (torch.rand(3, 90, 120) * 255).to(torch.uint8)
    tiled = det.predict(image, conf=0.0, tile=256)[0]
    plain = det.predict(image, conf=0.0)[0]
    # one window = the image itself: the same detections as an untiled pass, up to the merge's extra NMS
    assert len(tiled.scores) <= len(plain.scores)
    assert torch.allclose(tiled.boxes[:3], plain.boxes[:3]) and torch.allclose(tiled.scores[:3], plain.scores[:3])


def test_max_dets_lifts_the_box_and_proposal_caps_for_one_call_only() -> None:
    det = tiny_detector()
    image = (torch.rand(3, 128, 128) * 255).to(torch.uint8)
    capped = det.predict(image, conf=0.0)[0]
    dense = det.predict(image, conf=0.0, max_dets=300)[0]
    assert len(capped.scores) == 20  # the config's detections_per_img
    assert len(dense.scores) > 100  # beyond both detections_per_img (20) and the RPN's 100 test proposals
    assert det.model.roi_heads.detections_per_img == 20
    assert det.model.rpn._post_nms_top_n["testing"] == 100
    assert det.model.roi_heads.score_thresh == pytest.approx(0.05)


def test_tiled_pass_finds_small_birds_an_untiled_pass_cannot_see() -> None:
    """A mosaic of squares that a 'detector' needs at least 8 px wide at its input size to see, like a real one."""

    def resizing_finder(crops: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outs = []
        for crop in crops:
            s = 128 / max(crop.shape[-2:])
            crop = crop.float() / 255 if crop.dtype == torch.uint8 else crop
            small = F.interpolate(crop[None], scale_factor=s, mode="bilinear", antialias=True)[0]
            b = blob_boxes(small, min_side=8) / s
            outs.append(
                {"boxes": b, "scores": torch.full((len(b),), 0.9), "labels": torch.ones(len(b), dtype=torch.int64)}
            )
        return outs

    image = torch.zeros(3, 512, 1024, dtype=torch.uint8)
    for y in range(8, 512 - 32, 64):
        for x in range(8, 1024 - 32, 64):
            image[:, y : y + 16, x : x + 16] = 255  # 16 px birds: 2 px after the untiled resize to 128
    n_birds = len(range(8, 480, 64)) * len(range(8, 992, 64))
    untiled = resizing_finder([image.float() / 255])[0]
    tiled = tiled_detect(image, resizing_finder, TileOptions(128, overlap=0.25), full_image_size=128)
    assert len(untiled["boxes"]) == 0
    assert len(tiled["boxes"]) == n_birds


@pytest.mark.skipif(sys.platform != "linux", reason="reads peak RSS from getrusage (kB on Linux)")
def test_tiled_predict_of_a_huge_blank_image_keeps_memory_bounded(tmp_path: Path) -> None:
    """6,000 x 4,500: a float copy of the image alone would be 324 MB; tiling must stay far below that."""
    script = textwrap.dedent(
        f"""
        import json, resource, torch
        from birddet.config import config_from_dict
        from birddet.models.detector import build_detector
        torch.manual_seed(0)
        det = build_detector(config_from_dict({TINY!r}), {CATEGORIES!r}).eval()
        det.predict(torch.full((3, 300, 300), 7, dtype=torch.uint8), tile=256)  # warm up allocator and kernels
        image = torch.full((3, 4500, 6000), 7, dtype=torch.uint8)  # touched pages: 81 MB resident
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        pred = det.predict(image, conf=0.5, tile=2048, batch_size=2)[0]
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"extra_mb": (after - before) / 1024, "size": list(pred.image_size)}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1]
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["size"] == [6000, 4500]
    assert report["extra_mb"] < 150, report  # measured 10-20 MB: two windows and their resized copies
