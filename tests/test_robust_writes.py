"""Writes that survive what happens to long runs: a torn metrics.jsonl line, file modes, temporary files left by
kill -9, a kill between predict's output files, and a full disk (simulated by patching the write to fail with
ENOSPC: mounting a small tmpfs needs root)."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from test_output_safety import FAST, make_photos, predict_argv, tiny_ckpt  # noqa: F401 - tiny_ckpt is a fixture
from test_predict import fake_boxes
from test_trainer import data_dir, read_log, tiny_config  # noqa: F401 - data_dir is a fixture

import birddet.fileio as fileio
from birddet.cli import main
from birddet.engine.trainer import train
from birddet.fileio import atomic_torch_save, atomic_write_text

OUTPUTS = ("megadetector.json", "coco.json", "predictions.csv", "events.csv", "counts.csv")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_torn_last_metrics_line_is_dropped_on_resume(
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = tmp_path / "run"
    train(tiny_config(data_dir, max_steps=1), run)
    log = run / "metrics.jsonl"
    os.chmod(log, 0o640)
    with open(log, "a") as fh:
        fh.write('{"epoch": 1, "step": 2, "loss": 1.2')  # a kill in the middle of a line
    with caplog.at_level("WARNING"):
        summary = train(tiny_config(data_dir, max_steps=2), run, resume=True)
    assert summary["steps"] == 2
    assert "dropping its last line" in caplog.text
    assert [r["step"] for r in read_log(run) if "loss" in r] == [1, 2]  # every line parses again
    assert _mode(log) == 0o640  # rewritten atomically, with the file's own mode


def test_atomic_writes_keep_the_mode_or_use_the_umask_default(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        fresh = atomic_write_text(tmp_path / "new.json", "{}")
        assert _mode(fresh) == 0o644  # what open() gives a new file, not mkstemp's 0600
        shared = tmp_path / "shared.csv"
        shared.write_text("a\n")
        os.chmod(shared, 0o664)
        atomic_write_text(shared, "b\n")
        assert _mode(shared) == 0o664 and shared.read_text() == "b\n"
        ckpt = tmp_path / "last.pt"
        ckpt.write_bytes(b"")
        os.chmod(ckpt, 0o640)
        atomic_torch_save({"x": torch.zeros(2)}, ckpt)
        assert _mode(ckpt) == 0o640
    finally:
        os.umask(old)


def test_temporary_files_left_by_a_killed_run_are_removed_on_start(
    tiny_ckpt: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_boxes(monkeypatch)
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    stale = [
        out / ".megadetector.json.k3x_9abc.tmp.json",
        out / ".progress.jsonl.abcdefgh.tmp.jsonl",
        out / "images" / ".wide.jpg.0123abcd.tmp.jpg",
    ]
    kept = [out / ".my.notes.tmp", out / "images" / ".wide.jpg.0123abcd.tmp.png", out / "x.abcdefgh.tmp.json"]
    for p in stale + kept:
        p.write_text("left behind")
    photos = tmp_path / "photos"
    make_photos(photos)
    assert main(["predict", str(tiny_ckpt), str(photos), "--out", str(out), "--save-images", *FAST]) == 0
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in kept)  # names that are not exactly ours are the user's


def _outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in OUTPUTS}


def test_a_failure_while_writing_the_outputs_keeps_the_old_set(
    tiny_ckpt: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    photos, out, argv = predict_argv(tiny_ckpt, tmp_path, monkeypatch)
    assert main(argv) == 0
    before = _outputs(out)
    make_photos(photos, names=("third.jpg", "fourth.png"))  # the resumed run has more images: other outputs

    real_fsync = os.fsync

    def full_on_the_third_output(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp.csv"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_on_the_third_output)
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "predictions.csv" in err and "nothing already finished was lost" in err and "Traceback" not in err
    assert _outputs(out) == before  # not a new megadetector.json beside an old predictions.csv
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_a_set_torn_by_a_kill_between_renames_is_detected_and_rewritten_on_resume(
    tiny_ckpt: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from birddet.pipeline.writers import check_outputs

    photos, out, argv = predict_argv(tiny_ckpt, tmp_path, monkeypatch)
    assert main(argv) == 0
    assert check_outputs(out) == []
    make_photos(photos, names=("third.jpg", "fourth.png"))

    with monkeypatch.context() as m:
        real_replace, renames = os.replace, []

        def killed_after_one_rename(src: str, dst: str) -> None:
            if Path(dst).name in OUTPUTS:
                if renames:
                    raise KeyboardInterrupt  # stands in for kill -9 between two renames of the output set
                renames.append(dst)
            real_replace(src, dst)

        m.setattr(fileio.os, "replace", killed_after_one_rename)
        assert main([*argv, "--resume"]) == 130
    torn = check_outputs(out)
    assert len(torn) == 1 and "is not the one the manifest lists" in torn[0]

    with caplog.at_level("WARNING"):
        assert main([*argv, "--resume"]) == 0
    assert "not one set" in caplog.text
    assert check_outputs(out) == []
    md = json.loads((out / "megadetector.json").read_text())
    assert len(md["images"]) == 4 and (out / "predictions.csv").read_text().count("fourth.png") >= 1


def test_disk_full_during_predict_is_one_line_and_keeps_the_finished_images(
    tiny_ckpt: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    photos, out, argv = predict_argv(tiny_ckpt, tmp_path, monkeypatch, "--batch-size", "1")
    real_fsync, appends = os.fsync, []

    def full_after_the_first_append(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/progress.jsonl"):
            appends.append(fd)
            if len(appends) > 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full_after_the_first_append)
        assert main([*argv, "--checkpoint-every", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "no space left" in err and "progress.jsonl" in err and "nothing already finished was lost" in err
    header, *lines = (out / "progress.jsonl").read_text().splitlines()
    assert [json.loads(x)["file"] for x in lines] == ["tall.png"]  # whole lines only: the failed one was cut back
    assert not (out / "birddet.lock").exists()
    assert main([*argv, "--resume"]) == 0
    assert "(1 from an earlier run)" in capsys.readouterr().out


class _FullDisk(io.FileIO):
    """A file whose writes fail once 1 KB is in, as on a disk that fills up during a checkpoint."""

    def write(self, b: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(b) > 1024:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(b)


def test_disk_full_while_saving_a_checkpoint_names_the_file_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from birddet.fileio import DiskFullError

    ckpt = tmp_path / "last.pt"
    atomic_torch_save({"step": torch.tensor(1)}, ckpt)
    before = ckpt.read_bytes()
    monkeypatch.setattr(fileio, "open", lambda path, mode="r", **kw: _FullDisk(path, "wb"), raising=False)
    with pytest.raises(DiskFullError, match=r"writing last\.pt \(more than .* needed, .* free\).*left as it was"):
        atomic_torch_save({"step": torch.zeros(100_000)}, ckpt)
    assert ckpt.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
