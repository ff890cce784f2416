"""Two CPU processes under torchrun (gloo): both ranks train, only rank 0 writes, the loss stays finite."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from birddet.config import config_to_dict
from birddet.data.synthetic import make_synthetic_coco
from birddet.engine.distributed import gather_lists, init_distributed, shard_indices

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shards_cover_every_index_once_without_padding():
    shards = [shard_indices(7, r, 3) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))
    assert shards[0] == [0, 3, 6]


def test_a_single_process_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.distributed, ctx.is_main) == (0, 1, False, True)
    assert gather_lists([1, 2]) == [1, 2]


def _torchrun_train(config: Path, run: Path, cwd: Path, *extra: str, tool: str = "train.py") -> str:
    """`torchrun --nproc_per_node=2 tools/TOOL CONFIG --out RUN EXTRA...` on CPU (gloo); returns its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(REPO / "tools" / tool),
        str(config),
        "--out",
        str(run),
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    return output


def test_two_process_ddp_run_trains_on_both_ranks_and_only_rank_0_writes(tmp_path: Path):
    from test_trainer import tiny_config

    data = tmp_path / "data"
    make_synthetic_coco(data, num_train=8, num_val=4, seed=0)
    # 8 images, 2 ranks, batch 2 per rank: 2 steps per epoch, one epoch.
    cfg = tiny_config(data, epochs=1, batch_size=2)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(cfg)))
    run = tmp_path / "run"
    output = _torchrun_train(config, run, tmp_path)
    assert "rank 0 of 2" in output and "rank 1 of 2" in output
    names = sorted(p.name for p in run.iterdir())
    assert names == sorted(
        ["config.yaml", "last.pt", "best.pt", "metrics.jsonl", "metrics.json", "loss.png", "ap.png"]
    ), names
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]  # written once, by rank 0
    assert all(math.isfinite(r["loss"]) for r in log)
    assert not list(tmp_path.glob("**/.*.tmp"))


def test_resumed_two_process_run_continues_exactly_with_every_ranks_rng(tmp_path: Path):
    import torch
    from test_trainer import tiny_config

    data = tmp_path / "data"
    make_synthetic_coco(data, num_train=8, num_val=4, seed=0)
    config = tmp_path / "tiny.yaml"
    # RPN/RoI sampling draws from each rank's torch RNG; the logged loss is the mean over both ranks.
    config.write_text(yaml.safe_dump(config_to_dict(tiny_config(data, epochs=2, batch_size=2, eval_every=2))))
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _torchrun_train(config, full, tmp_path)
    _torchrun_train(config, resumed, tmp_path, "train.max_steps=3")  # stops mid-epoch 2
    saved = torch.load(resumed / "last.pt", weights_only=True)["training"]
    assert len(saved["rng_per_rank"]) == 2
    assert not torch.equal(saved["rng_per_rank"][0]["torch"], saved["rng_per_rank"][1]["torch"])
    _torchrun_train(config, resumed, tmp_path, "--resume")

    def losses(run: Path) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}

    assert losses(full) == losses(resumed) and len(losses(full)) == 4


def test_two_process_ddp_classifier_run_validates_every_crop_once_and_only_rank_0_writes(tmp_path: Path):
    from test_classifier_training import tiny_classifier_config

    data = tmp_path / "data"
    make_synthetic_coco(data, num_train=8, num_val=4, seed=0)
    cfg = tiny_classifier_config(data, epochs=1, batch_size=4)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(cfg)))
    run = tmp_path / "run"
    output = _torchrun_train(config, run, tmp_path, tool="train_classifier.py")
    assert "rank 0 of 2" in output and "rank 1 of 2" in output
    assert {"best.pt", "last.pt", "metrics.json", "metrics.jsonl"} <= {p.name for p in run.iterdir()}
    metrics = json.loads((run / "metrics.json").read_text())
    val = json.loads((data / "val.json").read_text())
    assert metrics["num_samples"] == sum(1 for a in val["annotations"] if not a.get("iscrowd", 0))
