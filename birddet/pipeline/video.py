"""Video clips as sources of ``birddet predict``: PyAV decoding, frame sampling, one clip -> one result.

A clip is a source like a photo: it yields frames, each with an identity (the clip's ``file`` and the frame's
0-based decode index) and a time, and those frames go through the same detector and classifier as photos, in
batches of ``--batch-size`` (tiled with ``--tile`` like any image). The result is one :class:`ImageResult` per clip
whose :class:`VideoInfo` lists the sampled frames; the writers turn it into MegaDetector's video entry and one row
per sampled frame (`birddet.pipeline.video_writers`).

Decoding is PyAV's (FFmpeg inside its wheel; the optional ``birddet[video]`` extra), frame by frame: only the
sampled frames are converted to RGB, and at most one batch of them is held, so an hour of 4K costs the memory of a
few frames. Frames are turned upright by the stream's display matrix (``VideoFrame.rotation``, what phones write
instead of rotating pixels), as photos are by their EXIF orientation. A frame's time is its timestamp (``pts`` x
time base, from the stream's start), not its index / frame rate, so variable-frame-rate clips (phones again) are
sampled and timed right.

Sampling (:class:`Sampling`): ``--video-fps F`` keeps the first frame of each 1/F-second slot (frame 0, then the
first frame at or after 1/F s, 2/F s, ...: at most F frames a second, never more frames than the clip has);
``--every-n-frames N`` keeps frames 0, N, 2N, ... of the decode order, as MegaDetector's ``process_video`` does.

Failures follow the bad-input policy: a file that cannot be opened (zero bytes, not a video) or has no video stream
(an audio recording saved as .mp4) is a failure entry; a clip whose decoding stops early (a truncated copy, a
corrupt packet) keeps the frames decoded before that and records why in :attr:`VideoInfo.error`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from birddet.errors import InputError
from birddet.pipeline.results import Detection, ImageResult, VideoInfo

__all__ = [
    "VIDEO_EXTENSIONS",
    "Frame",
    "Sampling",
    "clips_summary",
    "is_video",
    "predict_clip",
    "read_frames",
    "require_av",
]

# What birddet reads as video, any case. MegaDetector's own list (`video_utils.VIDEO_EXTENSIONS`) lacks .m4v and
# .webm; its tools treat entries of those as images, which the video fields do not disturb.
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".m4v", ".webm"})

# A frame counts as being in a sampling slot when its time is within this of the slot's start: timestamps are
# rationals turned into floats, and 0.1 * 10 must land in slot 1, not slot 0.
_SLOT_EPS = 1e-6


def is_video(path: str | Path) -> bool:
    """True when ``path`` has one of :data:`VIDEO_EXTENSIONS` (any case)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class Sampling:
    """Which frames of a clip are looked at: ``fps`` frames a second at most, or every ``every_n_frames``-th frame
    (this one wins when given)."""

    fps: float = 1.0
    every_n_frames: int | None = None

    def __post_init__(self) -> None:
        if self.every_n_frames is not None and self.every_n_frames < 1:
            raise InputError(f"--every-n-frames must be at least 1, got {self.every_n_frames}")
        if self.every_n_frames is None and not (math.isfinite(self.fps) and self.fps > 0):
            raise InputError(f"--video-fps must be a positive number of frames per second, got {self.fps}")

    def settings(self) -> dict[str, Any]:
        """The sampling as recorded for the resume check (other frames give other results)."""
        if self.every_n_frames is not None:
            return {"every_n_frames": self.every_n_frames}
        return {"video_fps": self.fps}

    def keeps(self, index: int, time_s: float, last_slot: int) -> int | None:
        """The slot of a frame to keep (its index for every-N sampling), or None to skip it; ``last_slot`` is the
        slot of the last frame kept (-1 before the first)."""
        if self.every_n_frames is not None:
            return index if index % self.every_n_frames == 0 else None
        slot = math.floor(time_s * self.fps + _SLOT_EPS)
        return slot if slot > last_slot else None


@dataclass
class Frame:
    """One sampled frame: its 0-based decode ``index``, its ``time_s`` from the clip's start and its upright pixels
    (uint8 ``[3, H, W]``)."""

    index: int
    time_s: float
    image: torch.Tensor


@dataclass
class ClipReading:
    """What :func:`read_frames` found about a clip besides its frames; ``error`` is filled in as decoding ends."""

    frame_rate: float
    declared_frames: int
    created: str | None = None  # the container's creation time (ISO 8601) when the camera wrote a valid one
    error: str | None = None


def _upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """``rgb`` [H, W, 3] turned by the display matrix's counter-clockwise ``rotation`` (a multiple of 90)."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb


def _creation_time(text: str | None) -> str | None:
    """MP4/MOV ``creation_time`` (``2024-05-01T06:12:03.000000Z``, UTC) as ISO 8601; None when absent or unset
    (cameras without a clock write 1904-01-01 or 1970-01-01, the epochs of the two formats)."""
    try:
        when = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    return None if when is None or when.year < 1990 else when.isoformat()


def _open(path: Path) -> tuple[Any, Any]:
    """The PyAV container and its first video stream; InputError when neither can be had."""
    av = require_av()
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        what = "is empty (0 bytes)" if path.is_file() and path.stat().st_size == 0 else f"cannot be opened ({exc})"
        raise InputError(f"video {path} {what}; is the file complete, and a video?") from None
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
        container.close()
        raise InputError(f"{path} has no video stream ({kinds}); it is not a video clip")
    return container, container.streams.video[0]


def require_av() -> Any:
    """PyAV, or an InputError naming ``pip install 'birddet[video]'``; predict calls it before a run with clips, so
    a missing extra stops the run at once instead of failing every clip."""
    from birddet.extras import require  # late: only a run that meets a clip needs the optional extra

    return require("video", "av")


def read_frames(path: Path, sampling: Sampling, *, max_pixels: int) -> tuple[ClipReading, Iterator[Frame]]:
    """Open ``path`` and return what it declares plus an iterator over its sampled frames, decoded as iterated.

    Raises :class:`InputError` when the clip cannot be opened, has no video stream or its frames are over
    ``max_pixels``. An error while decoding ends the iterator and is kept in ``ClipReading.error``, as is a clip
    that ends before the number of frames its header declares (a copy cut short: FFmpeg stops without an error).
    """
    av = require_av()
    container, stream = _open(path)
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > max_pixels:
        container.close()
        raise InputError(f"video {path} is {width}x{height}, over the {max_pixels / 1e6:.0f} Mpx limit per frame")
    rate = stream.average_rate or stream.guessed_rate
    reading = ClipReading(
        frame_rate=float(rate) if rate else -1.0,
        declared_frames=int(stream.frames or 0),
        created=_creation_time(container.metadata.get("creation_time") or stream.metadata.get("creation_time")),
    )
    stream.thread_type = "AUTO"  # FFmpeg's frame + slice threads: decoding is the cost of a sampled run

    def frames() -> Iterator[Frame]:
        index = -1
        last_slot = -1
        start: float | None = None
        try:
            for frame in container.decode(stream):
                index += 1
                if frame.time is not None:
                    start = frame.time if start is None else start
                    time_s = frame.time - start
                else:  # no timestamp: the declared rate is all there is
                    time_s = index / reading.frame_rate if reading.frame_rate > 0 else float(index)
                slot = sampling.keeps(index, time_s, last_slot)
                if slot is None:
                    continue
                last_slot = slot
                rgb = _upright(frame.to_ndarray(format="rgb24"), frame.rotation or 0)
                yield Frame(index, round(time_s, 6), torch.from_numpy(rgb).permute(2, 0, 1).contiguous())
            if reading.declared_frames and index + 1 < reading.declared_frames:
                reading.error = (
                    f"the clip ends after {index + 1} of the {reading.declared_frames} frames its header declares "
                    "(a truncated copy?)"
                )
        except (av.FFmpegError, ValueError, OSError) as exc:
            reading.error = f"decoding stopped after frame {index} ({type(exc).__name__}: {exc})"
        finally:
            container.close()

    return reading, frames()


def _batches(frames: Iterator[Frame], size: int) -> Iterator[list[Frame]]:
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# detect(images) -> one list of detections per image, in the images' pixels
DetectFrames = Callable[[Sequence[torch.Tensor]], list[list[Detection]]]
# on_frame(frame, its detections): --save-video's writer
OnFrame = Callable[[Frame, list[Detection]], None]


def predict_clip(
    path: Path,
    file: str,
    sampling: Sampling,
    detect: DetectFrames,
    *,
    batch_size: int,
    max_pixels: int,
    on_frame: OnFrame | None = None,
) -> ImageResult:
    """Detect (and classify, inside ``detect``) on the sampled frames of one clip, ``batch_size`` frames at a time.

    Returns the clip's result: its displayed size, every detection with its ``frame``, and its :class:`VideoInfo`;
    or a failure entry (still with ``video``, frame rate -1.0 when unknown) when the clip cannot be opened, has no
    video stream, or no frame could be decoded. ``on_frame`` sees each sampled frame with its detections, in order.
    """
    try:
        reading, frames = read_frames(path, sampling, max_pixels=max_pixels)
    except InputError as exc:
        return ImageResult(file, str(path), None, None, failure=" ".join(str(exc).split()), video=VideoInfo(-1.0))
    info = VideoInfo(reading.frame_rate)
    detections: list[Detection] = []
    size: tuple[int, int] | None = None
    for batch in _batches(frames, batch_size):
        found = detect([f.image for f in batch])
        for frame, dets in zip(batch, found, strict=True):
            for d in dets:
                d.frame = frame.index
            detections.extend(dets)
            info.frames.append(frame.index)
            info.times_s.append(frame.time_s)
            size = size or (int(frame.image.shape[-1]), int(frame.image.shape[-2]))
            if on_frame is not None:
                on_frame(frame, dets)
    info.error = reading.error
    if size is None:
        why = reading.error or "the clip has no frames"
        return ImageResult(file, str(path), None, None, failure=f"video {path}: no frame decoded: {why}", video=info)
    result = ImageResult(file, str(path), size[0], size[1], detections, video=info)
    if reading.created is not None:  # else the file's time, as for a photo without EXIF (events fill it in)
        result.datetime, result.timestamp_source = reading.created, "metadata"
    return result


def clips_summary(results: Sequence[ImageResult]) -> str:
    """The run summary's words on clips, after the number of photos: ``" and 2 video clip(s) (61 frames sampled; 1
    stopped early, frames before kept: a.mp4)"``; empty without clips."""
    clips = [r for r in results if r.video is not None]
    if not clips:
        return ""
    frames = sum(len(r.video.frames) for r in clips if r.video is not None)
    early = [r.file for r in clips if r.failure is None and r.video is not None and r.video.error is not None]
    more = f" and {len(early) - 3} more" if len(early) > 3 else ""
    note = f"; {len(early)} stopped early, frames before kept: {', '.join(early[:3])}{more}" if early else ""
    return f" and {len(clips)} video clip(s) ({frames} frames sampled{note})"
