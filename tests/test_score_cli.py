"""`birddet score` / `tools/coco_map.py`: the report on success, exit code 2 and one stderr line on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_evaluator import make_case  # tests/ is on sys.path (pytest rootdir-relative import)

cli = pytest.importorskip("birddet.cli", reason="birddet.cli not written yet")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    gt, dets = make_case(seed=3, num_images=12)
    gt_path, dt_path = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(dets))
    return gt_path, dt_path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_score_prints_the_table_and_writes_metrics(
    tmp_path: Path, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    gt, dt = files
    metrics = tmp_path / "out" / "metrics.json"
    code, out, _ = run(["score", "--gt", str(gt), "--results", str(dt), "--out", str(metrics), "--no-plots"], capsys)
    assert code == 0
    assert "AP50" in out and "robin" in out
    stats = json.loads(metrics.read_text())["stats"]
    assert set(stats) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}
    assert not list(metrics.parent.glob("*.png"))


BAD_INPUTS: list[tuple[str, Any, str]] = [
    ("gt", "{not json", "not valid JSON"),
    ("gt", {"images": [], "annotations": []}, "missing top-level key 'categories'"),
    ("results", [{"image_id": 12345, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}], "image ids 12345"),
    ("results", [{"image_id": 100, "category_id": 1, "bbox": [0, 0, 1], "score": 1}], "four finite numbers"),
]


@pytest.mark.parametrize("which,content,message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path,
    files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    which: str,
    content: Any,
    message: str,
) -> None:
    gt, dt = files
    bad = tmp_path / "bad.json"
    bad.write_text(content if isinstance(content, str) else json.dumps(content))
    argv = ["score", "--gt", str(bad if which == "gt" else gt), "--results", str(bad if which == "results" else dt)]
    code, out, err = run(argv, capsys)
    assert code == 2
    assert err.startswith("birddet: error:") and err.count("\n") == 1
    assert message in err and "bad.json" in err


def test_missing_file_exits_2(tmp_path: Path, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    gt, _ = files
    code, _, err = run(["score", "--gt", str(gt), "--results", str(tmp_path / "none.json")], capsys)
    assert code == 2 and "none.json: results file not found" in err


def test_tools_wrapper_runs_score(tmp_path: Path, files: tuple[Path, Path]) -> None:
    gt, dt = files
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "coco_map.py"),
            "--gt",
            str(gt),
            "--results",
            str(dt),
            "--out",
            str(tmp_path / "report"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "AR100" in proc.stdout
    assert (tmp_path / "report" / "pr_curve.png").stat().st_size > 0
    assert (tmp_path / "report" / "confusion_matrix.png").stat().st_size > 0
