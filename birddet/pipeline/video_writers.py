"""Video clips in the output files: MegaDetector's video entry, one row per sampled frame, the annotated MP4.

The writers (`birddet.pipeline.writers`) call in here for a result with ``video`` set; photos never reach it.

**megadetector.json.** A clip is one entry in MegaDetector's video convention, as its ``process_video`` writes it
(``megadetector/detection/process_video.py``, ``_video_results_to_md_format``) and its ``validate_batch_results``
checks it: ``frame_rate``, ``frames_processed`` (the sampled frame numbers, sorted) and a ``frame_number`` on every
detection, plus the image-level ``max_detection_conf`` (the best score over the clip, 0.0 without a box) that
readers of the older format such as Timelapse look for. A file holding a clip says ``format_version``
:data:`MEGADETECTOR_VIDEO_FORMAT_VERSION`, the newest the validator knows (from 1.5 it requires
``frames_processed`` on video entries; MegaDetector's own writer says 1.6); a file of photos only keeps the 1.4 of
`birddet.pipeline.writers`. A ``failure`` means "no results" there (the validator rejects an entry with a failure
and detections), so a clip that decoded at least one frame gets its detections and no failure, even when decoding
stopped early; a clip with no decoded frame is ``failure`` with ``detections: null``, ``frame_rate`` -1 when the
clip could not be opened, and ``frames_processed: []``.

**coco.json / predictions.csv.** One COCO image and one group of CSV rows per sampled frame (:func:`frame_views`),
with ``frame`` and ``time_s``. A clip whose decoding stopped early says so: its COCO images carry
``video_error`` and the CSV gets one more row for the clip with the reason in ``failure`` (what it lost), after
the rows of the frames it kept.

**--save-video** (:func:`annotated_video`): the sampled frames with their boxes drawn, as an H.264 MP4 in which
each frame shows at its time in the clip, in ``OUT/videos/``, renamed into place when complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

from PIL import Image

from birddet.fileio import atomic_path
from birddet.pipeline.results import Detection, ImageResult
from birddet.pipeline.taxonomy import Taxonomy
from birddet.pipeline.visualize import draw_detections

__all__ = [
    "MEGADETECTOR_VIDEO_FORMAT_VERSION",
    "annotated_video",
    "annotated_video_path",
    "frame_views",
    "megadetector_video_entry",
]

MEGADETECTOR_VIDEO_FORMAT_VERSION = "1.6"
_MS = Fraction(1, 1000)


def megadetector_video_entry(result: ImageResult, detection_entry: Callable[[Detection], dict[str, Any]]) -> dict:
    """The MegaDetector entry of one clip; ``detection_entry`` formats one box as for a photo (normalised bbox,
    category, conf, classifications), and this adds its ``frame_number``."""
    video = result.video
    assert video is not None, "megadetector_video_entry takes a clip's result"
    entry: dict[str, Any] = {"file": result.file, "frame_rate": float(video.frame_rate)}
    if result.failure is not None:
        entry.update(frames_processed=[], failure=result.failure, detections=None)
        return entry
    ordered = sorted(result.detections, key=lambda d: (d.frame if d.frame is not None else -1, -d.score))
    dets = [{**detection_entry(d), "frame_number": int(d.frame if d.frame is not None else 0)} for d in ordered]
    entry["frames_processed"] = sorted(video.frames)
    entry["max_detection_conf"] = max((d["conf"] for d in dets), default=0.0)
    entry["detections"] = dets
    return entry


def frame_views(results: Sequence[ImageResult]) -> Iterator[tuple[ImageResult, dict[str, Any]]]:
    """Each photo as it is, with no extra fields; each clip as one result per sampled frame (its boxes only) with
    ``{"frame", "time_s"}`` (and ``video_error`` when decoding stopped early), then, for a clip that stopped early,
    a failure result saying so. A failed clip is its failure entry, as a failed photo is."""
    for r in results:
        if r.video is None or r.failure is not None:
            yield r, {}
            continue
        by_frame: dict[int, list[Detection]] = {n: [] for n in r.video.frames}
        for d in r.detections:
            by_frame.setdefault(int(d.frame or 0), []).append(d)
        extra_error = {} if r.video.error is None else {"video_error": r.video.error}
        for n, t in zip(r.video.frames, r.video.times_s, strict=True):
            frame = ImageResult(r.file, r.path, r.width, r.height, by_frame[n])
            yield frame, {"frame": n, "time_s": t, **extra_error}
        if r.video.error is not None:
            kept = len(r.video.frames)
            yield ImageResult(r.file, r.path, None, None, failure=f"{r.video.error}; kept {kept} sampled frame(s)"), {}


def annotated_video_path(out_dir: Path, file: str) -> Path:
    """Where ``--save-video`` writes the annotated clip of ``file``: ``OUT/videos/<file without its suffix>.annotated.mp4``
    (a name no camera gives a clip, so it never lands on a source file)."""
    return out_dir / "videos" / Path(file).with_suffix(".annotated.mp4")


class _NoFrames(Exception):
    """Raised inside the atomic write to drop an annotated clip that got no frame."""


@contextmanager
def annotated_video(
    target: Path, taxonomy: Taxonomy | None, *, draw_conf: float
) -> Iterator[Callable[[Image.Image, Sequence[Detection], float], None]]:
    """Write an MP4 of sampled frames with their boxes drawn (those scoring at least ``draw_conf``); yields
    ``add(image, detections, time_s)``.

    Each frame is shown at its own time (a millisecond time base), so the annotated clip plays in real time whatever
    the sampling, and a variable frame rate stays right. Frames are encoded as they come (nothing is held), into a
    temporary file renamed to ``target`` when the block ends without error (`birddet.fileio.atomic_path`); a clip
    that gave no frame leaves no file. H.264 (``libx264``, in PyAV's wheel) in ``yuv420p``, which every player
    opens; that needs even sides, so an odd last row or column is cropped off.
    """
    from birddet.extras import require

    av = require("video", "av")
    try:
        with atomic_path(target) as tmp:
            container = av.open(str(tmp), "w", format="mp4")
            stream: Any = None
            last_pts = -1

            def add(image: Image.Image, detections: Sequence[Detection], time_s: float) -> None:
                nonlocal stream, last_pts
                drawn = draw_detections(image, [d for d in detections if d.score >= draw_conf], taxonomy)
                if stream is None:
                    stream = container.add_stream("libx264", rate=1000)
                    stream.width, stream.height = drawn.width - drawn.width % 2, drawn.height - drawn.height % 2
                    stream.pix_fmt = "yuv420p"
                    stream.codec_context.time_base = _MS
                if drawn.size != (stream.width, stream.height):
                    drawn = drawn.crop((0, 0, stream.width, stream.height)).resize((stream.width, stream.height))
                frame = av.VideoFrame.from_image(drawn)
                frame.pts = last_pts = max(round(time_s * 1000), last_pts + 1)
                frame.time_base = _MS
                for packet in stream.encode(frame):
                    container.mux(packet)

            try:
                yield add
                if stream is not None:
                    for packet in stream.encode():
                        container.mux(packet)
            finally:
                container.close()
            if stream is None:
                raise _NoFrames
    except _NoFrames:
        pass
