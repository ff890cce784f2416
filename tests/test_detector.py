"""Detector assembly: pyramid geometry, torchvision losses, overfitting, inference and checkpoint round trips."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from birddet.backbone.presets import get_preset
from birddet.backbone.vit import ViT
from birddet.backbone.weights import save_birder_file
from birddet.config import config_from_dict
from birddet.engine.checkpoint import load_detector, read_checkpoint, save_checkpoint
from birddet.errors import InputError
from birddet.models.detector import BirdDetector, build_detector
from birddet.models.pyramid import SimpleFeaturePyramid

TINY = {
    "model": {
        "backbone": {"preset": "vit_reg4_tiny16_rms_avg"},
        "image_size": 128,
        "pyramid": {"out_channels": 32},
        "rpn": {
            "pre_nms_top_n_train": 300,
            "post_nms_top_n_train": 300,
            "pre_nms_top_n_test": 200,
            "post_nms_top_n_test": 200,
        },
        "roi_heads": {"representation_size": 64, "batch_size_per_image": 64},
    }
}
CATEGORIES = {5: "songbird", 17: "wader", 42: "raptor"}


def tiny_detector(**model_overrides: object) -> BirdDetector:
    data = {"model": {**TINY["model"], **model_overrides}}
    torch.manual_seed(0)
    return build_detector(config_from_dict(data), CATEGORIES)


@pytest.mark.parametrize("hw", [(128, 128), (96, 160), (224, 64)])
def test_pyramid_levels_have_strides_4_to_64_and_256_channels(hw: tuple[int, int]) -> None:
    pyramid = SimpleFeaturePyramid(64, out_channels=256)
    neck = torch.randn(2, 64, hw[0] // 16, hw[1] // 16)
    out = pyramid(neck)
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    assert pyramid.strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    for name, fmap in out.items():
        stride = pyramid.strides[name]
        assert fmap.shape == (2, 256, -(-hw[0] // stride), -(-hw[1] // stride)), name


def test_pyramid_without_top_block_and_custom_scales() -> None:
    pyramid = SimpleFeaturePyramid(64, out_channels=32, scale_factors=(2.0, 1.0), top_block=False)
    out = pyramid(torch.randn(1, 64, 8, 8))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"p3": (1, 32, 16, 16), "p4": (1, 32, 8, 8)}
    with pytest.raises(ValueError, match="scale factor 3.0"):
        SimpleFeaturePyramid(64, scale_factors=(3.0,))


def _targets() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=g), torch.rand(3, 96, 128, generator=g)]
    targets = [
        {"boxes": torch.tensor([[20.0, 30.0, 80.0, 90.0], [60.0, 10.0, 120.0, 50.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},  # a negative image
    ]
    return images, targets


def test_training_forward_returns_four_finite_torchvision_losses_with_and_without_boxes() -> None:
    det = tiny_detector().train()
    images, targets = _targets()
    losses = det(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert det.model.backbone.body.conv_proj.weight.grad is not None


def test_thirty_step_overfit_cuts_loss_at_least_five_times() -> None:
    det = tiny_detector().train()
    images, targets = _targets()
    opt = torch.optim.AdamW(det.parameters(), lr=2e-3)
    first = last = None
    for _ in range(30):
        loss = sum(det(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
        last = loss.item()
    assert last * 5 <= first, (first, last)


def test_predict_returns_original_pixel_boxes_and_coco_categories(tmp_path: Path) -> None:
    det = tiny_detector().eval()
    image = Image.new("RGB", (300, 200), (120, 160, 90))
    path = tmp_path / "bird.png"
    image.save(path)
    preds = det.predict([image, path, torch.full((3, 64, 96), 128, dtype=torch.uint8)], conf=0.0)
    assert len(preds) == 3
    assert preds[0].image_size == (300, 200) and preds[2].image_size == (96, 64)
    p = preds[0]
    assert len(p.boxes) > 0, "a random detector at conf 0 still proposes boxes"
    assert float(p.boxes[:, 2].max()) <= 300 + 1e-3 and float(p.boxes[:, 3].max()) <= 200 + 1e-3
    assert set(p.category_ids) <= set(CATEGORIES) and p.names[0] == CATEGORIES[p.category_ids[0]]
    xywh = p.boxes_xywh()
    torch.testing.assert_close(xywh[:, 2], p.boxes[:, 2] - p.boxes[:, 0])
    coco = p.to_coco(image_id=7)
    assert coco[0]["image_id"] == 7 and coco[0]["category_id"] in CATEGORIES and len(coco[0]["bbox"]) == 4
    high = det.predict(image, conf=0.99)[0]
    assert bool((high.scores >= 0.99).all())
    assert det.model.roi_heads.score_thresh == 0.05, "predict restores the configured threshold"


def test_save_then_load_gives_identical_outputs(tmp_path: Path) -> None:
    det = tiny_detector(roi_heads={"box_head": "4conv1fc", "representation_size": 64, "conv_dim": 32})
    images, _ = _targets()
    before = det.predict(images, conf=0.0)
    path = save_checkpoint(tmp_path / "best.pt", det)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"model", "config", "categories", "birddet_version"}
    assert ckpt["categories"] == CATEGORIES
    loaded = load_detector(path)
    after = loaded.predict(images, conf=0.0)
    for a, b in zip(before, after):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
        assert a.category_ids == b.category_ids
    assert not list(tmp_path.glob(".*.tmp")), "atomic write leaves no temporary file"


def test_detector_from_birder_backbone_file_records_stats_and_size(tmp_path: Path) -> None:
    torch.manual_seed(1)
    body = ViT(get_preset("vit_reg4_tiny16_rms_avg"), num_classes=4, image_size=(64, 64))
    stats = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    weights = save_birder_file(body, tmp_path / "bb.pt", class_to_idx={f"c{i}": i for i in range(4)}, rgb_stats=stats)
    det = tiny_detector(backbone={"preset": "vit_reg4_tiny16_rms_avg", "weights": str(weights), "freeze_blocks": 1})
    assert det.config.model.rgb_stats == stats
    assert det.config.model.backbone.pretrain_size == [64, 64]
    assert det.model.transform.image_mean == stats["mean"]
    vit = det.model.backbone.body
    torch.testing.assert_close(vit.pos_embedding, body.pos_embedding)
    assert not vit.conv_proj.weight.requires_grad and not vit.encoder.block[0].attn.qkv.weight.requires_grad
    assert vit.encoder.block[1].attn.qkv.weight.requires_grad
    # The checkpoint alone rebuilds it, even once the backbone file is gone.
    ckpt = save_checkpoint(tmp_path / "det.pt", det)
    weights.unlink()
    images, _ = _targets()
    a = det.eval().predict(images, conf=0.0)[0]
    b = load_detector(ckpt).predict(images, conf=0.0)[0]
    assert torch.equal(a.boxes, b.boxes)


def test_anchor_sizes_must_match_pyramid_levels() -> None:
    with pytest.raises(InputError, match="one anchor size per level"):
        tiny_detector(rpn={"anchor_sizes": [32, 64]})


def test_no_categories_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="at least one category"):
        build_detector(config_from_dict(TINY), {})


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_checkpoint_with_arbitrary_object_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": {}, "config": {}, "categories": {}, "x": _Exploit(marker)}, f)
    with pytest.raises(InputError, match="refused"):
        read_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_foreign_checkpoints_are_explained(tmp_path: Path) -> None:
    det = tiny_detector()
    good = save_checkpoint(tmp_path / "good.pt", det)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(InputError, match="truncated"):
        read_checkpoint(cut)
    foreign = tmp_path / "birder.pt"
    torch.save({"state": {}, "signature": {}}, foreign)
    with pytest.raises(InputError, match="not a birddet detector checkpoint"):
        read_checkpoint(foreign)
    with pytest.raises(InputError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_detections_do_not_depend_on_batch_mates() -> None:
    det = tiny_detector().eval()
    g = torch.Generator().manual_seed(3)
    wide, tall = torch.rand(3, 90, 128, generator=g), torch.rand(3, 128, 70, generator=g)
    alone = det.predict(wide, conf=0.0)[0]
    batched = det.predict([tall, wide], conf=0.0, batch_size=2)[1]
    torch.testing.assert_close(alone.boxes, batched.boxes)
    torch.testing.assert_close(alone.scores, batched.scores)


def test_fixed_square_needs_a_multiple_of_32() -> None:
    with pytest.raises(InputError, match="multiple of 32"):
        tiny_detector(image_size=120)


@pytest.mark.parametrize("wh", [(1280, 720), (720, 1280), (1500, 500)])
def test_reloaded_detector_gives_the_same_detections_whatever_it_saw_first(tmp_path: Path, wh: tuple[int, int]) -> None:
    # torchvision's RoI pooler used to infer its level scales from the first batch: a fresh model whose first
    # image was 16:9 pooled from the wrong level for the rest of its life.
    ckpt = save_checkpoint(tmp_path / "det.pt", tiny_detector())
    g = torch.Generator().manual_seed(4)
    photo = torch.rand(3, wh[1], wh[0], generator=g)
    fresh = load_detector(ckpt).predict(photo, conf=0.0)[0]
    warmed = load_detector(ckpt)
    warmed.predict(torch.rand(3, 128, 128, generator=g), conf=0.0)
    after_square = warmed.predict(photo, conf=0.0)[0]
    assert len(fresh.scores) > 0
    torch.testing.assert_close(fresh.boxes, after_square.boxes)
    torch.testing.assert_close(fresh.scores, after_square.scores)
    assert fresh.image_size == wh
    assert fresh.boxes[:, 2].max() <= wh[0] and fresh.boxes[:, 3].max() <= wh[1]


def test_roi_pooler_scales_come_from_the_pyramid_strides() -> None:
    pool = tiny_detector().model.roi_heads.box_roi_pool
    assert pool.featmap_names == ["p2", "p3", "p4", "p5"]
    assert pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    assert (pool.map_levels.k_min, pool.map_levels.k_max) == (2, 5)


def test_multi_scale_training_varies_the_input_size_per_batch_and_evaluation_does_not() -> None:
    data = {"model": TINY["model"], "data": {"augment": {"multi_scale": [0.5, 1.0, 1.5]}}}
    torch.manual_seed(0)
    det = build_detector(config_from_dict(data), CATEGORIES).train()
    seen: list[tuple[int, int]] = []
    det.model.backbone.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[-2:])))
    images, targets = _targets()
    for _ in range(12):
        losses = det(images, targets)
        assert all(torch.isfinite(v) for v in losses.values())
    assert set(seen) == {(64, 64), (128, 128), (192, 192)}  # whole batches at 0.5x, 1x, 1.5x of 128, square
    seen.clear()
    det.eval()
    with torch.no_grad():
        det(images)
    assert seen == [(128, 128)]
