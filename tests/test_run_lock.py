"""One run per folder: a second predict/train/eval into a folder a live run holds exits 2 naming the holder; a
lock left by a dead process is taken over; the lock goes at exit, also on errors; an earlier predict run is only
continued with --resume or replaced with --overwrite.

The concurrent case runs two real `birddet predict` processes: the first (a subprocess) is held inside its
detector call by a gate on its stdin, so the test knows it is mid-run without timing anything.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_output_safety import FAST, make_photos, predict_argv, tiny_ckpt  # noqa: F401 - tiny_ckpt is a fixture
from test_predict import fake_boxes
from test_trainer import tiny_config

from birddet.cli import main
from birddet.engine.trainer import train
from birddet.errors import InputError

REPO = Path(__file__).resolve().parents[1]
LOCK = "birddet.lock"

# The first run: `birddet predict ...` whose detector waits for a line on stdin before each call.
GATED_PREDICT = """
import sys
from birddet.models.detector import BirdDetector
real = BirdDetector.predict
def gated(self, *args, **kwargs):
    print("predicting", flush=True)
    sys.stdin.readline()
    return real(self, *args, **kwargs)
BirdDetector.predict = gated
from birddet.cli import main
raise SystemExit(main(sys.argv[1:]))
"""

HOLD_LOCK = """
import sys
from birddet.runlock import RunLock
lock = RunLock(sys.argv[1], sys.argv[2]).acquire()
print("locked", flush=True)
sys.stdin.readline()
lock.release()
"""


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    return env


@contextmanager
def holder(folder: Path, command: str = "predict") -> Iterator[subprocess.Popen]:
    """Another process holding `folder`'s lock until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder), command],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(), cwd=REPO,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=60)


def test_two_predicts_into_one_out_the_second_exits_2_and_the_first_keeps_its_run(
    tiny_ckpt: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    photos = tmp_path / "photos"
    make_photos(photos)
    out = tmp_path / "out"
    first = subprocess.Popen(
        [sys.executable, "-c", GATED_PREDICT, "predict", str(tiny_ckpt), str(photos), "--out", str(out), *FAST,
         "--conf", "0.3", "--device", "cpu"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO,
    )  # fmt: skip
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "predicting"
        # The first run is inside its detector call now. A second run with other settings, as the reviewers ran it:
        rc = main(["predict", str(tiny_ckpt), str(photos), "--out", str(out), *FAST, "--conf", "0.05"])
        err = capsys.readouterr().err
        assert rc == 2
        assert f"pid {first.pid} on host {socket.gethostname()}" in err and "one run per folder" in err
    finally:
        _, stderr = first.communicate(input="\n", timeout=120)  # open the gate: the first run carries on
    assert first.returncode == 0, stderr[-2000:]
    header, *rows = (out / "progress.jsonl").read_text().splitlines()
    assert json.loads(header)["settings"]["conf"] == 0.3  # the first run's settings, over its own results
    assert len(rows) == 2
    assert not (out / LOCK).exists()  # released at exit


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(
    tiny_ckpt: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_boxes(monkeypatch)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    out = tmp_path / "out"
    out.mkdir()
    record = {"pid": pid, "host": socket.gethostname(), "command": "predict", "started": "2024-01-01 00:00:00"}
    (out / LOCK).write_text(json.dumps(record))
    photos = tmp_path / "photos"
    make_photos(photos)
    with caplog.at_level("WARNING"):
        assert main(["predict", str(tiny_ckpt), str(photos), "--out", str(out), *FAST]) == 0
    assert f"taking over the lock left by birddet predict (pid {pid}" in caplog.text
    assert not (out / LOCK).exists()


def test_a_lock_written_on_another_host_is_not_taken_over(
    tiny_ckpt: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    record = {"pid": 1, "host": "elsewhere.example", "command": "train", "started": "2024-01-01 00:00:00"}
    (out / LOCK).write_text(json.dumps(record))
    photos = tmp_path / "photos"
    make_photos(photos)
    assert main(["predict", str(tiny_ckpt), str(photos), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "pid 1 on host elsewhere.example" in err and f"delete {out / LOCK}" in err
    assert (out / LOCK).exists()  # still there: only a person can tell whether that run is alive


def test_the_lock_is_released_when_a_run_fails(
    tiny_ckpt: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    photos = tmp_path / "photos"
    make_photos(photos)
    out = tmp_path / "out"
    fake_boxes(monkeypatch, fail_after=0)  # the detector raises a RuntimeError mid-run
    with pytest.raises(RuntimeError, match="injected failure"):
        main(["predict", str(tiny_ckpt), str(photos), "--out", str(out), *FAST])
    assert not (out / LOCK).exists()
    # A missing checkpoint: refused, and no empty output folder is left behind either.
    assert main(["predict", str(tmp_path / "missing.pt"), str(photos), "--out", str(tmp_path / "new"), *FAST]) == 2
    assert not (tmp_path / "new").exists()


def test_predict_into_a_folder_holding_a_run_needs_resume_or_overwrite(
    tiny_ckpt: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    photos, out, argv = predict_argv(tiny_ckpt, tmp_path, monkeypatch)
    assert main([*argv, "--conf", "0.5"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    assert main([*argv, "--conf", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "already holds a prediction run" in err and "--overwrite" in err and "--resume" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    (out / "progress.rank1-of-2.jsonl").write_text("{}\n")  # a shard file of an older torchrun run in the folder
    assert main([*argv, "--conf", "0.01", "--overwrite"]) == 0
    header = json.loads((out / "progress.jsonl").read_text().splitlines()[0])
    assert header["settings"]["conf"] == 0.01
    assert not (out / "progress.rank1-of-2.jsonl").exists()  # nothing of the replaced run is left to mix in
    assert main([*argv, "--conf", "0.01", "--overwrite", "--resume"]) == 2


def test_train_and_eval_refuse_a_folder_another_run_holds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    with holder(run, "train") as proc:
        with pytest.raises(InputError, match=rf"pid {proc.pid} on host .*one run per folder"):
            train(tiny_config(tmp_path / "never_generated"), run)
        rc = main(["eval", str(tmp_path / "best.pt"), "--ann", "gt.json", "--images", "img", "--out", str(run)])
        assert rc == 2 and f"pid {proc.pid}" in capsys.readouterr().err
    assert not (tmp_path / "never_generated").exists()  # refused before any data work


def test_train_refuses_a_folder_with_a_run_that_has_no_last_pt_yet(tmp_path: Path) -> None:
    # A run in its first epoch has logged steps but not written last.pt: the old check (last.pt only) let a
    # second run start over it.
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "step": 1, "loss": 2.0}) + "\n")
    with pytest.raises(InputError, match=r"already holds a run \(metrics.jsonl\).*no last.pt"):
        train(tiny_config(tmp_path / "never_generated"), run)
    assert not (tmp_path / "never_generated").exists()
