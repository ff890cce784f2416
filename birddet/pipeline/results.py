"""The result model of a prediction run: :class:`ImageResult` > :class:`Detection` > :class:`Classification`.

A video clip is one :class:`ImageResult` too (one entry per source file, which is what resume, sharding and
MegaDetector's format count): its ``video`` (:class:`VideoInfo`) lists the sampled frames, and each detection says
which frame it is on (``Detection.frame``). The predict pipeline fills it; it round-trips through
``to_dict``/``from_dict`` so a long run can checkpoint and resume. Apart from the writers
(`birddet.pipeline.writers`) because the classifier, the annotated-image drawer, the shard merge and the progress
file use results without writing any output file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from birddet.errors import InputError
from birddet.pipeline.taxonomy import Rollup

__all__ = ["Classification", "Detection", "ImageEvent", "ImageResult", "VideoInfo"]


@dataclass
class Classification:
    """One species guess for a crop: classifier class index and its probability."""

    class_index: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"class_index": self.class_index, "score": self.score}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Classification:
        """Inverse of :meth:`to_dict`."""
        return cls(int(data["class_index"]), float(data["score"]))


@dataclass
class Detection:
    """One detected object.

    ``box_xyxy`` is in absolute pixels of the image as displayed (after EXIF orientation), which is the frame
    both the normalised MegaDetector box and the pixel COCO box are derived from. ``classifications`` is the
    classifier's top-k, highest first; ``rollup`` the deepest confident taxon (None without a classifier).
    ``frame`` is the video frame the box is on (its 0-based decode index), None in a photo.
    """

    box_xyxy: tuple[float, float, float, float]
    score: float
    category_id: int
    category_name: str
    classifications: list[Classification] = field(default_factory=list)
    rollup: Rollup | None = None
    frame: int | None = None

    @property
    def species_uncertain(self) -> bool | None:
        """True when the classifier named no taxon (top species under the roll-up threshold, nothing above it to
        roll up to), False when it named one, None when the box was not classified.

        Every output asks this one question, so a box is "uncertain" in the CSV, the COCO file and the drawn label
        alike.
        """
        return None if self.rollup is None else self.rollup.names_no_taxon

    @property
    def identified_as(self) -> str:
        """What the box is, as far as can be said with confidence: the roll-up's taxon (a species' scientific name,
        or a genus, family ...), else the detector's category (unclassified or uncertain boxes)."""
        if self.rollup is None or self.rollup.names_no_taxon:
            return self.category_name
        return self.rollup.name

    def top_classification(self) -> Classification | None:
        """The classifier's best guess (highest probability), or None when the box was not classified."""
        return max(self.classifications, key=lambda c: c.score) if self.classifications else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "box_xyxy": [float(v) for v in self.box_xyxy],
            "score": float(self.score),
            "category_id": int(self.category_id),
            "category_name": self.category_name,
            "classifications": [c.to_dict() for c in self.classifications],
            "rollup": None if self.rollup is None else self.rollup.to_dict(),
            **({} if self.frame is None else {"frame": int(self.frame)}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Detection:
        """Inverse of :meth:`to_dict`."""
        x1, y1, x2, y2 = (float(v) for v in data["box_xyxy"])
        rollup = data.get("rollup")
        return cls(
            box_xyxy=(x1, y1, x2, y2),
            score=float(data["score"]),
            category_id=int(data["category_id"]),
            category_name=str(data["category_name"]),
            classifications=[Classification.from_dict(c) for c in data.get("classifications") or []],
            rollup=None if rollup is None else Rollup.from_dict(rollup),
            frame=None if data.get("frame") is None else int(data["frame"]),
        )


@dataclass
class VideoInfo:
    """What was sampled from a clip: ``frame_rate`` (frames per second as the stream declares it; -1.0 when the clip
    could not be opened, MegaDetector's convention), the sampled ``frames`` (0-based decode indices, increasing) and
    their ``times_s`` (seconds from the clip's start, from each frame's timestamp, so variable frame rates are
    right), and ``error``: why decoding stopped before the end (a truncated or corrupt file), None when the whole
    clip was read. A clip with an ``error`` keeps the frames decoded before it."""

    frame_rate: float
    frames: list[int] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "frame_rate": float(self.frame_rate),
            "frames": [int(f) for f in self.frames],
            "times_s": [float(t) for t in self.times_s],
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VideoInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(
            frame_rate=float(data["frame_rate"]),
            frames=[int(f) for f in data.get("frames") or []],
            times_s=[float(t) for t in data.get("times_s") or []],
            error=None if data.get("error") is None else str(data["error"]),
        )


@dataclass(frozen=True)
class ImageEvent:
    """Where an image stands among the others of its run: its deployment (camera), its event and the event's
    species (``"; "``-joined when the event holds several detector categories, empty when it holds no detection).

    Built from the whole run at write time (`birddet.pipeline.events`), so it is never saved in progress files.
    """

    deployment: str
    event_id: str
    species: str


@dataclass
class ImageResult:
    """Everything predicted for one image, or why it failed.

    ``file`` is the path relative to its source root with ``/`` separators (what output files show);
    ``path`` the absolute path (what the annotated-image writer and resume logic use). ``width``/``height``
    are the displayed size and may be None only for failures. ``datetime`` is when the photo was taken (ISO 8601,
    `birddet.pipeline.timestamps`) and ``timestamp_source`` where that came from (``exif`` or ``mtime``); both None
    when the file could not be found. ``event`` is set by the writers' caller from the whole run, never saved.
    ``video`` is set for a video clip (None for a photo): then ``detections`` hold the boxes of every sampled frame,
    each with its ``frame``.
    """

    file: str
    path: str
    width: int | None
    height: int | None
    detections: list[Detection] = field(default_factory=list)
    failure: str | None = None
    datetime: str | None = None
    timestamp_source: str | None = None
    event: ImageEvent | None = None
    video: VideoInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "file": self.file,
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "detections": [d.to_dict() for d in self.detections],
            "failure": self.failure,
            "datetime": self.datetime,
            "timestamp_source": self.timestamp_source,
            **({} if self.video is None else {"video": self.video.to_dict()}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageResult:
        """Inverse of :meth:`to_dict`; a damaged checkpoint entry raises InputError naming the image."""
        try:
            return cls(
                file=str(data["file"]),
                path=str(data["path"]),
                width=None if data.get("width") is None else int(data["width"]),
                height=None if data.get("height") is None else int(data["height"]),
                detections=[Detection.from_dict(d) for d in data.get("detections") or []],
                failure=None if data.get("failure") is None else str(data["failure"]),
                # Progress files written before times were recorded have none: the run reads them again.
                datetime=None if data.get("datetime") is None else str(data["datetime"]),
                timestamp_source=None if data.get("timestamp_source") is None else str(data["timestamp_source"]),
                video=None if data.get("video") is None else VideoInfo.from_dict(data["video"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            where = data.get("file", "?") if isinstance(data, Mapping) else "?"
            raise InputError(
                f"checkpoint entry for image {where!r} is damaged ({type(exc).__name__}: {exc}); "
                "delete the checkpoint to start the run again"
            ) from None
