"""The bird detector: birddet's ViT + simple feature pyramid feeding torchvision's Faster R-CNN.

Everything after the pyramid is torchvision's (`FasterRCNN`, `RPNHead`, `AnchorGenerator`, `MultiScaleRoIAlign`,
`TwoMLPHead` / `FastRCNNConvFCHead`, `FastRCNNPredictor`); this module only assembles the parts from a
`ModelConfig` and maps torchvision's contiguous labels (1..K, 0 = background) to the dataset's COCO category ids.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.models.convnext import LayerNorm2d
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import initLevelMapper

from birddet.backbone.presets import get_preset
from birddet.backbone.vit import ViT
from birddet.backbone.weights import load_backbone
from birddet.config import Config
from birddet.data.transforms import IMAGENET_RGB_STATS  # re-exported: the default stats lived here before
from birddet.errors import InputError
from birddet.models.box_loss import set_box_loss
from birddet.models.box_refine import set_box_refinement
from birddet.models.ignore_regions import ignore_crowd_regions
from birddet.models.pyramid import SimpleFeaturePyramid
from birddet.models.tta import detect_as_configured, set_square
from birddet.pipeline.tiling import TileOptions, WindowSource, tiled_detect


class ViTDetBackbone(nn.Module):
    """ViT neck -> simple feature pyramid. Input: normalised, padded images [B, 3, H, W] (H, W multiples of 16).
    Output: OrderedDict `p2`..`p6` of [B, out_channels, H/stride, W/stride]."""

    def __init__(self, body: ViT, pyramid: SimpleFeaturePyramid) -> None:
        super().__init__()
        self.body = body
        self.pyramid = pyramid
        self.out_channels = pyramid.out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.pyramid(self.body.detection_features(x)[ViT.feature_name])


@dataclass
class Prediction:
    """Detections for one image in its original pixel coordinates (as displayed, after EXIF orientation)."""

    boxes: torch.Tensor  # [N, 4] xyxy
    scores: torch.Tensor  # [N]
    category_ids: list[int]  # COCO ids of the training dataset
    names: list[str]
    image_size: tuple[int, int]  # (width, height)

    def boxes_xywh(self) -> torch.Tensor:
        """COCO's [x, y, width, height] boxes."""
        b = self.boxes.clone()
        b[:, 2:] -= b[:, :2]
        return b

    def to_coco(self, image_id: int) -> list[dict[str, Any]]:
        """COCO results entries `{image_id, category_id, bbox, score}`."""
        return coco_results(image_id, self.boxes, self.scores, self.category_ids)


def rescale_boxes(boxes: torch.Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> torch.Tensor:
    """xyxy boxes in an image of size `from_hw` -> the same boxes in that image resized to `to_hw`, clipped to it.

    Each axis has its own factor: rounding a 1500x500 photo to 128x43 px scales x and y by slightly different
    amounts, and one factor for both would shift boxes near the bottom edge.
    """
    (h, w), (oh, ow) = from_hw, to_hw
    out = boxes.float().cpu().clone()
    out[:, 0::2] = (out[:, 0::2] * (ow / w)).clamp(0, ow)
    out[:, 1::2] = (out[:, 1::2] * (oh / h)).clamp(0, oh)
    return out


def coco_results(
    image_id: int, boxes_xyxy: torch.Tensor, scores: torch.Tensor, category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Detections as COCO results entries: `bbox` is [x, y, width, height] in pixels."""
    xywh = boxes_xyxy.float().clone()
    xywh[:, 2:] -= xywh[:, :2]
    return [
        {"image_id": image_id, "category_id": int(c), "bbox": [round(v, 3) for v in box], "score": round(s, 5)}
        for box, s, c in zip(xywh.tolist(), scores.float().tolist(), category_ids)
    ]


ImageInput = Image.Image | torch.Tensor | str | os.PathLike


class BirdDetector(nn.Module):
    """A torchvision `FasterRCNN` plus the dataset's categories and the resolved config that built it.

    `forward(images, targets)` is torchvision's contract: a list of float [3, H, W] images in [0, 1] and, in
    training, targets with `boxes` (xyxy, pixels) and `labels` (1..K); it returns the four losses in training
    mode and per-image dicts of boxes/labels/scores in eval mode. `predict` is the user-facing inference call.

    Inference follows the config wherever it runs (validation, eval, predict, the ONNX runtime): in eval mode the
    network's resize square is `model.test_size` when set (`train()` switches it back), and `model.tta: flip`
    and `model.tta_sizes` fuse the detections of each image, its mirror and other squares (`birddet.models.tta`).
    """

    def __init__(self, model: FasterRCNN, categories: dict[int, str], config: Config) -> None:
        from birddet.data.categories import CategoryMap

        super().__init__()
        self.model = model
        self.categories = dict(sorted((int(k), str(v)) for k, v in categories.items()))
        self.config = config
        # Labels <-> COCO ids go through the one `CategoryMap` the datasets use: a category id 0 is label 1, never
        # torchvision's background label 0.
        self.category_map = CategoryMap.from_dict(self.categories)
        self.train(self.training)  # the transform's square for this mode

    def train(self, mode: bool = True) -> BirdDetector:
        """Switch mode, and the transform's square with it: `image_size` in training, `test_size` at inference."""
        super().train(mode)
        m = self.config.model
        transform = getattr(self.model, "transform", None)  # the ONNX runtime's graph has its size built in
        if m.test_size is not None and transform is not None:
            side = m.input_size if mode else m.test_square
            set_square(transform, side)
        return self

    @property
    def label_to_category(self) -> list[int]:
        """COCO id of each label, indexed by label; index 0 (background, never in the model's output) holds -1."""
        return [-1, *self.category_map.coco_ids]

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def category_to_label(self, category_id: int) -> int:
        """The contiguous label (1..K) of a COCO category id; `InputError` for an id the model does not know."""
        return self.category_map.to_label(category_id)

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        if not self.training and (self.config.model.tta == "flip" or self.config.model.tta_sizes):
            return detect_as_configured(self.model, images, self.config.model)
        factors = self.config.data.augment.multi_scale
        if not (self.training and factors):
            return self.model(images, targets)
        # Multi-scale training: torchvision's transform resizes (and pads) the whole batch to the chosen size, so the
        # ViT, anchors and RoI pooling see it as they would a model built for that size. The choice comes from torch's
        # global RNG, which the trainer seeds and saves for resume.
        factor = float(factors[int(torch.randint(len(factors), ()))])
        t = self.model.transform
        saved = (t.min_size, t.max_size, t.size_divisible)
        t.min_size = tuple(_round32(m * factor) for m in saved[0])
        t.max_size = _round32(saved[1] * factor)
        if saved[2] > 32:  # the fixed square (size_divisible is the input size) scales with it
            t.size_divisible = _round32(saved[2] * factor)
        try:
            return self.model(images, targets)
        finally:
            t.min_size, t.max_size, t.size_divisible = saved

    @torch.no_grad()
    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        conf: float = 0.05,
        batch_size: int = 4,
        amp: bool = False,
        tile: int | TileOptions | None = None,
        tile_overlap: float = 0.25,
        full_image: bool = True,
        merge: str = "nms",
        merge_match: str = "iou",
        merge_threshold: float = 0.5,
        max_dets: int | None = None,
    ) -> list[Prediction]:
        """Detect birds in PIL images, image paths or tensors ([3, H, W], uint8 or float in [0, 1]).

        Returns one `Prediction` per image with boxes in that image's pixel coordinates and scores >= `conf`.
        Each image is first resized exactly as `birddet eval` resizes it (`EvalTransform.resize_image`), so a photo
        gets the same detections from both, and a 20-Mpx photo never reaches the model at full size.

        `tile=SIZE` (or a `TileOptions`) switches to sliced inference for big images with small birds: overlapping
        SIZE x SIZE windows in the image's own pixels, `batch_size` windows per forward, plus the whole image
        resized when `full_image` is set, merged by class-aware `merge` ("nms" or greedy "nmm") with `merge_match`
        ("iou" or "ios") at `merge_threshold` (see `birddet.pipeline.tiling`). `max_dets` caps the boxes per image
        (`box_cap`: None means the config's `detections_per_img`, tiled or not): untiled it replaces
        `model.roi_heads.detections_per_img` for this call (and lifts the RPN's test-time proposal count to at least
        as many, or 1,000 birds could never come out of 300 proposals); tiled, each window keeps the config's cap
        and the merged result is cut to the cap.
        """
        from birddet.data.transforms import build_eval_transforms

        single = isinstance(images, Image.Image | torch.Tensor | str | os.PathLike)
        items = [images] if single else list(images)
        if max_dets is not None and max_dets < 1:
            raise InputError(f"max_dets must be at least 1, got {max_dets}")
        if isinstance(tile, int):
            tile = TileOptions(
                size=tile,
                overlap=tile_overlap,
                full_image=full_image,
                merge=merge,  # type: ignore[arg-type]
                match=merge_match,  # type: ignore[arg-type]
                match_threshold=merge_threshold,
                batch_size=batch_size,
            )
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        resize = build_eval_transforms(self.config.model.inference_size).resize_image

        def detect(crops: Sequence[ImageInput]) -> list[dict[str, torch.Tensor]]:
            """Resize each image as `birddet eval` does, run the model, return boxes in each input's pixels."""
            arrays = [_to_array(c) for c in crops]
            tensors = [_array_to_tensor(resize(a)).to(device) for a in arrays]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                outputs = self(tensors)
            return [
                {**out, "boxes": rescale_boxes(out["boxes"], tuple(t.shape[-2:]), a.shape[:2])}
                for a, t, out in zip(arrays, tensors, outputs)
            ]

        try:
            with self.inference_caps(conf, None if tile is not None else max_dets):
                results: list[Prediction] = []
                if tile is not None:
                    for item in items:
                        image = _image_tensor(item)
                        out = tiled_detect(
                            image,
                            detect,
                            tile,
                            full_image_size=self.config.model.inference_size,
                            max_dets=self.box_cap(max_dets),
                        )
                        results.append(self._prediction(out, tuple(image.shape[-2:]), conf))
                    return results
                for start in range(0, len(items), batch_size):
                    batch = items[start : start + batch_size]
                    arrays = [_to_array(x) for x in batch]
                    for a, out in zip(arrays, detect(arrays)):
                        results.append(self._prediction(out, a.shape[:2], conf))
                return results
        finally:
            self.train(was_training)

    def box_cap(self, max_dets: int | None = None) -> int:
        """Boxes kept per image by `predict` and `birddet eval`, tiled or not: `max_dets` when given, else the
        config's `model.roi_heads.detections_per_img` (the cap the model was trained and validated with)."""
        return int(max_dets) if max_dets is not None else int(self.config.model.roi_heads.detections_per_img)

    @contextlib.contextmanager
    def inference_caps(self, conf: float, max_dets: int | None) -> Iterator[None]:
        """Lower the box score threshold to `conf` and, with `max_dets`, set the per-image box cap (lifting the
        RPN's test-time proposals to at least as many) while the block runs; the config's values come back after."""
        heads, rpn = self.model.roi_heads, self.model.rpn
        saved = (heads.score_thresh, heads.detections_per_img, dict(rpn._post_nms_top_n))
        heads.score_thresh = min(heads.score_thresh, conf)
        if max_dets is not None:
            heads.detections_per_img = max_dets
            rpn._post_nms_top_n["testing"] = max(rpn._post_nms_top_n["testing"], max_dets)
        try:
            yield
        finally:
            heads.score_thresh, heads.detections_per_img = saved[0], saved[1]
            rpn._post_nms_top_n = saved[2]

    def _prediction(self, out: dict[str, torch.Tensor], image_hw: tuple[int, int], conf: float) -> Prediction:
        """`out`'s boxes are already in the image's pixels (`image_hw`)."""
        keep = out["scores"] >= conf
        labels = out["labels"][keep].tolist()
        cats = [self.category_map.to_coco_id(label) for label in labels]
        return Prediction(
            boxes=out["boxes"][keep].float().cpu(),
            scores=out["scores"][keep].float().cpu(),
            category_ids=cats,
            names=[self.categories[c] for c in cats],
            image_size=(int(image_hw[1]), int(image_hw[0])),
        )


def _round32(size: float) -> int:
    """The nearest multiple of 32 (at least 32): the ViT's patch grid and the pyramid's strides need it."""
    return max(32, int(round(size / 32)) * 32)


def _to_array(image: ImageInput, max_pixels: int | None = None) -> np.ndarray:
    """`HxWx3` uint8 (PIL images, paths, uint8 tensors) or float32 in [0, 1] (float tensors) for the eval resize."""
    if isinstance(image, np.ndarray):  # already converted (predict's untiled batches)
        return image
    if isinstance(image, str | os.PathLike):
        from birddet.data.images import MAX_IMAGE_PIXELS, load_image

        image = load_image(Path(image), max_pixels=max_pixels or MAX_IMAGE_PIXELS)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise InputError(f"image tensors must be [3, H, W], got {list(image.shape)}")
        dtype = torch.uint8 if image.dtype == torch.uint8 else torch.float32
        return image.detach().to("cpu", dtype).permute(1, 2, 0).contiguous().numpy()
    raise InputError(f"cannot read an image from {type(image).__name__}; pass a PIL image, a path or a tensor")


def _array_to_tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.uint8:
        from birddet.data.transforms import to_tensor

        return to_tensor(array)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()


def _image_tensor(image: ImageInput) -> torch.Tensor:
    """`[3, H, W]` as decoded, for tiling: uint8 for files and PIL images, a tensor as given. Windows are cut from
    it as views and converted one batch at a time, so a huge image is never copied whole. A `WindowSource` (a
    raster, `birddet.data.rasters.RasterImage`) is passed on as it is: its windows are read one by one."""
    if isinstance(image, WindowSource):
        return image  # type: ignore[return-value]
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise InputError(f"image tensors must be [3, H, W], got {list(image.shape)}")
        return image
    from birddet.data.images import TILED_MAX_IMAGE_PIXELS

    return torch.from_numpy(_to_array(image, TILED_MAX_IMAGE_PIXELS)).permute(2, 0, 1)


# -- assembly -------------------------------------------------------------------------------------------------
def build_backbone_body(cfg: Config, *, load_weights: bool = True) -> tuple[ViT, dict[str, list[float]] | None]:
    """The ViT for the detector, from the birder file in `model.backbone.weights` or random init.

    The final norm and the classification head are not used by detection features, so they are dropped (the
    species classifier is loaded separately, as its own frozen copy). Records the pretraining size in the config
    so that a checkpoint rebuilds a network with the same position-embedding grid.
    """
    bcfg = cfg.model.backbone
    rgb_stats = None
    if bcfg.weights and load_weights:
        body, info = load_backbone(bcfg.weights, network=bcfg.preset)
        bcfg.pretrain_size = list(body.image_size)
        rgb_stats = info.rgb_stats
    else:
        size = bcfg.pretrain_size or [cfg.model.image_size, cfg.model.image_size]
        body = ViT(get_preset(bcfg.preset), num_classes=0, image_size=(int(size[0]), int(size[1])))
        bcfg.pretrain_size = list(body.image_size)
    body.norm = nn.Identity()
    body.classifier = nn.Identity()
    body.num_classes = 0
    body.freeze(bcfg.freeze_blocks)
    body.set_grad_checkpointing(bcfg.grad_checkpointing)
    try:
        body.set_window_attention(bcfg.window_size, bcfg.global_blocks)
    except ValueError as exc:
        raise InputError(
            f"model.backbone.window_size={bcfg.window_size} / global_blocks={bcfg.global_blocks}: {exc}; "
            "set window_size to 0 (global) or a positive patch count, and global_blocks to indices of existing blocks"
        ) from None
    return body, rgb_stats


def _box_head(cfg: Config, channels: int) -> tuple[nn.Module, int]:
    rh = cfg.model.roi_heads
    r = rh.roi_output_size
    if rh.box_head == "2mlp":
        return TwoMLPHead(channels * r * r, rh.representation_size), rh.representation_size
    if rh.box_head == "4conv1fc":
        head = FastRCNNConvFCHead((channels, r, r), [rh.conv_dim] * 4, [rh.representation_size], norm_layer=LayerNorm2d)
        return head, rh.representation_size
    raise InputError(f"model.roi_heads.box_head must be '2mlp' or '4conv1fc', got {rh.box_head!r}")


def fixed_scale_roi_align(strides: dict[str, int], output_size: int, sampling_ratio: int) -> MultiScaleRoIAlign:
    """torchvision's `MultiScaleRoIAlign` with its level scales set from the pyramid's strides.

    Left alone, the pooler infers the scales from the first batch it sees (feature size over the largest unpadded
    image size) and caches them. With our padding to a fixed square, a landscape first batch makes it read the
    stride-8 level of a 192x108 image as stride 4, and every later batch is pooled from the wrong place. The
    strides are known when the detector is built, so the answer never depends on what the model saw first.
    """
    pool = MultiScaleRoIAlign(list(strides), output_size=output_size, sampling_ratio=sampling_ratio)
    levels = [int(math.log2(s)) for s in strides.values()]
    if any(2**k != s for k, s in zip(levels, strides.values())) or levels != list(range(levels[0], levels[-1] + 1)):
        raise InputError(f"RoI pooling needs pyramid strides that double level by level, got {dict(strides)}")
    pool.scales = [1.0 / s for s in strides.values()]
    pool.map_levels = initLevelMapper(
        levels[0], levels[-1], canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level
    )
    return pool


def build_detector(cfg: Config, categories: dict[int, str], *, load_weights: bool = True) -> BirdDetector:
    """Assemble the detector described by `cfg` for the given COCO categories (id -> name).

    `cfg` is copied and resolved (pretraining size, normalisation statistics) so the detector's `config` rebuilds
    the same network later without the original weights file (`load_weights=False`).
    """
    if not categories:
        raise InputError("the detector needs at least one category; the dataset's 'categories' list is empty")
    cfg = copy.deepcopy(cfg)
    m = cfg.model
    square = m.fixed_square and m.min_size is None and m.max_size is None
    if square and m.image_size % 32:
        raise InputError(f"model.image_size must be a multiple of 32 for a fixed square input, got {m.image_size}")
    for name, side in [("test_size", m.test_size), *(("tta_sizes", side) for side in m.tta_sizes)]:
        if side is not None and not (square and side % 32 == 0):
            raise InputError(
                f"model.{name}={side}: a test size needs the fixed square input (model.fixed_square with "
                "min_size/max_size null) and a multiple of 32; leave it out otherwise"
            )
    body, file_stats = build_backbone_body(cfg, load_weights=load_weights)
    m.rgb_stats = m.rgb_stats or file_stats or IMAGENET_RGB_STATS
    p = m.pyramid
    pyramid = SimpleFeaturePyramid(
        body.hidden_dim,
        in_stride=body.patch_size,
        out_channels=p.out_channels,
        scale_factors=p.scale_factors,
        top_block=p.top_block,
    )
    levels = pyramid.level_names
    if len(m.rpn.anchor_sizes) != len(levels):
        raise InputError(
            f"model.rpn.anchor_sizes has {len(m.rpn.anchor_sizes)} sizes but the pyramid has {len(levels)} levels "
            f"({', '.join(levels)}); give one anchor size per level"
        )
    anchors = AnchorGenerator(
        sizes=tuple((int(s),) for s in m.rpn.anchor_sizes),
        aspect_ratios=(tuple(float(a) for a in m.rpn.aspect_ratios),) * len(levels),
    )
    roi_levels = [name for name in levels if not (p.top_block and name == levels[-1])]
    rh = m.roi_heads
    box_head, rep = _box_head(cfg, p.out_channels)
    min_size = m.min_size or m.image_size
    max_size = m.max_size or m.image_size
    # torchvision pads a batch up to a multiple of size_divisible; with the longest side resized to image_size,
    # a divisor of image_size itself pads every image to the same square.
    size_divisible = m.image_size if square else 32
    model = FasterRCNN(
        ViTDetBackbone(body, pyramid),
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        image_mean=list(m.rgb_stats["mean"]),
        image_std=list(m.rgb_stats["std"]),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(p.out_channels, len(m.rpn.aspect_ratios), conv_depth=m.rpn.conv_depth),
        rpn_pre_nms_top_n_train=m.rpn.pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=m.rpn.pre_nms_top_n_test,
        rpn_post_nms_top_n_train=m.rpn.post_nms_top_n_train,
        rpn_post_nms_top_n_test=m.rpn.post_nms_top_n_test,
        rpn_nms_thresh=m.rpn.nms_thresh,
        rpn_fg_iou_thresh=m.rpn.fg_iou_thresh,
        rpn_bg_iou_thresh=m.rpn.bg_iou_thresh,
        rpn_batch_size_per_image=m.rpn.batch_size_per_image,
        rpn_positive_fraction=m.rpn.positive_fraction,
        rpn_score_thresh=m.rpn.score_thresh,
        box_roi_pool=fixed_scale_roi_align(
            {name: pyramid.strides[name] for name in roi_levels}, rh.roi_output_size, rh.sampling_ratio
        ),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(rep, len(categories) + 1),
        box_score_thresh=rh.score_thresh,
        box_nms_thresh=rh.nms_thresh,
        box_detections_per_img=rh.detections_per_img,
        box_fg_iou_thresh=rh.fg_iou_thresh,
        box_bg_iou_thresh=rh.bg_iou_thresh,
        box_batch_size_per_image=rh.batch_size_per_image,
        box_positive_fraction=rh.positive_fraction,
        bbox_reg_weights=_bbox_reg_weights(rh.bbox_reg_weights),
        size_divisible=size_divisible,
    )
    # Crowd / VOC-difficult boxes in the targets are ignore regions, never background (see ignore_regions); the box
    # loss is the configured one (see box_loss); inference refines the boxes refine_steps times (see box_refine).
    set_box_refinement(set_box_loss(ignore_crowd_regions(model), rh.box_loss, rh.box_loss_weight), rh.refine_steps)
    return BirdDetector(model, categories, cfg)


def _bbox_reg_weights(weights: list[float]) -> tuple[float, float, float, float]:
    if len(weights) != 4:
        raise InputError(f"model.roi_heads.bbox_reg_weights needs 4 numbers (dx, dy, dw, dh), got {list(weights)}")
    return tuple(float(w) for w in weights)  # type: ignore[return-value]
