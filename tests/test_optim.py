"""Layer-wise LR decay, the no-weight-decay set and the LR schedule."""

from __future__ import annotations

import io
import math

import pytest
import torch

from birddet.config import config_from_dict
from birddet.engine.optim import build_optimizer, build_scheduler, lr_factor, param_groups, param_rules
from birddet.models.detector import build_detector

TINY = {
    "model": {
        "backbone": {"preset": "vit_reg4_tiny16_rms_avg"},
        "pyramid": {"out_channels": 32},
        "rpn": {"anchor_sizes": [16, 32, 64, 128, 256]},
        "roi_heads": {"representation_size": 64},
        "image_size": 128,
    }
}
BODY = "model.backbone.body."


@pytest.fixture(scope="module")
def detector():
    return build_detector(config_from_dict(TINY), {1: "bird"})


def test_layer_decay_gives_each_block_its_power_and_the_embedding_the_lowest(detector):
    rules = param_rules(detector, layer_decay=0.5)
    assert len(detector.model.backbone.body.encoder.block) == 2  # L = 2
    assert rules[BODY + "encoder.block.0.attn.qkv.weight"].lr_scale == pytest.approx(0.25)  # 0.5 ** (2 - 0)
    assert rules[BODY + "encoder.block.1.mlp.0.weight"].lr_scale == pytest.approx(0.5)  # 0.5 ** (2 - 1)
    for name in ("conv_proj.weight", "conv_proj.bias", "reg_tokens", "pos_embedding"):
        assert rules[BODY + name].lr_scale == pytest.approx(0.125), name  # 0.5 ** (L + 1)
    heads = [n for n in rules if not n.startswith(BODY)]
    assert any(n.startswith("model.backbone.pyramid.") for n in heads)
    assert any(n.startswith("model.roi_heads.") for n in heads)
    assert all(rules[n].lr_scale == 1.0 for n in heads)


def test_backbone_lr_mult_scales_only_the_backbone(detector):
    rules = param_rules(detector, layer_decay=1.0, backbone_lr_mult=0.1)
    assert rules[BODY + "encoder.block.1.attn.proj.weight"].lr_scale == pytest.approx(0.1)
    assert rules["model.rpn.head.cls_logits.weight"].lr_scale == 1.0


def test_no_weight_decay_on_norms_biases_position_embedding_and_register_tokens(detector):
    rules = param_rules(detector, layer_decay=0.7)
    no_decay = {n for n, r in rules.items() if not r.decay}
    for name in (
        BODY + "pos_embedding",
        BODY + "reg_tokens",
        BODY + "conv_proj.bias",
        BODY + "encoder.block.0.norm1.weight",
        BODY + "encoder.block.1.norm2.weight",
        BODY + "encoder.block.0.attn.qkv.bias",
        "model.roi_heads.box_predictor.cls_score.bias",
    ):
        assert name in no_decay, name
    pyramid_norms = [n for n in rules if n.startswith("model.backbone.pyramid.") and n.endswith(".weight")]
    assert any(n in no_decay for n in pyramid_norms)  # LayerNorm2d scales
    for name in (
        BODY + "conv_proj.weight",
        BODY + "encoder.block.0.attn.qkv.weight",
        "model.roi_heads.box_predictor.cls_score.weight",
    ):
        assert name not in no_decay, name


def test_param_groups_cover_each_trainable_parameter_once_and_skip_frozen_ones():
    cfg = config_from_dict(
        {**TINY, "model": {**TINY["model"], "backbone": {**TINY["model"]["backbone"], "freeze_blocks": 1}}}
    )
    det = build_detector(cfg, {1: "bird"})
    groups = param_groups(det, lr=1e-3, weight_decay=0.1, layer_decay=0.5)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in det.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable)
    for g in groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])
        assert g["weight_decay"] in (0.0, 0.1)


def _train_cfg(**kw):
    return config_from_dict({"train": kw}).train


def test_warmup_is_linear_from_the_factor_then_cosine_reaches_the_floor():
    f = {
        s: lr_factor(s, total_steps=100, schedule="cosine", warmup_iters=10, warmup_factor=0.1, min_lr_ratio=0.05)
        for s in (0, 5, 10, 50, 100, 150)
    }
    cos = lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / 100))  # noqa: E731
    assert f[0] == pytest.approx(0.1 * cos(0))
    assert f[5] == pytest.approx(0.55 * cos(5))
    assert f[10] == pytest.approx(cos(10))
    assert f[50] == pytest.approx(0.525)
    assert f[100] == pytest.approx(0.05)
    assert f[150] == pytest.approx(0.05)


def test_step_schedule_drops_tenfold_at_each_milestone_fraction():
    values = [lr_factor(s, total_steps=100, schedule="step", milestones=[0.5, 0.8]) for s in (0, 49, 50, 79, 80, 99)]
    assert values == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_scheduler_steps_per_optimizer_step_and_its_state_loads_weights_only(detector):
    cfg = _train_cfg(lr=1e-3, layer_decay=0.5, warmup_iters=4, warmup_factor=0.25, schedule="cosine")
    opt = build_optimizer(detector, cfg)
    sched = build_scheduler(opt, cfg, total_steps=20)
    head = opt.param_groups[-1]
    assert head["lr"] == pytest.approx(1e-3 * 0.25 * lr_factor(0, total_steps=20))
    for _ in range(4):
        opt.step()
        sched.step()
    assert head["lr"] == pytest.approx(1e-3 * lr_factor(4, total_steps=20))
    buf = io.BytesIO()
    torch.save({"scheduler": sched.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    sched2 = build_scheduler(build_optimizer(detector, cfg), cfg, total_steps=20)
    sched2.load_state_dict(state["scheduler"])
    assert sched2.last_epoch == 4
