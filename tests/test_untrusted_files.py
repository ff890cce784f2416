"""Untrusted checkpoints and birder files: sizes they claim are checked against their tensors before allocation.

The memory tests run `birddet predict` in a subprocess whose address space is capped (RLIMIT_AS) about 1.5 GiB above
what it uses after importing torch: a network built from the claimed sizes needs several GiB, so code that
allocates before checking dies with an allocation error (exit 1, traceback), while code that checks first exits 2
with one line naming the file, the tensor, the claimed and the stored shape.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from birddet.backbone.presets import PRESETS
from birddet.backbone.vit import ViT
from birddet.backbone.weights import WeightsError, load_backbone, save_birder_file
from birddet.config import Config
from birddet.engine.checkpoint import load_detector, save_checkpoint
from birddet.models.detector import build_detector
from birddet.pipeline.species import SpeciesClassifier

TINY = "vit_reg4_tiny16_rms_avg"
ROOT = Path(__file__).resolve().parents[1]

# Runs the CLI under an address-space cap set after the imports (torch maps a lot of address space on import).
_CAPPED_CLI = """
import resource, sys
import torch, birddet.cli
vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
cap = vm + int(1.5 * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
sys.exit(birddet.cli.main(sys.argv[1:]))
"""


def make_tiny_files(base: Path) -> dict[str, Path]:
    """A tiny detector checkpoint, a 16:9 and a portrait image, and a tiny birder classifier (input 64x96)."""
    cfg = Config()
    cfg.model.backbone.preset = TINY
    cfg.model.image_size = 64
    cfg.model.pyramid.out_channels = 16
    cfg.model.roi_heads.representation_size = 32
    torch.manual_seed(0)
    save_checkpoint(base / "ok.pt", build_detector(cfg, {1: "bird"}, load_weights=False))
    images = base / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (54, 96, 3), dtype=np.uint8)).save(images / "wide.png")
    Image.fromarray(rng.integers(0, 256, (96, 54, 3), dtype=np.uint8)).save(images / "portrait.png")
    net = ViT(PRESETS[TINY], num_classes=3, image_size=(64, 96))
    save_birder_file(net, base / "species.pt", class_to_idx={"a a": 0, "b b": 1, "c c": 2})
    return {"dir": base, "ckpt": base / "ok.pt", "images": images, "species": base / "species.pt"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_files(tmp_path_factory.mktemp("untrusted"))


def _edited_checkpoint(files: dict[str, Path], name: str, edit: Any) -> Path:
    ckpt = torch.load(files["ckpt"], weights_only=True)
    ckpt["config"] = json.loads(json.dumps(ckpt["config"]))
    edit(ckpt)
    path = files["dir"] / name
    torch.save(ckpt, path)
    return path


def _edited_birder_file(files: dict[str, Path], name: str, edit: Any) -> Path:
    obj = torch.load(files["species"], weights_only=True)
    edit(obj)
    path = files["dir"] / name
    torch.save(obj, path)
    return path


def _predict_capped(
    files: dict[str, Path], tmp_path: Path, checkpoint: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    argv = [
        str(checkpoint),
        str(files["images"]),
        "--out",
        str(tmp_path / "out"),
        "--workers",
        "0",
        "--device",
        "cpu",
        *args,
    ]
    return subprocess.run(
        [sys.executable, "-c", _CAPPED_CLI, "predict", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("birddet:") or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith("birddet: error:"), proc.stderr[-2000:]
    return lines[0]


def test_checkpoint_config_claiming_a_huge_box_head_is_refused_before_allocating(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """Within every config range, but 64x64 RoIs into a 16384-wide head is a 4 GiB layer the weights do not have."""

    def edit(ckpt: dict[str, Any]) -> None:
        ckpt["config"]["model"]["roi_heads"].update(representation_size=16384, roi_output_size=64)

    bad = _edited_checkpoint(files, "huge_head.pt", edit)
    line = _one_line_error(_predict_capped(files, tmp_path, bad, "--no-classifier"))
    assert "huge_head.pt" in line and "model.roi_heads.box_head.fc6.weight" in line
    assert "(16384, 65536)" in line and "(32, 784)" in line and "representation_size 16384" in line


def test_checkpoint_config_claiming_representation_size_2e6_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    """The reviewers' repro (100 GB): the config range refuses it before the weights are even compared."""

    def edit(ckpt: dict[str, Any]) -> None:
        ckpt["config"]["model"]["roi_heads"]["representation_size"] = 2_000_000

    bad = _edited_checkpoint(files, "rep2e6.pt", edit)
    line = _one_line_error(_predict_capped(files, tmp_path, bad, "--no-classifier"))
    assert "rep2e6.pt" in line and "'model.roi_heads.representation_size' must be" in line and "2000000" in line


def test_birder_signature_claiming_a_huge_input_is_refused_before_allocating(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """An input size of 64000x96000 makes a 6 GiB position embedding; the file stores one for 64x96."""

    def edit(obj: dict[str, Any]) -> None:
        obj["signature"]["inputs"][0]["data_shape"] = [0, 3, 64000, 96000]

    bad = _edited_birder_file(files, "huge_input.pt", edit)
    line = _one_line_error(_predict_capped(files, tmp_path, files["ckpt"], "--classifier", str(bad)))
    assert "huge_input.pt" in line and "pos_embedding" in line and "64000x96000" in line
    assert "(1, 24000004, 64)" in line and "(1, 28, 64)" in line


def test_birder_signature_claiming_3e9_classes_is_refused_before_allocating(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """The reviewers' 768 GB repro: the class count must be the class_to_idx length (and the head's rows)."""

    def edit(obj: dict[str, Any]) -> None:
        obj["signature"]["outputs"][0]["data_shape"] = [0, 3_000_000_000]

    bad = _edited_birder_file(files, "classes3e9.pt", edit)
    line = _one_line_error(_predict_capped(files, tmp_path, files["ckpt"], "--classifier", str(bad)))
    assert "classes3e9.pt" in line and "class_to_idx" in line and "3000000000" in line


def test_a_head_that_disagrees_with_the_signature_is_named_with_both_shapes(files: dict[str, Path]) -> None:
    """Same class count everywhere but the head's tensor: the meta comparison names the key and both shapes."""

    def edit(obj: dict[str, Any]) -> None:
        obj["state"]["classifier.weight"] = torch.zeros(4, obj["state"]["classifier.weight"].shape[1])
        obj["state"]["classifier.bias"] = torch.zeros(4)

    bad = _edited_birder_file(files, "head4.pt", edit)
    with pytest.raises(WeightsError, match=r"head4\.pt: its signature's 3 classes make classifier\.\w+ of shape \(3"):
        SpeciesClassifier.load(bad)


def test_intact_files_still_load(files: dict[str, Path]) -> None:
    detector = load_detector(files["ckpt"])
    assert detector.config.model.roi_heads.representation_size == 32
    net, info = load_backbone(files["species"])
    assert (info.num_classes, info.size, net.image_size) == (3, (64, 96), (64, 96))
