"""Sliced (tiled) inference geometry and merging: windows over a big image, boxes back to it, duplicates merged.

A survey photo 6,000 px wide resized to the detector's 1024 px shrinks a 20 px bird to 3 px. Tiling runs the
detector on overlapping `size x size` windows cut from the image in its own pixels instead, as SAHI's sliced
prediction (Akyon et al., arXiv 2202.06934), DeepForest's `predict_tile(patch_size, patch_overlap)` and birder's
sliding-window detection do. Everything here is a pure function of tensors so each step can be tested alone:

1. `window_starts` / `tile_windows`: windows in original pixels, edge windows shifted inward (never padded past
   the image), an image smaller than a tile is one window of its own size;
2. `iter_window_batches`: windows cut lazily, a batch at a time, as views of the decoded image (memory stays one
   batch of windows beside the image, however big the image is), or read one by one from a `WindowSource` (a
   raster never decoded whole, `birddet.data.rasters`), which may say a window holds no data: it is skipped;
3. `to_image_coords`: a window's boxes plus its offset (exact: the detector already undid its own resize);
4. `edge_cut_mask` + `drop_cut_duplicates`: a bird cut by a window's inner edge is found whole by the
   neighbouring window (the overlap guarantees it for birds smaller than the overlap), so the cut part goes;
5. `merge_detections`: class-aware NMS (torchvision's `batched_nms`) or SAHI's greedy non-maximum merging
   (`nmm`: matched boxes fuse into their union with the best score), matched by IoU or by IoS (intersection over
   the smaller box, which also catches a part-of-a-bird box inside the whole-bird box).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import cv2
import numpy as np
import torch
from torchvision.ops import batched_nms, box_area

from birddet.errors import InputError

__all__ = [
    "TileOptions",
    "WindowSource",
    "drop_cut_duplicates",
    "edge_cut_mask",
    "iter_window_batches",
    "match_matrix",
    "merge_detections",
    "tile_windows",
    "tiled_detect",
    "to_image_coords",
    "window_starts",
]

MergeMethod = Literal["nms", "nmm"]
MatchMetric = Literal["iou", "ios"]

#: A box this close (in window pixels, or a fraction of the tile, whichever is larger) to an inner window edge counts
#: as cut by it: predicted boxes of a cut bird rarely end exactly on the edge.
EDGE_MARGIN_PX = 2.0
EDGE_MARGIN_FRAC = 0.005


@dataclass(frozen=True)
class TileOptions:
    """How to tile one image and merge what the windows find.

    `size`: window side in original pixels (the detector's `image_size` keeps pixels 1:1); `overlap`: fraction of
    `size` shared by neighbouring windows (a bird smaller than `overlap * size` is whole in at least one window);
    `full_image`: also run the whole image resized, which finds birds bigger than a window; `merge` / `match` /
    `match_threshold`: how duplicates from overlapping windows are resolved; `batch_size`: windows per forward.

    IoS matching joins the two halves of a bird cut between windows, but it also lets one large box (a poor
    full-image detection over a flock) swallow every small bird inside it: on the quickstart mosaic check it cut
    AP50 from 0.88 (IoU) to 0.44 (benchmarks/tiling.py). Keep IoU, the default, for flocks.
    """

    size: int
    overlap: float = 0.25
    full_image: bool = True
    merge: MergeMethod = "nms"
    match: MatchMetric = "iou"
    match_threshold: float = 0.5
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.size < 32:
            raise InputError(f"--tile must be at least 32 px, got {self.size}")
        if not 0.0 <= self.overlap < 1.0:
            raise InputError(f"--tile-overlap must be in [0, 1), got {self.overlap}")
        if self.merge not in ("nms", "nmm"):
            raise InputError(f"--merge must be nms or nmm, got {self.merge!r}")
        if self.match not in ("iou", "ios"):
            raise InputError(f"--merge-match must be iou or ios, got {self.match!r}")
        if not 0.0 < self.match_threshold <= 1.0:
            raise InputError(f"--merge-threshold must be in (0, 1], got {self.match_threshold}")
        if self.batch_size < 1:
            raise InputError(f"tile batch size must be at least 1, got {self.batch_size}")

    def settings(self) -> dict[str, object]:
        """The fields that change results (for predict's resume check and reports)."""
        return {
            "tile": self.size,
            "tile_overlap": self.overlap,
            "full_image": self.full_image,
            "merge": self.merge,
            "merge_match": self.match,
            "merge_threshold": self.match_threshold,
        }


@runtime_checkable
class WindowSource(Protocol):
    """An image too big to decode whole, read a window at a time (`birddet.data.rasters.RasterImage`).

    `shape` is `(3, H, W)`; `read_window((x0, y0, x1, y1))` gives uint8 `[3, h, w]`, or None when the window holds
    no data (nodata, alpha-masked: no model runs on it); `overview(longest)` the whole image shrunk to at most
    `longest` px, for the full-image pass.
    """

    @property
    def shape(self) -> tuple[int, int, int]: ...

    def read_window(self, window: Sequence[int]) -> torch.Tensor | None: ...

    def overview(self, longest: int) -> torch.Tensor: ...


# -- windows ----------------------------------------------------------------------------------------------------------
def window_starts(length: int, size: int, overlap: float) -> list[int]:
    """Start offsets of windows of `size` covering `[0, length)` with at least `overlap * size` shared.

    The stride is `size - round(overlap * size)`; the last window is shifted inward to end exactly at `length`
    (never padded past the image), so it may overlap its neighbour more than the others do. A side no longer than
    `size` gets the single start 0 (the window is then the whole side).
    """
    if length <= 0 or size <= 0:
        raise ValueError(f"length and size must be positive, got {length}, {size}")
    if length <= size:
        return [0]
    stride = max(1, size - round(overlap * size))
    starts = list(range(0, length - size, stride))
    starts.append(length - size)
    return starts


def tile_windows(width: int, height: int, size: int, overlap: float) -> torch.Tensor:
    """`[N, 4]` int64 windows `x0, y0, x1, y1` in row-major order; each is `size` square, or the image side when
    that is shorter (an image smaller than a tile is one window, itself)."""
    xs = window_starts(width, size, overlap)
    ys = window_starts(height, size, overlap)
    w, h = min(size, width), min(size, height)
    return torch.tensor([[x, y, x + w, y + h] for y in ys for x in xs], dtype=torch.int64)


def iter_window_batches(
    image: torch.Tensor | WindowSource, windows: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
    """Yield `(windows[i:i+batch_size], crops)`: each crop is a view `image[:, y0:y1, x0:x1]` (no copy).

    Nothing is cut before its batch is requested and the detector converts a batch's views as it runs them, so
    peak memory is one batch of windows next to the decoded image, whatever the image's size. From a
    `WindowSource` the crops are read as the batch fills, and windows without data are left out (a batch holds
    `batch_size` windows with data, the last one fewer): memory is one batch of windows, the image is never whole.
    """
    if not isinstance(image, torch.Tensor):
        kept: list[torch.Tensor] = []
        crops: list[torch.Tensor] = []
        for window in windows:
            crop = image.read_window(window.tolist())
            if crop is not None:
                kept.append(window)
                crops.append(crop)
            if len(crops) == batch_size:
                yield torch.stack(kept), crops
                kept, crops = [], []
        if crops:
            yield torch.stack(kept), crops
        return
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        yield chunk, [image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in chunk.tolist()]


def to_image_coords(boxes: torch.Tensor, window: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Boxes `[N, 4]` xyxy in a window's pixels -> the image's pixels (add the window's top-left corner)."""
    x0, y0 = float(window[0]), float(window[1])
    return boxes + boxes.new_tensor([x0, y0, x0, y0])


def edge_cut_mask(
    boxes: torch.Tensor, window: torch.Tensor | Sequence[int], image_size: tuple[int, int], margin: float
) -> torch.Tensor:
    """`[N]` bool: which boxes (image pixels) touch, within `margin`, an edge of `window` that is inside the image.

    A window edge that lies on the image border cuts nothing, so boxes along the image border are never flagged.
    """
    x0, y0, x1, y1 = (float(v) for v in window)
    width, height = image_size
    cut = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    if x0 > 0:
        cut |= boxes[:, 0] <= x0 + margin
    if y0 > 0:
        cut |= boxes[:, 1] <= y0 + margin
    if x1 < width:
        cut |= boxes[:, 2] >= x1 - margin
    if y1 < height:
        cut |= boxes[:, 3] >= y1 - margin
    return cut


# -- matching and merging ---------------------------------------------------------------------------------------------
def _intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def match_matrix(a: torch.Tensor, b: torch.Tensor, metric: MatchMetric) -> torch.Tensor:
    """`[len(a), len(b)]` overlap: IoU, or IoS = intersection / the smaller box's area (SAHI's `IOS`).

    torchvision's `box_iou` has no IoS variant; both share the same intersection here so they agree exactly.
    """
    inter = _intersection(a, b)
    area_a, area_b = box_area(a), box_area(b)
    if metric == "iou":
        denom = area_a[:, None] + area_b[None, :] - inter
    else:
        denom = torch.min(area_a[:, None], area_b[None, :])
    return inter / denom.clamp(min=1e-9)


#: Most (cut box, whole box) pairs `drop_cut_duplicates` compares at once: about 16 MB per float temporary.
MAX_PAIRS = 1 << 22


def drop_cut_duplicates(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    cut: torch.Tensor,
    threshold: float = 0.5,
    chunk: int = 1024,
) -> torch.Tensor:
    """`[N]` bool keep-mask: a cut box goes when an uncut box of the same label holds it (IoS >= `threshold`).

    The cut box is part of a bird; the uncut one, from a window that holds the bird whole, contains that part, so
    their intersection over the smaller (cut) box is near 1. A cut box with no such partner is kept: it is the only
    record of that bird (e.g. a bird bigger than the overlap). Rows are compared `chunk` at a time, fewer when there
    are many whole boxes (at most `MAX_PAIRS` pairs at once), so the tens of thousands of boxes of an orthomosaic
    never need an N x N matrix: 1,024 rows against a 1.6-Gpx orthomosaic's boxes raised predict's peak RSS from 1.21 to
    1.76 GB.
    """
    keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    cut_idx = torch.nonzero(cut).flatten()
    whole_idx = torch.nonzero(~cut).flatten()
    if len(cut_idx) == 0 or len(whole_idx) == 0:
        return keep
    whole_boxes, whole_labels = boxes[whole_idx], labels[whole_idx]
    chunk = max(1, min(chunk, MAX_PAIRS // len(whole_idx)))
    for start in range(0, len(cut_idx), chunk):
        rows = cut_idx[start : start + chunk]
        ios = match_matrix(boxes[rows], whole_boxes, "ios")
        same = labels[rows][:, None] == whole_labels[None, :]
        covered = ((ios >= threshold) & same).any(dim=1)
        keep[rows[covered]] = False
    return keep


def _greedy(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, metric: MatchMetric, threshold: float, merge: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy suppression or merging in score order; returns (kept indices, their output boxes).

    With `merge`, each kept box absorbs the not-yet-taken boxes of its class that match it (not transitively: a
    match of a match is judged against its own leader), becoming their union, as SAHI's `greedy_nmm` does. Each
    step compares one box against all, so memory stays O(N) for thousands of boxes.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    taken = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    kept: list[int] = []
    out_boxes: list[torch.Tensor] = []
    for i in order.tolist():
        if taken[i]:
            continue
        taken[i] = True
        candidates = torch.nonzero(~taken & (labels == labels[i])).flatten()
        box = boxes[i]
        if len(candidates):
            overlap = match_matrix(box[None], boxes[candidates], metric)[0]
            matched = candidates[overlap >= threshold]
            taken[matched] = True
            if merge and len(matched):
                group = torch.cat([box[None], boxes[matched]])
                box = torch.cat([group[:, :2].min(dim=0).values, group[:, 2:].max(dim=0).values])
        kept.append(i)
        out_boxes.append(box)
    if not kept:
        return torch.zeros(0, dtype=torch.int64), boxes[:0]
    return torch.tensor(kept, dtype=torch.int64), torch.stack(out_boxes)


def merge_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: MergeMethod = "nms",
    metric: MatchMetric = "iou",
    threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Resolve duplicates from overlapping windows; returns `(boxes, scores, labels)` sorted by score.

    `nms` + `iou` is torchvision's `batched_nms` (class-aware); `nms` + `ios` and `nmm` run the greedy loop above.
    Scores are never changed: a merged box keeps its leader's (the best) score.
    """
    if method not in ("nms", "nmm") or metric not in ("iou", "ios"):
        raise InputError(f"merge must be nms|nmm and match iou|ios, got {method!r}, {metric!r}")
    if len(boxes) == 0:
        return boxes, scores, labels
    if method == "nms" and metric == "iou":
        keep = batched_nms(boxes, scores, labels, threshold)  # sorted by decreasing score
        return boxes[keep], scores[keep], labels[keep]
    keep, merged = _greedy(boxes, scores, labels, metric, threshold, merge=method == "nmm")
    return merged, scores[keep], labels[keep]


# -- one image, end to end --------------------------------------------------------------------------------------------
Detect = Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]]


def _resize_longest(image: torch.Tensor, longest: int) -> torch.Tensor:
    """Float `[3, h, w]` in [0, 1] with the longest side at most `longest`, for the full-image pass.

    Shrinks with pixel-area averaging (OpenCV's INTER_AREA, as `birddet eval` and untiled predict resize) one
    channel plane at a time: each plane of a `[3, H, W]` tensor is contiguous, so nothing image-sized is copied.
    Handing the whole image to the detector instead would convert it to float at full size first (3.6 GB for a
    20,000 x 15,000 survey image).
    """
    h, w = image.shape[-2:]
    scale = min(1.0, longest / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # OpenCV's (width, height)
    planes = []
    for c in range(image.shape[0]):
        plane = image[c].cpu().numpy()
        planes.append(plane if size == (w, h) else cv2.resize(plane, size, interpolation=cv2.INTER_AREA))
    out = torch.from_numpy(np.stack(planes))
    return out.float() / 255.0 if out.dtype == torch.uint8 else out.float()


def tiled_detect(
    image: torch.Tensor | WindowSource,
    detect: Detect,
    options: TileOptions,
    *,
    full_image_size: int,
    max_dets: int | None = None,
) -> dict[str, torch.Tensor]:
    """Detect in one image `[3, H, W]` (uint8, or float in [0, 1], or a `WindowSource`) window by window; boxes in
    the image's pixels.

    `detect(crops)` is the detector on a list of `[3, h, w]` crops (uint8 or float views of `image`), returning
    torchvision's per-image dicts with `boxes` in each crop's pixels, `scores` and `labels`. Windows go through `detect` `options.batch_size` at a
    time; then, when `options.full_image` is set and the image needs more than one window, the whole image
    resized to `full_image_size` on its longest side. Cut boxes with a whole partner are dropped, duplicates are
    merged, and the best `max_dets` (all when None) are returned sorted by score.
    """
    height, width = image.shape[-2:]
    windows = tile_windows(width, height, options.size, options.overlap)
    margin = max(EDGE_MARGIN_PX, EDGE_MARGIN_FRAC * options.size)
    boxes, scores, labels, cut = [], [], [], []
    for chunk, crops in iter_window_batches(image, windows, options.batch_size):
        for window, out in zip(chunk, detect(crops), strict=True):
            b = to_image_coords(out["boxes"].float().cpu(), window)
            boxes.append(b)
            scores.append(out["scores"].float().cpu())
            labels.append(out["labels"].cpu())
            cut.append(edge_cut_mask(b, window, (width, height), margin))
    if options.full_image and len(windows) > 1:
        small = (
            _resize_longest(image, full_image_size)
            if isinstance(image, torch.Tensor)
            else image.overview(full_image_size)
        )
        out = detect([small])[0]
        sx, sy = width / small.shape[-1], height / small.shape[-2]
        b = out["boxes"].float().cpu() * torch.tensor([sx, sy, sx, sy])
        boxes.append(b)
        scores.append(out["scores"].float().cpu())
        labels.append(out["labels"].cpu())
        cut.append(torch.zeros(len(b), dtype=torch.bool))
    if not boxes:  # every window of a WindowSource was empty, and no full-image pass
        return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    all_boxes, all_scores = torch.cat(boxes), torch.cat(scores)
    all_labels, all_cut = torch.cat(labels), torch.cat(cut)
    keep = drop_cut_duplicates(all_boxes, all_labels, all_cut, options.match_threshold)
    merged = merge_detections(
        all_boxes[keep],
        all_scores[keep],
        all_labels[keep],
        method=options.merge,
        metric=options.match,
        threshold=options.match_threshold,
    )
    out_boxes, out_scores, out_labels = merged
    out_boxes[:, 0::2] = out_boxes[:, 0::2].clamp(0, width)
    out_boxes[:, 1::2] = out_boxes[:, 1::2].clamp(0, height)
    order = torch.argsort(out_scores, descending=True, stable=True)
    if max_dets is not None:
        order = order[:max_dets]
    return {"boxes": out_boxes[order], "scores": out_scores[order], "labels": out_labels[order]}
