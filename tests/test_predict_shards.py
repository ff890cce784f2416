"""`torchrun --nproc_per_node=2 tools/predict.py`: two CPU processes (gloo) write what one process writes.

The same tiny detector, classifier and odd/bad image folder as tests/test_predict.py. A one-process run is the
reference; the two-process run must give the same MegaDetector, COCO and CSV files (same order, same ids, the
same failures), keep one progress file per rank, and resume each shard from its own file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import _free_port
from test_predict import BAD, CATEGORIES, GOOD, _make_images, _tiny_config
from test_species import write_tiny_classifier

from birddet.cli import main
from birddet.config import config_from_dict
from birddet.engine.checkpoint import save_checkpoint
from birddet.errors import InputError
from birddet.models.detector import build_detector
from birddet.pipeline.predict import PredictOptions, run_prediction
from birddet.pipeline.shards import Shard, check_resume_layout

REPO = Path(__file__).resolve().parents[1]
OPTS = ["--conf", "0.0", "--classify-conf", "0.0", "--top-k", "2", "--batch-size", "1", "--workers", "0"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("shards")
    torch.manual_seed(0)
    detector = build_detector(config_from_dict(_tiny_config()), CATEGORIES)
    return {
        "images": _make_images(base / "images"),
        "classifier": write_tiny_classifier(base / "species.pt"),
        "ckpt": save_checkpoint(base / "plain.pt", detector),
    }


def _torchrun(assets: dict[str, Path], out: Path, *extra: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", str(REPO / "tools" / "predict.py"), str(assets["ckpt"]),
        str(assets["images"]), "--out", str(out), "--classifier", str(assets["classifier"]), "--device", "cpu",
        *OPTS, *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    return output


def _outputs(out: Path) -> tuple[dict, dict, str]:
    md = json.loads((out / "megadetector.json").read_text())
    md.pop("info")  # holds the run's date and duration
    coco = json.loads((out / "coco.json").read_text())
    coco.pop("info", None)
    return md, coco, (out / "predictions.csv").read_text()


def test_shards_are_strided_and_name_their_progress_files() -> None:
    assert Shard(1, 3).select(list("abcdefg")) == ["b", "e"]
    assert Shard().select([1, 2]) == [1, 2]
    assert (Shard().progress_name, Shard(1, 2).progress_name) == ("progress.jsonl", "progress.rank1-of-2.jsonl")


def test_two_processes_write_what_one_process_writes_and_resume_per_shard(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    one = tmp_path / "one"
    run_prediction(
        assets["ckpt"],
        [assets["images"]],
        one,
        PredictOptions(conf=0.0, classify_conf=0.0, top_k=2, classifier=str(assets["classifier"]), batch_size=1,
                       workers=0, device="cpu"),
    )  # fmt: skip
    two = tmp_path / "two"
    output = _torchrun(assets, two)
    assert "rank 1 of 2:" in output
    reference = _outputs(one)
    assert _outputs(two) == reference
    md = reference[0]
    assert sorted(im["file"] for im in md["images"]) == sorted(GOOD + BAD)
    assert sum(1 for im in md["images"] if im.get("failure")) == len(BAD)
    assert sum(len(im["detections"] or []) for im in md["images"]) > 0

    # One progress file per rank, each holding its strided half (12 images: 6 each).
    names = sorted(p.name for p in two.glob("progress*.jsonl"))
    assert names == ["progress.rank0-of-2.jsonl", "progress.rank1-of-2.jsonl"]
    shard1 = (two / names[1]).read_text().splitlines()
    assert len(shard1) == 1 + 6

    # Rank 1 "crashed" after three images; rank 0 finished. --resume redoes only rank 1's missing images (and
    # retries failures, as a one-process resume does).
    (two / names[1]).write_text("\n".join(shard1[:4]) + "\n")
    kept = sum(json.loads(line)["failure"] is None for line in shard1[1:4])
    assert kept >= 1
    for f in ("megadetector.json", "coco.json", "predictions.csv"):
        (two / f).unlink()
    output = _torchrun(assets, two, "--resume")
    assert _outputs(two) == reference
    assert f"rank 1 of 2: 6 images ({kept} from an earlier run)" in output
    # Rank 0's failures (bad files) are retried on resume, its good images are kept.
    rank0 = [json.loads(x) for x in (two / names[0]).read_text().splitlines()[1:]]
    assert len(rank0) == 6

    # A one-process --resume of a two-process folder is refused, naming how it was started.
    with pytest.raises(InputError, match=r"with 1 process\(es\).*from a run with 2 process\(es\)"):
        check_resume_layout(two, Shard())
    rc = main(["predict", str(assets["ckpt"]), str(assets["images"]), "--out", str(two), "--resume",
               "--no-classifier", "--device", "cpu", *OPTS])  # fmt: skip
    assert rc == 2
