"""Damaged or hand-edited files and out-of-range settings: `birddet` exits 2 with one stderr line naming the file
or key and the fix, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_untrusted_files import make_tiny_files  # tests/ is on sys.path (pytest rootdir-relative import)

from birddet.backbone.presets import PRESETS
from birddet.backbone.vit import ViT
from birddet.backbone.weights import save_birder_file
from birddet.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_files(tmp_path_factory.mktemp("one_line"))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI; assert exit code 2 and one stderr line, and return that line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("birddet: error:"), err
    return err


def predict(files: dict[str, Path], tmp_path: Path, checkpoint: Path, *args: str) -> list[str]:
    return [
        "predict", str(checkpoint), str(files["images"]), "--out", str(tmp_path / "out"),
        "--workers", "0", "--device", "cpu", *args,
    ]  # fmt: skip


def test_text_file_as_checkpoint(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("these are my notes, not weights\n")
    err = run(predict(files, tmp_path, text), capsys)
    assert "checkpoint" in err and "notes.pt" in err and "not a PyTorch file" in err


def test_text_file_as_birder_weights(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "species.pt"
    text.write_text("<html>404 Not Found</html>\n")
    err = run(predict(files, tmp_path, files["ckpt"], "--classifier", str(text)), capsys)
    assert "species.pt" in err and "not a PyTorch file" in err and "download it again" in err


def test_non_integer_category_key_in_checkpoint(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = torch.load(files["ckpt"], weights_only=True)
    ckpt["categories"] = {"bird": "bird"}
    bad = tmp_path / "cats.pt"
    torch.save(ckpt, bad)
    err = run(predict(files, tmp_path, bad, "--no-classifier"), capsys)
    assert "cats.pt" in err and "'categories' key 'bird' is not an integer category id" in err


def test_non_integer_class_index_in_birder_file(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    obj = torch.load(files["species"], weights_only=True)
    obj["class_to_idx"] = {"a a": "0", "b b": "1", "c c": "2"}
    bad = tmp_path / "c2i.pt"
    torch.save(obj, bad)
    err = run(predict(files, tmp_path, files["ckpt"], "--classifier", str(bad)), capsys)
    assert "c2i.pt" in err and "'class_to_idx' must be a mapping of class names to integer indices" in err


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("signature", [0, 3, 64, 96]),
        ("class_to_idx", ["a a", "b b", "c c"]),
        ("rgb_stats", {"mean": 0.5, "std": 0.5}),
    ],
)
def test_safetensors_metadata_of_the_wrong_json_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], files: dict[str, Path], field: str, value: Any
) -> None:
    net = ViT(PRESETS["vit_reg4_tiny16_rms_avg"], num_classes=3, image_size=(64, 96))
    good = save_birder_file(net, tmp_path / "good.safetensors", class_to_idx={"a a": 0, "b b": 1, "c c": 2})
    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
    meta[field] = json.dumps(value)
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(good)), str(bad), metadata=meta)
    err = run(predict(files, tmp_path, files["ckpt"], "--classifier", str(bad)), capsys)
    assert "bad.safetensors" in err and f"field '{field}' must be" in err


def _predictions(tmp_path: Path, edit: Any) -> Path:
    data = {
        "images": [{"id": 1, "file_name": "wide.png", "width": 96, "height": 54}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4.0, 5.0, 20.0, 10.0], "score": 0.9}],
        "categories": [{"id": 1, "name": "bird"}],
    }
    edit(data)
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda d: d["images"][0].pop("width"), "images[0] (id 1) needs a positive integer 'width', got None"),
        (lambda d: d["images"][0].update(height="54"), "needs a positive integer 'height', got '54'"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotations[0] (id 1) needs 'bbox'"),
        (lambda d: d["annotations"][0].update(score="high"), "needs a numeric 'score', got 'high'"),
        (lambda d: d["annotations"][0].update(category_id="bird"), "needs an integer 'category_id'"),
    ],
)
def test_convert_predictions_on_a_damaged_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Any, fragment: str
) -> None:
    src = _predictions(tmp_path, edit)
    err = run(["convert", "predictions", str(src), "--min-score", "0.5", "--out", str(tmp_path / "pl.json")], capsys)
    assert "coco.json" in err and fragment in err


def test_convert_predictions_still_converts_a_sound_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _predictions(tmp_path, lambda d: None)
    out = tmp_path / "pl.json"
    assert main(["convert", "predictions", str(src), "--min-score", "0.5", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["images"][0]["width"] == 96


@pytest.mark.parametrize(
    "override",
    ["train.log_every=0", "train.seed=-1", "train.seed=4294967296", "train.lr=nan", "data.workers=-1",
     "train.warmup_iters=-1", "train.grad_clip=-1", "model.roi_heads.roi_output_size=0"],
)  # fmt: skip
def test_out_of_range_config_values(tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str) -> None:
    key = override.split("=")[0]
    err = run(["train", str(ROOT / "configs" / "quickstart.yaml"), "--out", str(tmp_path / "run"), override], capsys)
    assert f"'{key}' must be" in err
