"""Training runs end to end on a tiny model and an 8-image synthetic set: files, resume, divergence, bad configs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from birddet.config import config_from_dict
from birddet.data.synthetic import make_synthetic_coco
from birddet.engine.trainer import NonFiniteLossError, train
from birddet.errors import InputError, RunStopped
from birddet.models.detector import BirdDetector

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def tiny_config(data_dir: Path | None, **train_kw: Any):
    """The tiny preset at 128 px with small heads: a training step takes a fraction of a second on a CPU."""
    train_cfg = {
        "epochs": 2,
        "batch_size": 4,
        "lr": 1e-3,
        "layer_decay": 1.0,
        "warmup_iters": 2,
        "log_every": 1,
        "eval_batch_size": 4,
        "device": "cpu",
        **train_kw,
    }
    return config_from_dict(
        {
            "model": {
                "backbone": {"preset": "vit_reg4_tiny16_rms_avg"},
                "pyramid": {"out_channels": 32, "scale_factors": [2.0, 1.0, 0.5]},
                "rpn": {
                    "anchor_sizes": [16, 32, 64, 128],
                    "pre_nms_top_n_train": 200,
                    "post_nms_top_n_train": 100,
                    "pre_nms_top_n_test": 100,
                    "post_nms_top_n_test": 50,
                    "batch_size_per_image": 64,
                },
                "roi_heads": {"representation_size": 64, "batch_size_per_image": 64},
                "image_size": 128,
            },
            "data": {
                "synthetic": {"dir": str(data_dir) if data_dir else None, "num_train": 8, "num_val": 4},
                "augment": {"scale_range": [0.8, 1.2]},
                "workers": 0,
            },
            "train": train_cfg,
        }
    )


def read_log(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic_coco(out, num_train=8, num_val=4, seed=0)
    return out


@pytest.fixture(scope="module")
def full_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """An uninterrupted 2-epoch run (4 steps) with EMA on."""
    run = tmp_path_factory.mktemp("full") / "run"
    return run, train(tiny_config(data_dir, ema=True, ema_decay=0.5), run)


def test_run_writes_every_promised_file_and_the_loss_falls(full_run):
    run, summary = full_run
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "metrics.json", "loss.png", "ap.png"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*.tmp")), "a temporary checkpoint file was left behind"
    log = read_log(run)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for rec in log:
        for key in ("loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "lr"):
            assert math.isfinite(rec[key]), key
        assert rec["images_per_s"] > 0 and "max_memory_mb" in rec
    assert log[-1]["loss"] < log[0]["loss"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(STATS) <= set(metrics["stats"]) and "per_class" in metrics
    assert summary["steps"] == 4 and summary["best_epoch"] in (1, 2)


def test_last_pt_loads_weights_only_with_full_training_state(full_run):
    run, _ = full_run
    ckpt = torch.load(run / "last.pt", weights_only=True)
    t = ckpt["training"]
    assert {"optimizer", "scheduler", "scaler", "ema", "epoch", "step", "rng", "best_ap", "history"} <= set(t)
    assert {"python", "numpy", "torch"} <= set(t["rng"])
    assert (t["epoch"], t["step"]) == (2, 4)
    assert ckpt["categories"] == {1: "songbird", 2: "wader", 3: "raptor"}
    best = torch.load(run / "best.pt", weights_only=True)
    assert "training" not in best
    # best.pt holds the EMA weights, not the raw ones
    key = "model.roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(best["model"][key], ckpt["model"][key]) or t["best_epoch"] != 2


def test_resume_after_stop_gives_the_same_next_step_losses(full_run, data_dir: Path, tmp_path: Path):
    run, _ = full_run
    resumed = tmp_path / "resumed"
    train(tiny_config(data_dir, ema=True, ema_decay=0.5, max_steps=3), resumed)  # stops mid-epoch 2
    assert torch.load(resumed / "last.pt", weights_only=True)["training"]["step"] == 3
    train(tiny_config(data_dir, ema=True, ema_decay=0.5), resumed, resume=True)
    full, again = read_log(run), read_log(resumed)
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for a, b in zip(full, again):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6), a["step"]
        assert b["lr"] == pytest.approx(a["lr"])


def test_non_finite_loss_stops_naming_step_and_part_and_keeps_last_pt(data_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_forward = BirdDetector.forward

    def poisoned(self, images, targets=None):
        out = real_forward(self, images, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 4:  # epoch 2 with accumulate=2: the third optimizer step
                out["loss_box_reg"] = out["loss_box_reg"] * float("nan")
        return out

    monkeypatch.setattr(BirdDetector, "forward", poisoned)
    run = tmp_path / "run"
    cfg = tiny_config(data_dir, batch_size=2, accumulate=2)
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg, run)
    message = str(err.value)
    assert "step 3" in message and "loss_box_reg" in message and "train.lr" in message
    assert isinstance(err.value, RunStopped)  # the CLI prints it on one line and exits 1
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert (ckpt["training"]["epoch"], ckpt["training"]["step"]) == (1, 2)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_resume_refuses_without_last_pt(data_dir, tmp_path):
    with pytest.raises(InputError, match="last.pt does not exist"):
        train(tiny_config(data_dir), tmp_path / "nothing", resume=True)


def test_resume_refuses_when_model_config_changed(full_run, data_dir):
    run, _ = full_run
    cfg = tiny_config(data_dir, ema=True, ema_decay=0.5)
    cfg.model.roi_heads.representation_size = 32
    with pytest.raises(InputError, match="model.roi_heads.representation_size"):
        train(cfg, run, resume=True)


def test_existing_run_is_not_overwritten_without_resume(full_run, data_dir):
    run, _ = full_run
    with pytest.raises(InputError, match="--resume"):
        train(tiny_config(data_dir), run)


def test_missing_data_paths_name_the_key_to_set(tmp_path):
    with pytest.raises(InputError, match=r"data\.train\.ann"):
        train(tiny_config(None), tmp_path / "run")


def test_fp16_on_cpu_is_refused_with_the_fix(data_dir, tmp_path):
    with pytest.raises(InputError, match="bf16"):
        train(tiny_config(data_dir, amp="fp16"), tmp_path / "run")


def test_a_run_saved_before_a_config_key_existed_still_resumes(data_dir, tmp_path):
    run = tmp_path / "old"
    train(tiny_config(data_dir, max_steps=1), run)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    user = ckpt["training"]["user_config"]
    del user["data"]["synthetic"]["preset"]  # keys that later birddet versions added
    del user["data"]["tile"]
    torch.save(ckpt, run / "last.pt")
    summary = train(tiny_config(data_dir, max_steps=2), run, resume=True)
    assert summary["steps"] == 2
    changed = tiny_config(data_dir)
    changed.data.synthetic.preset = "realistic"  # a non-default value for the new key is still a difference
    with pytest.raises(InputError, match="data.synthetic.preset"):
        train(changed, run, resume=True)
