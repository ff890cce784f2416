"""Inference settings of the detector: flip test-time augmentation (`model.tta`), more test squares
(`model.tta_sizes`) and the test square (`model.test_size`). That a run's numbers are what `birddet eval` and `predict` give with them is in
test_real_shapes.py."""

from __future__ import annotations

import pytest
import torch
from test_trainer import tiny_config

from birddet.errors import InputError
from birddet.models.detector import build_detector
from birddet.models.tta import fuse_views, override_tta, unflip_boxes

CATEGORIES = {1: "songbird", 2: "wader"}


def view(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def test_unflip_maps_a_mirrored_box_back() -> None:
    boxes = torch.tensor([[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 100.0, 50.0]])
    assert unflip_boxes(boxes, 100).tolist() == [[70.0, 5.0, 90.0, 25.0], [0.0, 0.0, 100.0, 50.0]]
    assert torch.equal(unflip_boxes(unflip_boxes(boxes, 100), 100), boxes)


def test_one_bird_seen_in_both_views_becomes_the_score_weighted_mean_box() -> None:
    a = view([[10, 10, 50, 50]], [0.9], [1])
    b = view([[14, 10, 54, 50]], [0.3], [1])  # IoU 0.82 with a's box
    out = fuse_views([a, b], iou_threshold=0.5, max_dets=10)
    assert out["boxes"].tolist() == [pytest.approx([11.0, 10.0, 51.0, 50.0])]  # (0.9 * 10 + 0.3 * 14) / 1.2 = 11
    assert out["scores"].tolist() == [pytest.approx(0.9)] and out["labels"].tolist() == [1]


def test_birds_of_one_view_other_classes_and_far_boxes_stay_as_found() -> None:
    a = view([[10, 10, 50, 50], [200, 200, 240, 240]], [0.9, 0.4], [1, 1])
    b = view([[12, 10, 52, 50], [100, 100, 140, 140]], [0.8, 0.7], [2, 1])  # another class; a bird a missed
    out = fuse_views([a, b], iou_threshold=0.5, max_dets=10)
    got = sorted(zip(out["scores"].tolist(), out["labels"].tolist(), out["boxes"].tolist()))
    assert got == [
        (pytest.approx(0.4), 1, [200.0, 200.0, 240.0, 240.0]),
        (pytest.approx(0.7), 1, [100.0, 100.0, 140.0, 140.0]),
        (pytest.approx(0.8), 2, [12.0, 10.0, 52.0, 50.0]),
        (pytest.approx(0.9), 1, [10.0, 10.0, 50.0, 50.0]),
    ]


def test_fusion_keeps_the_cap_the_best_first_and_handles_no_boxes_and_zero_scores() -> None:
    a = view([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [0.2, 0.9, 0.5], [1, 1, 1])
    out = fuse_views([a, view([], [], [])], iou_threshold=0.5, max_dets=2)
    assert out["scores"].tolist() == [pytest.approx(0.9), pytest.approx(0.5)]
    empty = fuse_views([view([], [], []), view([], [], [])], iou_threshold=0.5, max_dets=5)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].dtype == torch.int64
    zero = fuse_views([view([[0, 0, 10, 10]], [0.0], [1]), view([[1, 0, 11, 10]], [0.0], [1])], iou_threshold=0.5,
                      max_dets=5)  # fmt: skip
    assert zero["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0]]  # nothing to weigh: the kept box as it is


def test_flip_tta_is_the_fusion_of_the_image_and_its_mirror() -> None:
    torch.manual_seed(0)
    cfg = tiny_config(None)
    plain = build_detector(cfg, CATEGORIES).eval()
    cfg.model.tta = "flip"
    tta = build_detector(cfg, CATEGORIES).eval()
    tta.load_state_dict(plain.state_dict())
    images = [torch.rand(3, 72, 128, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad(), plain.inference_caps(0.0, None), tta.inference_caps(0.0, None):
        mirrored = plain([im.flip(-1) for im in images])
        expected = [
            fuse_views([a, {**b, "boxes": unflip_boxes(b["boxes"], 128)}], iou_threshold=0.5, max_dets=100)
            for a, b in zip(plain(images), mirrored)
        ]
        got = tta(images)
    assert sum(len(o["boxes"]) for o in got) > 0
    for g, e in zip(got, expected):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(g[key], e[key])
    with torch.no_grad(), plain.inference_caps(0.0, None):
        assert not torch.equal(got[0]["boxes"], plain(images)[0]["boxes"])  # TTA changes the boxes


def test_more_test_squares_fuse_the_views_of_every_square_and_its_mirror() -> None:
    """`model.tta_sizes`: the views at the test square (first), then at each other square, each with its mirror, are
    fused as `fuse_views` fuses them; a square listed twice or equal to the test square adds no view. Training and
    the transform's own square are left as they were."""
    torch.manual_seed(0)
    cfg = tiny_config(None)
    cfg.model.test_size = 160
    plain = build_detector(cfg, CATEGORIES).eval()
    cfg.model.tta, cfg.model.tta_sizes = "flip", [96, 160, 192, 96]
    tta = build_detector(cfg, CATEGORIES).eval()
    tta.load_state_dict(plain.state_dict())
    images = [torch.rand(3, 72, 128, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    t = plain.model.transform
    views: list[list[dict]] = [[], []]
    with torch.no_grad(), plain.inference_caps(0.0, None), tta.inference_caps(0.0, None):
        for side in (160, 96, 192):
            t.min_size, t.max_size, t.size_divisible = (side,), side, side
            for i, (a, b) in enumerate(zip(plain(images), plain([im.flip(-1) for im in images]))):
                views[i] += [a, {**b, "boxes": unflip_boxes(b["boxes"], 128)}]
        expected = [fuse_views(v, iou_threshold=0.5, max_dets=100) for v in views]
        got = tta(images)
        assert sum(len(o["boxes"]) for o in got) > 0
        for g, e in zip(got, expected):
            for key in ("boxes", "scores", "labels"):
                torch.testing.assert_close(g[key], e[key])
        t.min_size, t.max_size, t.size_divisible = (160,), 160, 160
        one_square = fuse_views(views[0][:2], iou_threshold=0.5, max_dets=100)
        assert not torch.equal(got[0]["boxes"], one_square["boxes"])  # the other squares change the boxes
    u = tta.model.transform
    assert (u.min_size, u.max_size, u.size_divisible) == ((160,), 160, 160)  # the test square again after TTA
    assert (cfg.model.test_square, cfg.model.inference_size) == (160, 192)  # images are read at the largest
    tta.train()
    assert u.min_size == (128,)


def test_the_tta_override_is_one_runs_whole_test_time_augmentation() -> None:
    cfg = tiny_config(None).model
    cfg.tta, cfg.tta_sizes = "flip", [96, 192]
    override_tta(cfg, None)
    assert (cfg.tta, cfg.tta_sizes) == ("flip", [96, 192])
    override_tta(cfg, "flip")
    assert (cfg.tta, cfg.tta_sizes, cfg.inference_size) == ("flip", [], 128)
    cfg.tta_sizes = [96, 192]
    override_tta(cfg, "none")
    assert (cfg.tta, cfg.tta_sizes) == ("none", [])


def test_test_size_is_the_square_at_inference_and_image_size_in_training() -> None:
    cfg = tiny_config(None)
    cfg.model.test_size = 192
    det = build_detector(cfg, CATEGORIES)
    t = det.model.transform
    assert (t.min_size, t.max_size, t.size_divisible) == ((128,), 128, 128) and det.training
    det.eval()
    assert (t.min_size, t.max_size, t.size_divisible) == ((192,), 192, 192)
    assert cfg.model.inference_size == 192 and cfg.model.input_size == 128
    det.train()
    assert t.min_size == (128,)


@pytest.mark.parametrize(
    ("model", "named"),
    [
        ({"test_size": 200}, "test_size=200"),
        ({"test_size": 192, "max_size": 128}, "test_size=192"),
        ({"tta_sizes": [96, 100]}, "tta_sizes=100"),
        ({"tta_sizes": [192], "max_size": 128}, "tta_sizes=192"),
    ],
    ids=["not a multiple of 32", "no fixed square", "a TTA square not a multiple of 32", "TTA without fixed square"],
)
def test_a_test_size_the_model_cannot_use_is_refused(model: dict, named: str) -> None:
    cfg = tiny_config(None)
    for key, value in model.items():
        setattr(cfg.model, key, value)
    with pytest.raises(InputError, match=rf"model.{named}: a test size needs the fixed square"):
        build_detector(cfg, CATEGORIES)


def test_the_tta_option_of_eval_and_predict_overrides_the_checkpoint(photos, tmp_path) -> None:
    """`--tta flip` on a checkpoint without TTA gives what a checkpoint saved with `model.tta: flip` gives, in eval
    and in predict; `--tta none` turns it off again, and `--tta flip` leaves out a checkpoint's other squares."""
    import json

    from birddet.cli import main
    from birddet.engine.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = tiny_config(None)
    det = build_detector(cfg, {1: "songbird", 2: "wader", 3: "raptor"})
    plain = save_checkpoint(tmp_path / "plain.pt", det)
    det.config.model.tta = "flip"
    flip = save_checkpoint(tmp_path / "flip.pt", det)
    det.config.model.tta_sizes = [96, 160]
    squares = save_checkpoint(tmp_path / "squares.pt", det)
    common = ["--ann", str(photos["val"]), "--images", str(photos["images"]), "--no-plots", "--workers", "0"]

    def evaluated(ckpt, *extra):  # noqa: ANN001, ANN202
        out = tmp_path / f"eval-{ckpt.stem}-{'-'.join(extra) or 'default'}"
        assert main(["eval", str(ckpt), *common, "--out", str(out), *extra]) == 0
        return json.loads((out / "results.json").read_text())

    def predicted(ckpt, *extra):  # noqa: ANN001, ANN202
        out = tmp_path / f"predict-{ckpt.stem}-{'-'.join(extra) or 'default'}"
        assert main(["predict", str(ckpt), str(photos["images"]), "--out", str(out), "--no-classifier"]
                    + ["--workers", "0", *extra]) == 0  # fmt: skip
        return json.loads((out / "coco.json").read_text())["annotations"]

    assert evaluated(plain, "--tta", "flip") == evaluated(flip)
    assert evaluated(flip, "--tta", "none") == evaluated(plain) != evaluated(flip)
    assert predicted(plain, "--tta", "flip") == predicted(flip) != predicted(plain)
    # More squares are part of the checkpoint's TTA: `--tta flip` is the test square and its mirror only.
    assert evaluated(squares, "--tta", "flip") == evaluated(flip) != evaluated(squares)
