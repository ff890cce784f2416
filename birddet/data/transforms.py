"""Training and evaluation transforms (albumentations), returning what `CocoDetection` hands the detector.

Every transform is a callable `t(image, boxes, labels) -> (image_tensor, boxes, labels)`:
  - `image`: uint8 `H x W x 3` numpy array; `boxes`: float `[N, 4]` xyxy pixels; `labels`: `[N]` ints;
  - returns a float32 tensor `[3, H', W']` in [0, 1] (not normalised: torchvision's detector transform does that),
    boxes `float32 [M, 4]` xyxy in the new image's pixels and `int64 [M]` labels, M <= N.

Boxes and labels travel together through albumentations (`label_fields=["labels"]`), so a box that a crop removes
takes its label with it.

Training uses ViTDet's large-scale jitter (LSJ, arXiv 2203.16527 / 2012.07177): resize the longest side to
`size * s` with `s ~ U(scale_range)`, pad (bottom/right, the model's mean) to at least `size x size`, random-crop exactly
`size x size`, then horizontal flip and colour jitter. Hue is not jittered: colour is often what tells bird
species apart. A box keeps its place only if at least `MIN_VISIBILITY` of its area and `MIN_BOX_SIDE` px per side
survive the crop: a sliver of a wing is a worse target than none.

Small-data options (`data.augment`, all off by default):
  - mosaic (YOLOv4, arXiv 2004.10934): albumentations' `Mosaic` tiles the sample with three other training images on a
    2x2 grid, each fitted whole into a `size x size` cell (letterboxed, so objects keep the scale evaluation sees),
    and crops a `size x size` view around a random centre; LSJ's scale jitter, flip and colour jitter follow. It
    shows four images' birds on varied context per step, which is what a few hundred photos lack. Like YOLO's
    `close_mosaic`, it can be switched off for the last epochs (`set_epoch`), so the model ends on whole photos.
  - copy-paste (Ghiasi et al., arXiv 2012.07177, with boxes instead of masks): birds cut from another training image,
    each with a feathered margin, are pasted where they overlap no other bird, at the scale they had relative to
    their own image.
Both need other images: `extra_images` says how many the dataset must hand over with each sample; every random
choice comes from NumPy's global RNG, which the trainer seeds per sample, so a step's data stays reproducible.

Evaluation resizes the longest side to `size` and keeps the aspect ratio, without padding: torchvision's
`GeneralizedRCNNTransform` pads batches itself, and an unpadded image lets the scale be read off its shape.
`EvalTransform.scale_for(h, w)` gives the factor; the dataset also stores it per image as `target["scale"]`.

Padding is one value everywhere: the model's normalisation mean (`pad_fill(rgb_stats)`). torchvision pads eval and
predict batches with 0 after normalising, i.e. with that mean; training pads before normalising, so its LSJ and
mosaic padding is set from the same stats (`TrainTransform.use_rgb_stats`, called once the model is built). With a
fixed fill, a weights file whose stats are not ImageNet's would train on one border colour and be tested on another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import albumentations as A
import cv2
import numpy as np
import torch

__all__ = [
    "IMAGENET_RGB_STATS",
    "EvalTransform",
    "TrainTransform",
    "build_eval_transforms",
    "build_train_transforms",
    "pad_fill",
    "paste_boxes",
    "to_tensor",
]

#: The detector's normalisation when the backbone starts from random weights and the config names no statistics
#: (`models.detector.build_detector`); here, below the detector, because `pad_fill` pads with its mean.
IMAGENET_RGB_STATS = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
#: Fraction of a box's area that must survive a crop for the box (and its label) to be kept.
MIN_VISIBILITY = 0.3
#: Boxes thinner than this many pixels after a transform are dropped (they cannot be regressed meaningfully).
MIN_BOX_SIDE = 2.0
#: Other images a mosaic needs: a 2x2 grid holds the sample and three more.
MOSAIC_EXTRA = 3
#: Copy-paste: a paste (its cut-out, margin included) may cover at most this fraction of any box already in the
#: image, so no bird is buried under another whose box and label would then sit on the wrong pixels. Coverage, not
#: IoU: a 12 px bird under a 90 px paste has an IoU under 0.02 while it is hidden whole. The cut-out carries a margin
#: of `PASTE_MARGIN` of its size, feathered to transparent, so no hard rectangle edge is learnt.
PASTE_MAX_COVER = 0.05
PASTE_MARGIN = 0.15


def pad_fill(rgb_stats: Mapping[str, Sequence[float]] | None = None) -> tuple[int, int, int]:
    """The uint8 RGB padding colour for a model normalised with `rgb_stats`: its mean, which the detector's
    normalisation turns into 0, the value torchvision pads eval and predict batches with. None means the
    detector's default stats (`IMAGENET_RGB_STATS`)."""
    if rgb_stats is None:
        rgb_stats = IMAGENET_RGB_STATS
    mean = [float(m) for m in rgb_stats["mean"]]
    if len(mean) != 3:
        raise ValueError(f"rgb_stats mean must have 3 values (R, G, B), got {mean}")
    r, g, b = (int(round(min(max(m, 0.0), 1.0) * 255)) for m in mean)
    return r, g, b


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 `HxWx3` -> float32 `[3, H, W]` in [0, 1]."""
    # np.require copies read-only arrays (e.g. from PIL) that torch.from_numpy would warn about.
    return torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).permute(2, 0, 1).float().div_(255.0)


class _AlbumentationsDetectionTransform:
    """Runs an albumentations pipeline on (image, xyxy boxes, labels) and converts the result for the detector."""

    #: True when the transform only rescales (no crop/pad/flip), so boxes map back by a plain scale factor.
    resize_only = False

    def __init__(self, pipeline: A.Compose) -> None:
        self.pipeline = pipeline

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        out = self.pipeline(image=image, bboxes=boxes, labels=labels)
        out_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        out_labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        return to_tensor(out["image"]), out_boxes, out_labels


#: An (image, xyxy boxes, labels) triple as the dataset hands other training images to the transform.
Item = tuple[np.ndarray, np.ndarray, np.ndarray]


class TrainTransform(_AlbumentationsDetectionTransform):
    """LSJ + flip + colour jitter to a fixed `size x size` square, optionally mosaic and copy-paste (module docstring).

    `t(image, boxes, labels, extra)` takes `extra_images` other training samples in `extra` (fewer are tolerated:
    mosaic then repeats the sample, copy-paste skips).
    """

    def __init__(
        self,
        pipeline: A.Compose,
        *,
        mosaic_pipeline: A.Compose | None = None,
        mosaic_fit: A.Compose | None = None,
        mosaic: float = 0.0,
        mosaic_off_epochs: int = 0,
        copy_paste: float = 0.0,
        copy_paste_max: int = 3,
        source_side: int,
    ) -> None:
        super().__init__(pipeline)
        #: The longest side a photo is first brought to (the input size times the largest scale jitter, at least
        #: the input size): a pixel cache at this size (`CocoDetection.cache_pixels`) changes no training sample.
        self.source_side = source_side
        self.mosaic_pipeline = mosaic_pipeline
        self.mosaic_fit = mosaic_fit
        self.mosaic = mosaic if mosaic_pipeline is not None else 0.0
        self.mosaic_off_epochs = mosaic_off_epochs
        self.mosaic_on = self.mosaic > 0
        self.copy_paste = copy_paste
        self.copy_paste_max = copy_paste_max

    def use_rgb_stats(self, rgb_stats: Mapping[str, Sequence[float]] | None) -> None:
        """Pad (LSJ and mosaic) with the mean of the model these samples train (`pad_fill`)."""
        fill = pad_fill(rgb_stats)
        for pipeline in (self.pipeline, self.mosaic_pipeline):
            for step in pipeline.transforms if pipeline is not None else ():
                if isinstance(step, A.PadIfNeeded | A.Mosaic):
                    step.fill = fill

    @property
    def extra_images(self) -> int:
        """How many other training samples each call wants: 3 for mosaic (while on), 1 for copy-paste."""
        return (MOSAIC_EXTRA if self.mosaic_on else 0) + (1 if self.copy_paste > 0 else 0)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Mosaic stays on for epochs `0 .. epochs - mosaic_off_epochs - 1` (YOLO's close_mosaic)."""
        self.mosaic_on = self.mosaic > 0 and epoch < epochs - self.mosaic_off_epochs

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, extra: Sequence[Item] = ()
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        extra = list(extra)
        if self.copy_paste > 0:
            source = extra.pop() if extra else None
            if source is not None and np.random.random() < self.copy_paste:
                image, boxes, labels = paste_boxes(image, boxes, labels, source, max_count=self.copy_paste_max)
        if not (self.mosaic_on and np.random.random() < self.mosaic):
            return super().__call__(image, boxes, labels)
        assert self.mosaic_pipeline is not None
        self.mosaic_pipeline.set_random_seed(int(np.random.randint(2**31)))
        # Each photo is brought to the cell size first with the area-averaging resize of whole-image training (Mosaic's
        # own resize is plain bilinear, which aliases big photos); a photo already that size (cached) is unchanged.
        tiles = [self._fit_cell(img, b, lab) for img, b, lab in [(image, boxes, labels), *extra[:MOSAIC_EXTRA]]]
        others = [{"image": img, "bboxes": b, "labels": lab} for img, b, lab in tiles[1:]]
        image, boxes, labels = tiles[0]
        out = self.mosaic_pipeline(image=image, bboxes=boxes, labels=labels, mosaic_metadata=others)
        out_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        out_labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        return to_tensor(out["image"]), out_boxes, out_labels

    def _fit_cell(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> Item:
        assert self.mosaic_fit is not None
        out = self.mosaic_fit(
            image=image, bboxes=np.asarray(boxes, np.float32).reshape(-1, 4), labels=np.asarray(labels, np.int64)
        )
        return out["image"], np.asarray(out["bboxes"], np.float32).reshape(-1, 4), np.asarray(out["labels"], np.int64)


class EvalTransform(_AlbumentationsDetectionTransform):
    """Longest side -> `size`, aspect kept, no padding; boxes map back to the original by `1 / scale_for(h, w)`."""

    resize_only = True

    def __init__(self, size: int) -> None:
        self.resize = _longest_side(size)
        super().__init__(A.Compose([self.resize], bbox_params=_bbox_params(0.0)))
        self.size = size

    def scale_for(self, height: int, width: int) -> float:
        """Resize factor applied to an image of the given original size (new longest side / old longest side)."""
        return self.size / max(height, width)

    def resize_image(self, image: np.ndarray) -> np.ndarray:
        """The image part of the transform alone (`HxWx3` uint8 or float32 in [0, 1]): what `predict` uses, so a
        photo gives the same pixels, hence the same detections, in `birddet predict` and `birddet eval`."""
        return self.resize(image=image)["image"]


def _longest_side(size: int) -> A.LongestMaxSize:
    """Longest side -> `size`. Shrinking uses pixel-area averaging: a 20-Mpx photo brought to 1024 px with plain
    bilinear sampling aliases (feathers turn to moire, small birds flicker in and out)."""
    return A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_LINEAR, area_for_downscale="image", p=1.0)


def _bbox_params(min_visibility: float) -> A.BboxParams:
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        min_visibility=min_visibility,
        min_width=MIN_BOX_SIDE,
        min_height=MIN_BOX_SIDE,
        clip=True,  # float round-off at the image edge must not make albumentations reject a valid box
        filter_invalid_bboxes=True,
    )


def _lsj_steps(size: int, lo: float, hi: float, fill: tuple[int, int, int]) -> list[A.BasicTransform]:
    """Scale by U(lo, hi), pad (bottom/right, with `fill`) to at least `size x size`, random-crop `size x size`."""
    return [
        # RandomScale's limits are offsets from 1: factor ~ U(1 + lo', 1 + hi').
        A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR, p=1.0),
        A.PadIfNeeded(min_height=size, min_width=size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=fill),
        A.RandomCrop(height=size, width=size, p=1.0),
    ]


def build_train_transforms(
    size: int,
    *,
    scale_range: Sequence[float] = (0.1, 2.0),
    hflip: float = 0.5,
    color_jitter: float = 0.4,
    mosaic: float = 0.0,
    mosaic_off_epochs: int = 0,
    copy_paste: float = 0.0,
    rgb_stats: Mapping[str, Sequence[float]] | None = None,
) -> TrainTransform:
    """ViTDet large-scale jitter to `size x size`, horizontal flip with probability `hflip`, colour jitter.

    `color_jitter` is the brightness/contrast/saturation strength (0 disables it); hue is left alone. `mosaic` and
    `copy_paste` are per-sample probabilities (0 disables them); `mosaic_off_epochs` turns mosaic off for the last
    epochs of a run (see the module docstring). Padding is the mean of `rgb_stats`, the model's normalisation
    (`pad_fill`; None = the detector's default); `TrainTransform.use_rgb_stats` changes it later.
    """
    fill = pad_fill(rgb_stats)
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {tuple(scale_range)}")
    for name, p in (("mosaic", mosaic), ("copy_paste", copy_paste)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} is a probability in [0, 1], got {p}")
    if mosaic_off_epochs < 0:
        raise ValueError(f"mosaic_off_epochs must be >= 0, got {mosaic_off_epochs}")
    finish: list[A.BasicTransform] = []
    if hflip > 0:
        finish.append(A.HorizontalFlip(p=hflip))
    if color_jitter > 0:
        cj = float(color_jitter)
        finish.append(A.ColorJitter(brightness=cj, contrast=cj, saturation=cj, hue=0.0, p=0.8))
    # Scale jitter above 1 shows the photo larger than the input square: bring it to the largest size first and
    # only shrink from there, so a sample at scale 1.4 is as sharp as one at 1.0 (upsampling a photo already
    # brought to `size` taught blurred edges where evaluation shows sharp ones).
    top = max(hi, 1.0)
    source_side = round(size * top)
    whole = [_longest_side(source_side), *_lsj_steps(size, lo / top, hi / top, fill)]
    mosaic_pipeline = mosaic_fit = None
    if mosaic > 0:
        tiles = A.Mosaic(
            grid_yx=(2, 2),
            target_size=(size, size),
            cell_shape=(size, size),
            fit_mode="contain",  # each image whole and at evaluation scale; YOLO letterboxes its mosaic tiles too
            fill=fill,
            p=1.0,
        )
        mosaic_pipeline = A.Compose(
            [tiles, *_lsj_steps(size, lo, hi, fill), *finish], bbox_params=_bbox_params(MIN_VISIBILITY)
        )
        # Tiles go through the source side as every sample does, so a pixel cache at that side gives the same tiles.
        fit = [_longest_side(source_side), _longest_side(size)] if source_side != size else [_longest_side(size)]
        mosaic_fit = A.Compose(fit, bbox_params=_bbox_params(0.0))
    return TrainTransform(
        A.Compose([*whole, *finish], bbox_params=_bbox_params(MIN_VISIBILITY)),
        mosaic_pipeline=mosaic_pipeline,
        mosaic_fit=mosaic_fit,
        mosaic=mosaic,
        mosaic_off_epochs=mosaic_off_epochs,
        copy_paste=copy_paste,
        source_side=source_side,
    )


def paste_boxes(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, source: Item, *, max_count: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste up to `max_count` boxes of `source` into `image` where they overlap no box (copy-paste with boxes).

    Each cut-out is scaled by the ratio of the two images' longest sides (a bird keeps its size relative to the
    photo), carries a `PASTE_MARGIN` margin feathered to transparent, and lands at a random spot where the whole
    cut-out covers at most `PASTE_MAX_COVER` of every box already there (earlier pastes included). Returns new arrays.
    """
    src_img, src_boxes, src_labels = source
    src_boxes = np.asarray(src_boxes, dtype=np.float32).reshape(-1, 4)
    if not len(src_boxes):
        return image, boxes, labels
    out = image.copy()
    h, w = out.shape[:2]
    scale = max(h, w) / max(src_img.shape[:2])
    all_boxes, all_labels = [*np.asarray(boxes, np.float32).reshape(-1, 4)], [*np.asarray(labels, np.int64)]
    order = np.random.permutation(len(src_boxes))[:max_count]
    for i in order:
        x0, y0, x1, y1 = src_boxes[i]
        bw, bh = (x1 - x0) * scale, (y1 - y0) * scale
        mw, mh = PASTE_MARGIN * bw, PASTE_MARGIN * bh
        pw, ph = int(round(bw + 2 * mw)), int(round(bh + 2 * mh))
        if bw < MIN_BOX_SIDE or bh < MIN_BOX_SIDE or pw >= w or ph >= h:
            continue
        # The source region with its margin (clipped to the source image), resized to the paste size.
        sx0, sy0 = max(0, int(x0 - mw / scale)), max(0, int(y0 - mh / scale))
        sx1 = min(src_img.shape[1], int(np.ceil(x1 + mw / scale)))
        sy1 = min(src_img.shape[0], int(np.ceil(y1 + mh / scale)))
        patch = cv2.resize(src_img[sy0:sy1, sx0:sx1], (pw, ph), interpolation=cv2.INTER_LINEAR)
        # Where the box sits inside the patch after the resize.
        fx, fy = pw / (sx1 - sx0), ph / (sy1 - sy0)
        inner = np.array([(x0 - sx0) * fx, (y0 - sy0) * fy, (x1 - sx0) * fx, (y1 - sy0) * fy], np.float32)
        for _ in range(10):
            px, py = int(np.random.randint(0, w - pw + 1)), int(np.random.randint(0, h - ph + 1))
            new = inner + np.array([px, py, px, py], np.float32)
            patch_box = np.array([px, py, px + pw, py + ph], np.float32)
            if not all_boxes or covered_fraction(patch_box, np.stack(all_boxes)).max() <= PASTE_MAX_COVER:
                break
        else:
            continue
        alpha = _feather(ph, pw, inner)
        region = out[py : py + ph, px : px + pw].astype(np.float32)
        out[py : py + ph, px : px + pw] = (alpha * patch + (1 - alpha) * region).round().astype(np.uint8)
        all_boxes.append(new)
        all_labels.append(int(src_labels[i]))
    return out, np.asarray(all_boxes, np.float32).reshape(-1, 4), np.asarray(all_labels, np.int64)


def _feather(h: int, w: int, inner: np.ndarray) -> np.ndarray:
    """`[h, w, 1]` alpha: 1 inside the box `inner`, falling linearly to 0 at the patch border."""
    ys, xs = np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5
    x0, y0, x1, y1 = inner
    ax = np.clip(np.minimum(xs / max(x0, 1e-3), (w - xs) / max(w - x1, 1e-3)), 0, 1)
    ay = np.clip(np.minimum(ys / max(y0, 1e-3), (h - ys) / max(h - y1, 1e-3)), 0, 1)
    return np.minimum(ay[:, None], ax[None, :])[..., None]


def covered_fraction(cover: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The fraction of each row of `boxes` (xyxy) that the xyxy rectangle `cover` lies over."""
    ix = np.clip(np.minimum(cover[2], boxes[:, 2]) - np.maximum(cover[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(cover[3], boxes[:, 3]) - np.maximum(cover[1], boxes[:, 1]), 0, None)
    area = np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6, None)
    return ix * iy / area


def build_eval_transforms(size: int) -> EvalTransform:
    """Resize the longest side to `size`, keep the aspect ratio, no padding (see module docstring)."""
    return EvalTransform(size)
