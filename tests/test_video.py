"""Video clips in `birddet predict`: sampling, frame numbers, rotation, MegaDetector's video entries, failures, resume.

Clips are made here with PyAV: synthetic red "birds" (squares) fly across a grey sky, each in its own horizontal
band, so the frames where birds are, and how many, are known. The detector is replaced by one that finds the red
squares (one box per band holding red pixels), so the tests check where each box ends up (frame numbers, times,
displayed pixels, counts) rather than what a random tiny detector happens to see.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import megadetector_validate
from PIL import Image
from test_predict import CATEGORIES, _tiny_config

from birddet.cli import main
from birddet.config import config_from_dict
from birddet.engine.checkpoint import save_checkpoint
from birddet.errors import InputError
from birddet.models.detector import BirdDetector, Prediction, build_detector
from birddet.pipeline.video import Sampling, read_frames

W, H = 160, 96
BANDS = 3  # birds fly in horizontal bands of H / BANDS rows; the fake detector gives one box per band
BIRD = 12

# Birds per frame index of the standard clip: (band, x) for each bird. Frames 0-9 empty, 10-19 one bird, 20-29
# two birds, frame 25 three; 30-39 empty again.
Schedule = Callable[[int], list[tuple[int, int]]]


def standard_birds(i: int) -> list[tuple[int, int]]:
    birds: list[tuple[int, int]] = []
    if 10 <= i < 30:
        birds.append((0, 4 * (i - 10)))
    if 20 <= i < 30:
        birds.append((1, 140 - 4 * (i - 20)))
    if i == 25:
        birds.append((2, 70))
    return birds


def draw_frame(i: int, birds: Schedule, size: tuple[int, int] = (W, H)) -> np.ndarray:
    w, h = size
    a = np.full((h, w, 3), 120, np.uint8)
    band = h // BANDS
    for b, x in birds(i):
        y = b * band + (band - BIRD) // 2
        a[y : y + BIRD, x : x + BIRD] = (230, 20, 20)
    return a


def write_clip(
    path: Path,
    *,
    n: int = 40,
    fps: int = 10,
    birds: Schedule = standard_birds,
    size: tuple[int, int] = (W, H),
    rotation: int | None = None,
    times_s: list[float] | None = None,
    codec: str = "mpeg4",
    faststart: bool = False,
    created: str | None = None,
) -> Path:
    """A clip of ``n`` frames; ``times_s`` gives each frame's own timestamp (a variable frame rate), ``created`` the
    container's creation time."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as c:
        if created is not None:
            c.metadata["creation_time"] = created
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.bit_rate = 2_000_000
        if rotation is not None:
            s.set_display_rotation(rotation)
        if times_s is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(draw_frame(i, birds, size), format="rgb24")
            if times_s is not None:
                frame.pts, frame.time_base = round(times_s[i] * 1000), Fraction(1, 1000)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=8000)
        for _ in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def red_square_detector(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Replace the detector with one that boxes the red pixels of each band; return the (w, h) of every input."""
    seen: list[tuple[int, int]] = []

    def predict(self: BirdDetector, images: list[torch.Tensor], **_: object) -> list[Prediction]:
        out = []
        for t in images:
            h, w = t.shape[-2:]
            seen.append((int(w), int(h)))
            r, g, b = (t[c].int() for c in range(3))
            red = (r > 170) & (g < 90) & (b < 90)
            boxes, scores = [], []
            across = w > h  # a portrait (rotated) frame has its bands as columns
            n = (h if across else w) // BANDS
            for k in range(BANDS):
                part = red[k * n : (k + 1) * n] if across else red[:, k * n : (k + 1) * n]
                ys, xs = torch.nonzero(part, as_tuple=True)
                if len(xs) < 10:
                    continue
                off_y, off_x = (k * n, 0) if across else (0, k * n)
                boxes.append([xs.min() + off_x, ys.min() + off_y, xs.max() + 1 + off_x, ys.max() + 1 + off_y])
                scores.append(0.9 - 0.1 * k)
            tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            out.append(Prediction(tensor, torch.tensor(scores), [5] * len(boxes), ["songbird"] * len(boxes), (w, h)))
        return out

    monkeypatch.setattr(BirdDetector, "predict", predict)
    return seen


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    detector = build_detector(config_from_dict(_tiny_config()), CATEGORIES)
    return save_checkpoint(tmp_path_factory.mktemp("video") / "plain.pt", detector)


def _predict(ckpt: Path, sources: list[Path], out: Path, *extra: str) -> None:
    argv = ["predict", str(ckpt), *map(str, sources), "--out", str(out), "--no-classifier", "--device", "cpu"]
    assert main([*argv, "--workers", "0", "--conf", "0.5", *extra]) == 0


def _outputs(out: Path) -> tuple[dict, dict, list[dict]]:
    md = json.loads((out / "megadetector.json").read_text())
    coco = json.loads((out / "coco.json").read_text())
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return md, coco, rows


# -- sampling ------------------------------------------------------------------------------------------------


def _sampled(path: Path, sampling: Sampling) -> list[tuple[int, float]]:
    _, frames = read_frames(path, sampling, max_pixels=10**8)
    return [(f.index, f.time_s) for f in frames]


def test_frames_sampled_for_fps_and_every_n(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4", n=40, fps=10)
    assert _sampled(clip, Sampling(fps=1.0)) == [(0, 0.0), (10, 1.0), (20, 2.0), (30, 3.0)]
    assert [i for i, _ in _sampled(clip, Sampling(fps=4.0))] == [
        0,
        3,
        5,
        8,
        10,
        13,
        15,
        18,
        20,
        23,
        25,
        28,
        30,
        33,
        35,
        38,
    ]
    assert [i for i, _ in _sampled(clip, Sampling(fps=50.0))] == list(range(40))  # never more than the clip has
    assert _sampled(clip, Sampling(every_n_frames=15)) == [(0, 0.0), (15, 1.5), (30, 3.0)]


def test_variable_frame_rate_is_sampled_by_timestamps(tmp_path: Path) -> None:
    times = [0.0, 0.05, 0.5, 0.55, 1.2, 1.25, 2.0, 2.9, 3.05]
    clip = write_clip(tmp_path / "vfr.mp4", n=len(times), times_s=times)
    # One frame per 1-second slot, the first in it, timed by its own timestamp (not index / rate).
    assert _sampled(clip, Sampling(fps=1.0)) == [(0, 0.0), (4, 1.2), (6, 2.0), (8, 3.05)]


# -- predict on clips ----------------------------------------------------------------------------------------


def _frames_with_birds(schedule: Schedule, frames: list[int]) -> dict[int, int]:
    return {i: len(schedule(i)) for i in frames if schedule(i)}


def test_mixed_folder_gives_md_video_entries_and_one_row_per_sampled_frame(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    red_square_detector(monkeypatch)
    media = tmp_path / "media"
    media.mkdir()
    Image.fromarray(draw_frame(12, standard_birds)).save(media / "photo.jpg")
    write_clip(media / "feeder.mp4")
    write_clip(media / "nest.MKV", n=12, birds=lambda i: [(2, 8 * i)])
    write_clip(media / "trail.webm", n=6, codec="libvpx-vp9", birds=lambda i: [])
    out = tmp_path / "out"
    _predict(ckpt, [media], out, "--every-n-frames", "5", "--batch-size", "3")
    megadetector_validate(out / "megadetector.json")
    md, coco, rows = _outputs(out)
    assert md["info"]["format_version"] == "1.6"  # the newest MegaDetector's validator knows; it has frames_processed
    entries = {e["file"]: e for e in md["images"]}
    assert set(entries) == {"photo.jpg", "feeder.mp4", "nest.MKV", "trail.webm"}
    assert "frame_rate" not in entries["photo.jpg"] and len(entries["photo.jpg"]["detections"]) == 1

    feeder = entries["feeder.mp4"]
    assert feeder["frame_rate"] == 10.0
    assert feeder["frames_processed"] == [0, 5, 10, 15, 20, 25, 30, 35]
    with_birds = _frames_with_birds(standard_birds, feeder["frames_processed"])
    assert with_birds == {10: 1, 15: 1, 20: 2, 25: 3}
    frame_numbers = [d["frame_number"] for d in feeder["detections"]]
    assert frame_numbers == sorted(frame_numbers)
    assert {n: frame_numbers.count(n) for n in set(frame_numbers)} == with_birds
    assert feeder["max_detection_conf"] == 0.9
    assert "failure" not in feeder
    # The bird of band 0 at frame 20 is at x = 40: the normalised box says so.
    first = next(d for d in feeder["detections"] if d["frame_number"] == 20 and d["conf"] == 0.9)
    assert first["bbox"][0] == pytest.approx(40 / W, abs=0.02) and first["bbox"][2] == pytest.approx(BIRD / W, abs=0.02)
    assert entries["nest.MKV"]["frames_processed"] == [0, 5, 10]
    assert entries["trail.webm"]["detections"] == [] and entries["trail.webm"]["max_detection_conf"] == 0.0

    # COCO: one image per sampled frame, with its frame number and time.
    frames = [(i["file_name"], i["frame"], i["time_s"]) for i in coco["images"] if "frame" in i]
    assert frames[:3] == [("feeder.mp4", 0, 0.0), ("feeder.mp4", 5, 0.5), ("feeder.mp4", 10, 1.0)]
    assert len(frames) == 8 + 3 + 2
    by_id = {i["id"]: i for i in coco["images"]}
    per_frame = {}
    for a in coco["annotations"]:
        image = by_id[a["image_id"]]
        if image["file_name"] == "feeder.mp4":
            per_frame[image["frame"]] = per_frame.get(image["frame"], 0) + 1
    assert per_frame == with_birds

    # CSV: rows per sampled frame (a count-0 row for an empty frame), frame and time_s filled for clips only.
    feeder_rows = [r for r in rows if r["file"] == "feeder.mp4"]
    assert sorted({int(r["frame"]) for r in feeder_rows}) == feeder["frames_processed"]
    counts = {int(r["frame"]): int(r["count"]) for r in feeder_rows}
    assert counts == {n: with_birds.get(n, 0) for n in feeder["frames_processed"]}
    assert {r["time_s"] for r in feeder_rows if r["frame"] == "25"} == {"2.5"}
    assert [(r["frame"], r["time_s"]) for r in rows if r["file"] == "photo.jpg"] == [("", "")]

    # One events.csv for the photos' events and the clips' (MaxN per clip: 3 birds in frame 25 of feeder.mp4).
    with open(out / "events.csv", newline="", encoding="utf-8") as fh:
        events = list(csv.DictReader(fh))
    firsts = {r["first_image"].split("#")[0]: r for r in events}
    assert set(firsts) == {"photo.jpg", "feeder.mp4", "nest.MKV", "trail.webm"}
    assert firsts["feeder.mp4"]["max_count"] == "3" and firsts["photo.jpg"]["first_seen_s"] == ""


def test_rotated_phone_clip_is_read_upright(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = red_square_detector(monkeypatch)
    # Stored landscape 160x96 with a bird at the top-left; the display matrix turns it 90 degrees clockwise (-90
    # counter-clockwise, what a phone held upright writes): shown portrait 96x160, the bird at the top-right
    # (stored rows 10-22 become columns 73-85 counted from the left; turned the other way it would be bottom-left).
    clip = write_clip(tmp_path / "phone.mov", n=3, birds=lambda i: [(0, 0)], rotation=-90)
    out = tmp_path / "out"
    _predict(ckpt, [clip], out, "--every-n-frames", "1")
    assert set(seen) == {(H, W)}
    md, coco, _ = _outputs(out)
    assert {(i["width"], i["height"]) for i in coco["images"]} == {(H, W)}
    for det in md["images"][0]["detections"]:
        x, y, w, h = det["bbox"]
        top = (H // BANDS - BIRD) // 2
        assert x + w == pytest.approx((H - top) / H, abs=0.02) and y == pytest.approx(0.0, abs=0.02)
        assert w == pytest.approx(BIRD / H, abs=0.03) and h == pytest.approx(BIRD / W, abs=0.03)
    assert len(md["images"][0]["detections"]) == 3


def test_truncated_empty_and_audio_only_clips_are_recorded_not_crashes(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    red_square_detector(monkeypatch)
    media = tmp_path / "media"
    media.mkdir()
    whole = write_clip(tmp_path / "whole.mp4", faststart=True).read_bytes()
    (media / "cut.mp4").write_bytes(whole[: len(whole) // 2])  # index first, then half of the frames
    (media / "empty.mp4").write_bytes(b"")
    write_audio_only(media / "song.mp4")
    Image.fromarray(draw_frame(12, standard_birds)).save(media / "photo.jpg")
    out = tmp_path / "out"
    _predict(ckpt, [media], out, "--every-n-frames", "5")
    summary = capsys.readouterr().out
    assert "stopped early" in summary and "cut.mp4" in summary

    megadetector_validate(out / "megadetector.json")
    md, coco, rows = _outputs(out)
    entries = {e["file"]: e for e in md["images"]}
    cut = entries["cut.mp4"]
    # Frames decoded before the cut keep their detections; MegaDetector's "failure" would mean "no results".
    assert "failure" not in cut and cut["frames_processed"] and cut["frames_processed"][-1] < 35
    assert cut["frames_processed"] == [n for n in range(0, 40, 5)][: len(cut["frames_processed"])]
    assert {d["frame_number"] for d in cut["detections"]} == {n for n in cut["frames_processed"] if standard_birds(n)}
    for name, why in (("empty.mp4", "empty"), ("song.mp4", "no video stream")):
        entry = entries[name]
        assert why in entry["failure"] and entry["detections"] is None
        assert entry["frame_rate"] == -1.0 and entry["frames_processed"] == []

    # COCO keeps the cut clip's frames and says why the rest is missing; the failed clips have no image.
    cut_images = [i for i in coco["images"] if i["file_name"] == "cut.mp4"]
    assert [i["frame"] for i in cut_images] == cut["frames_processed"]
    assert all("truncated" in i["video_error"] for i in cut_images)
    assert not any(i["file_name"] in ("empty.mp4", "song.mp4") for i in coco["images"])
    # CSV: the cut clip's frame rows, then one row saying what was lost; one failure row per failed clip.
    cut_rows = [r for r in rows if r["file"] == "cut.mp4"]
    assert [r["frame"] for r in cut_rows if r["failure"]] == [""]
    assert cut_rows[-1]["failure"].startswith("the clip ends after") and "kept" in cut_rows[-1]["failure"]
    assert all(r["frame"] for r in cut_rows[:-1])
    assert [r["failure"] != "" for r in rows if r["file"] in ("empty.mp4", "song.mp4")] == [True, True]


def test_resume_skips_finished_clips_and_retries_one_cut_short(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = red_square_detector(monkeypatch)
    media = tmp_path / "media"
    media.mkdir()
    write_clip(media / "a.mp4")
    write_clip(media / "b.avi", n=20)
    whole = write_clip(tmp_path / "whole.mp4", faststart=True).read_bytes()
    (media / "c.mp4").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    _predict(ckpt, [media], out, "--every-n-frames", "10")
    first = _outputs(out)[0]
    cut = {e["file"]: e for e in first["images"]}["c.mp4"]["frames_processed"]
    assert 0 < len(cut) < 4
    assert len(seen) == 4 + 2 + len(cut)  # a: 0, 10, 20, 30; b: 0, 10; c: what was there before the cut

    (media / "c.mp4").write_bytes(whole)  # the copy has finished since
    seen.clear()
    _predict(ckpt, [media], out, "--every-n-frames", "10", "--resume")
    assert len(seen) == 4  # only c, now whole: the finished clips are skipped
    md = _outputs(out)[0]
    entries = {e["file"]: e for e in md["images"]}
    assert entries["c.mp4"]["frames_processed"] == [0, 10, 20, 30]
    assert entries["a.mp4"] == {e["file"]: e for e in first["images"]}["a.mp4"]

    # Other sampling gives other frames: a resume with it is refused rather than mixing them.
    argv = ["predict", str(ckpt), str(media), "--out", str(out), "--no-classifier", "--device", "cpu", "--resume"]
    assert main([*argv, "--video-fps", "2"]) == 2


def test_save_video_writes_the_sampled_frames_at_their_times(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    red_square_detector(monkeypatch)
    media = tmp_path / "media"
    media.mkdir()
    write_clip(media / "feeder.mp4")
    (media / "empty.mp4").write_bytes(b"")
    out = tmp_path / "out"
    _predict(ckpt, [media], out, "--video-fps", "2", "--save-video")
    target = out / "videos" / "feeder.annotated.mp4"
    with av.open(str(target)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 8  # 4 s at 2 frames a second
    assert [round(f.time, 2) for f in frames] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    assert (frames[0].width, frames[0].height) == (W, H)
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["feeder.annotated.mp4"]  # none for a failed clip


def test_tiling_runs_on_frames(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiles: list[object] = []
    real = BirdDetector.predict

    def spy(self: BirdDetector, images: list[torch.Tensor], **kwargs: object) -> list[Prediction]:
        tiles.append(kwargs.get("tile"))
        return real(self, images, **kwargs)

    monkeypatch.setattr(BirdDetector, "predict", spy)
    clip = write_clip(tmp_path / "feeder.mp4", n=12)
    out = tmp_path / "out"
    _predict(ckpt, [clip], out, "--every-n-frames", "6", "--tile", "64", "--conf", "0.0")
    assert tiles and all(getattr(t, "size", None) == 64 for t in tiles)  # the frames went through the tiled path
    md = _outputs(out)[0]
    entry = md["images"][0]
    assert entry["frames_processed"] == [0, 6]
    assert {d["frame_number"] for d in entry["detections"]} <= {0, 6}
    settings = json.loads((out / "progress.jsonl").read_text().splitlines()[0])["settings"]
    assert settings["tile"] == 64 and settings["every_n_frames"] == 6


def test_missing_pyav_stops_before_the_run_naming_the_extra(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import birddet.extras

    def missing(extra: str, module: str) -> object:
        raise InputError(f"needs pip install 'birddet[{extra}]'")

    monkeypatch.setattr(birddet.extras, "require", missing)
    clip = write_clip(tmp_path / "feeder.mp4", n=2)
    argv = ["predict", str(ckpt), str(clip), "--out", str(tmp_path / "out"), "--no-classifier", "--device", "cpu"]
    assert main(argv) == 2
    assert "birddet[video]" in capsys.readouterr().err
    assert not (tmp_path / "out" / "progress.jsonl").exists()


def test_a_clip_is_one_event_with_maxn_and_first_and_last_seen(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    red_square_detector(monkeypatch)
    cam = tmp_path / "media" / "cam1"
    cam.mkdir(parents=True)
    write_clip(cam / "feeder.mp4", created="2024-05-01T06:12:03.000000Z")
    write_clip(cam / "quiet.mov", n=10, birds=lambda i: [])
    out = tmp_path / "out"
    _predict(ckpt, [tmp_path / "media"], out, "--every-n-frames", "1")
    with open(out / "events.csv", newline="", encoding="utf-8") as fh:
        rows = {r["event_id"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"cam1/feeder.mp4", "cam1/quiet.mov"}
    feeder = rows["cam1/feeder.mp4"]
    # 31 boxes in 20 frames, but never more than 3 birds at once: MaxN is 3, not a sum over frames.
    assert feeder["max_count"] == "3" and feeder["species"] == "songbird" and feeder["category"] == "songbird"
    assert (feeder["first_seen_s"], feeder["last_seen_s"]) == ("1.0", "2.9")
    assert feeder["start"] == "2024-05-01T06:12:03+00:00" and feeder["end"] == "2024-05-01T06:12:06.900000+00:00"
    assert (feeder["n_images"], feeder["first_image"], feeder["last_image"]) == (
        "40",
        "cam1/feeder.mp4#0",
        "cam1/feeder.mp4#39",
    )
    quiet = rows["cam1/quiet.mov"]
    assert (quiet["max_count"], quiet["species"], quiet["first_seen_s"]) == ("0", "", "")
    assert sum(1 for d in json.loads((out / "megadetector.json").read_text())["images"][0]["detections"]) == 31


def test_torchrun_splits_the_work_by_clip_and_writes_what_one_process_writes(tmp_path: Path) -> None:
    from test_predict_shards import _outputs as shard_outputs
    from test_predict_shards import _torchrun
    from test_species import write_tiny_classifier

    from birddet.pipeline.predict import PredictOptions, run_prediction

    media = tmp_path / "media"
    media.mkdir()
    for k in range(3):
        write_clip(media / f"clip{k}.mp4", n=12 + 4 * k)
    Image.fromarray(draw_frame(12, standard_birds)).save(media / "photo.jpg")
    torch.manual_seed(0)
    assets = {
        "images": media,
        "classifier": write_tiny_classifier(tmp_path / "species.pt"),
        "ckpt": save_checkpoint(tmp_path / "plain.pt", build_detector(config_from_dict(_tiny_config()), CATEGORIES)),
    }
    one = tmp_path / "one"
    options = PredictOptions(
        conf=0.0,
        classify_conf=0.0,
        top_k=2,
        classifier=str(assets["classifier"]),
        batch_size=1,
        workers=0,
        device="cpu",
    )
    run_prediction(assets["ckpt"], [media], one, options)
    two = tmp_path / "two"
    _torchrun(assets, two)
    assert shard_outputs(two) == shard_outputs(one)
    assert (two / "events.csv").read_text() == (one / "events.csv").read_text()
    # Strided by source: rank 0 has clip0 and clip2, rank 1 clip1 and the photo, each clip whole in one file.
    for rank, files in ((0, ["clip0.mp4", "clip2.mp4"]), (1, ["clip1.mp4", "photo.jpg"])):
        lines = (two / f"progress.rank{rank}-of-2.jsonl").read_text().splitlines()[1:]
        entries = [json.loads(line) for line in lines]
        assert sorted(e["file"] for e in entries) == files
        assert [e["video"]["frames"] for e in entries if "video" in e] == [[0, 10]] * (2 if rank == 0 else 1)


def test_overwrite_removes_the_events_of_an_earlier_run_with_clips(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    red_square_detector(monkeypatch)
    clip = write_clip(tmp_path / "feeder.mp4", n=10)
    photo = tmp_path / "photos" / "a.jpg"
    photo.parent.mkdir()
    Image.fromarray(draw_frame(12, standard_birds)).save(photo)
    out = tmp_path / "out"
    _predict(ckpt, [clip], out)
    assert "feeder.mp4" in (out / "events.csv").read_text()
    _predict(ckpt, [photo.parent], out, "--overwrite")
    assert "feeder.mp4" not in (out / "events.csv").read_text()  # its clip is not part of this run
