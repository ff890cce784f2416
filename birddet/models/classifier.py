"""Species classifier preprocessing: birder's whole-image transform and the crop transform for a detected box.

birder's inference transform for these models is a bicubic, antialiased resize to the model size (centre-crop
ratio 1.0, so the centre crop is a no-op), scaling to [0, 1] and normalisation with the file's `rgb_stats`.
The crop transform puts a detection box through the same steps after widening it by a margin and making it
square, so a bird is seen by the classifier the way whole images were seen in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

# Context around the box: birds are often cut tight by the detector, and the classifier was trained on whole-bird
# photos with some background. Predict and classifier training both crop with it.
CROP_MARGIN = 0.15


def classifier_transform(
    size: tuple[int, int], rgb_stats: dict[str, Sequence[float]], center_crop: float = 1.0
) -> v2.Compose:
    """birder's `inference_preset`: PIL image -> normalised float tensor [3, H, W] at `size`."""
    base = (int(size[0] / center_crop), int(size[1] / center_crop))
    return v2.Compose(
        [
            v2.Resize(base, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(size),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(rgb_stats["mean"]), std=list(rgb_stats["std"])),
        ]
    )


def square_crop_box(
    box_xyxy: Sequence[float], image_size: tuple[int, int], *, margin: float = CROP_MARGIN
) -> tuple[int, int, int, int]:
    """Widen a box by `margin` of its longer side on every side, make it square about its centre, clip to the image.

    `image_size` is (width, height). Returns integer pixel bounds (x0, y0, x1, y1), at least 1 px wide and high.
    Clipping at a border keeps the crop inside the image rather than padding: a bird at the edge is cut, not
    surrounded by grey the classifier never saw in training.
    """
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    width, height = image_size
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    side = min(side, float(max(width, height)))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left, top = cx - side / 2.0, cy - side / 2.0
    # Shift a square that overhangs one border back inside before clipping, so it stays as square as it can.
    left = min(max(left, 0.0), max(width - side, 0.0))
    top = min(max(top, 0.0), max(height - side, 0.0))
    right, bottom = min(left + side, width), min(top + side, height)
    # Round the start inside the image: a sub-pixel box at the far border must still give a 1 px crop.
    ix0, iy0 = min(int(round(left)), width - 1), min(int(round(top)), height - 1)
    ix1, iy1 = max(int(round(right)), ix0 + 1), max(int(round(bottom)), iy0 + 1)
    return ix0, iy0, min(ix1, width), min(iy1, height)


def crop_for_classifier(
    image: Image.Image,
    box_xyxy: Sequence[float],
    size: tuple[int, int],
    rgb_stats: dict[str, Sequence[float]],
    *,
    margin: float = CROP_MARGIN,
) -> torch.Tensor:
    """Crop a detection from a PIL RGB image and prepare it for the species classifier: [3, H, W] float tensor."""
    x0, y0, x1, y1 = square_crop_box(box_xyxy, image.size, margin=margin)
    crop = image.crop((x0, y0, x1, y1))
    return classifier_transform(size, rgb_stats)(crop)


def square_crops(
    image: torch.Tensor, boxes_xyxy: torch.Tensor, size: tuple[int, int], *, margin: float = CROP_MARGIN
) -> torch.Tensor:
    """The crop rule on a uint8 tensor image [3, H, W]: `square_crop_box` then a bicubic antialiased resize to
    `size`; returns uint8 [N, 3, *size].

    The one geometry for both sides of the species classifier: predict (`crops_for_classifier`) and training on
    annotated boxes (`birddet.data.crops.CocoCrops`) both call it, so the classifier trains on the pixels it will see.
    """
    if boxes_xyxy.numel() == 0:
        return torch.empty((0, 3, *size), dtype=torch.uint8, device=image.device)
    height, width = image.shape[-2:]
    crops = []
    for box in boxes_xyxy.tolist():
        x0, y0, x1, y1 = square_crop_box(box, (width, height), margin=margin)
        crop = image[:, y0:y1, x0:x1]
        crops.append(TF.resize(crop, list(size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True))
    return torch.stack(crops)


def normalize_crops(crops: torch.Tensor, rgb_stats: dict[str, Sequence[float]]) -> torch.Tensor:
    """uint8 crops [N, 3, H, W] -> float32 scaled to [0, 1] and normalised with the classifier file's `rgb_stats`."""
    mean = torch.tensor(rgb_stats["mean"], device=crops.device).view(3, 1, 1)
    std = torch.tensor(rgb_stats["std"], device=crops.device).view(3, 1, 1)
    return (crops.float() / 255.0 - mean) / std


def crops_for_classifier(
    image: torch.Tensor,
    boxes_xyxy: torch.Tensor,
    size: tuple[int, int],
    rgb_stats: dict[str, Sequence[float]],
    *,
    margin: float = CROP_MARGIN,
) -> torch.Tensor:
    """Batched crop transform on a uint8 tensor image [3, H, W]: returns [N, 3, size] normalised crops.

    Same geometry as `crop_for_classifier`; resizing runs on tensors so crops of a whole batch can be made on
    the device the image is on.
    """
    if boxes_xyxy.numel() == 0:
        return torch.empty((0, 3, *size), dtype=torch.float32, device=image.device)
    return normalize_crops(square_crops(image, boxes_xyxy, size, margin=margin), rgb_stats)


# -- building a species classifier for training ----------------------------------------------------------------------
#: birder builds every file of this family as its registered ViT-M/16; other birddet presets need these overrides
#: in the file's `config` so that birder's `load_model` builds the same network.
BIRDER_NETWORK = "vit_reg4_m16_rms_avg"
_BIRDER_CONFIG_FIELDS = ("num_layers", "num_heads", "hidden_dim", "mlp_dim")


def birder_config(preset: str) -> dict[str, Any] | None:
    """The `config` a birder file of `preset` needs (None for birder's own ViT-M/16).

    birder builds a ViT preset's file as `vit_reg4_m16_rms_avg` and a ResNet preset's as `resnet_v1_18`
    (`birder_network`), each with this override of widths and depths."""
    from birddet.backbone.presets import RESNET_PRESETS, get_preset

    if preset in RESNET_PRESETS:
        return RESNET_PRESETS[preset].birder_config()
    if preset == BIRDER_NETWORK:
        return None
    cfg = get_preset(preset)
    return {name: int(getattr(cfg, name)) for name in _BIRDER_CONFIG_FIELDS}


def birder_network(preset: str) -> str:
    """The birder network name to load a file of `preset` with (`birder.common.fs_ops.load_model`)."""
    from birddet.backbone.presets import RESNET_PRESETS
    from birddet.backbone.resnet import BIRDER_RESNET

    return BIRDER_RESNET if preset in RESNET_PRESETS else BIRDER_NETWORK


def build_classifier_net(
    model_cfg: Any, class_names: Sequence[str]
) -> tuple[Any, str, dict[str, list[float]], list[str]]:
    """A `ViT` or `ResNet` classifier to train, at the crop size `model_cfg.image_size`; returns
    `(net, preset, rgb_stats, classes)`.

    `model_cfg` is a `ClassifierModelConfig`. Random init (`backbone.weights: null`) builds `backbone.preset`;
    a birder file (path or registered name) gives the network, its weights and its `rgb_stats`, with a new zero-
    initialised head for `class_names` (`head: new`) or its own head (`head: keep`, whose classes must be the
    dataset's; their order is then the file's). The position embedding is resized to the crop grid, so the net is
    a plain classifier at `image_size`, as the birder file written from it says.
    """
    from birddet.backbone.presets import build_network, get_classifier_preset
    from birddet.backbone.vit import ViT, resize_pos_embedding
    from birddet.backbone.weights import DEFAULT_RGB_STATS, load_backbone
    from birddet.errors import InputError

    side = int(model_cfg.image_size)
    size = (side, side)
    b = model_cfg.backbone
    names = list(class_names)
    if b.weights is None:
        if model_cfg.head == "keep":
            raise InputError("model.head=keep keeps the head of model.backbone.weights, but no weights file is set")
        arch = get_classifier_preset(b.preset)
        patch = getattr(arch, "patch_size", 1)
        if side % patch:
            raise InputError(f"model.image_size {side} must be a multiple of the patch size {patch}")
        net = build_network(arch, len(names), size)
        preset, rgb_stats = b.preset, model_cfg.rgb_stats or DEFAULT_RGB_STATS
    else:
        src, info = load_backbone(b.weights)
        preset, rgb_stats = info.network, model_cfg.rgb_stats or info.rgb_stats
        if side % src.patch_size:
            raise InputError(f"model.image_size {side} must be a multiple of the patch size {src.patch_size}")
        state = dict(src.state_dict())
        if model_cfg.head == "keep":
            file_names = [info.idx_to_class[i] for i in range(info.num_classes)]
            if sorted(n.casefold() for n in file_names) != sorted(n.casefold() for n in names):
                raise InputError(
                    f"model.head=keep: the classes of {b.weights} ({', '.join(file_names[:10])}"
                    f"{' ...' if len(file_names) > 10 else ''}) are not the dataset's ({', '.join(names[:10])}"
                    f"{' ...' if len(names) > 10 else ''}); use model.head=new for a new set of classes"
                )
            names = file_names
        else:
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        net = build_network(src.cfg, len(names), size)
        if isinstance(net, ViT) and net.grid_size != src.grid_size:
            state["pos_embedding"] = resize_pos_embedding(
                state["pos_embedding"],
                src.grid_size,
                net.grid_size,
                src.num_prefix_tokens,
                mode=src.cfg.pos_embed_interpolation,
                antialias=src.cfg.pos_embed_antialias,
            )
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("classifier.") for k in missing):
            raise InputError(
                f"{b.weights}: weights do not fit {preset} ({missing[:3]} missing, {unexpected[:3]} extra)"
            )
    net.freeze(b.freeze_blocks)
    net.set_grad_checkpointing(b.grad_checkpointing)
    return net.train(), preset, {k: list(v) for k, v in rgb_stats.items()}, names
