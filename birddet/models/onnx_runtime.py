"""Exported models on onnxruntime: an `.onnx` file written by `birddet export` loads as the same objects as a checkpoint.

A detector graph (`birddet.engine.export`) holds torchvision's whole eval path after the resize: normalisation and
padding (`GeneralizedRCNNTransform`), the ViT, the pyramid, the RPN, the RoI heads and the post-processing that maps
boxes back to the input's pixels. Its input is one float image `[3, H, W]` in [0, 1], already resized by the one
rule every path shares (`EvalTransform.resize_image`, applied by `BirdDetector.predict` and by `birddet eval`'s
dataset); its outputs are torchvision's `boxes`, `labels`, `scores`, sorted by score.

`load_onnx_detector` wraps the session in `OnnxRCNN`, which answers the calls `BirdDetector` makes of torchvision's
`FasterRCNN` (`model(images)` in eval mode, `roi_heads.score_thresh`, `roi_heads.detections_per_img`,
`rpn._post_nms_top_n`), and returns a plain `BirdDetector` around it: predict, tiling, eval, two-stage, every
command takes it without knowing. The score threshold and the box cap are baked into the graph at export time;
here they are applied again after the graph, which is exact for any threshold at or above the baked one and any cap
at or below it (the graph's boxes are sorted by score, and NMS keeps a box whatever lower-scored boxes there are).
A stricter request than the graph can answer is an `InputError` naming the export option that would. (The one
case where a smaller cap is not exact: a graph exported with `--max-dets` above the config's
`rpn.post_nms_top_n_test` always keeps that many proposals, where the checkpoint at a smaller cap keeps fewer.)

A classifier graph maps normalised crops `[N, 3, H, W]` (H, W fixed at the classifier's size) to logits;
`load_onnx_classifier` returns it as an `nn.Module` plus the `BackboneInfo` that `SpeciesClassifier` needs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from birddet.backbone.weights import BackboneInfo
from birddet.errors import InputError

#: `metadata_props` keys every birddet graph carries (values are strings; JSON where structured).
META_KIND = "birddet.kind"  # "detector" or "classifier"
META_VERSION = "birddet.version"

#: Where onnxruntime runs: the CPU provider, on every machine (GPU users keep the PyTorch checkpoint).
PROVIDERS = ["CPUExecutionProvider"]


def is_onnx_path(path: str | os.PathLike[str]) -> bool:
    """An exported model is recognised by its `.onnx` suffix, as users name it."""
    return str(path).lower().endswith(".onnx")


def read_onnx_metadata(path: str | os.PathLike[str], kind: str) -> dict[str, str]:
    """The `metadata_props` of a birddet graph of `kind`; `InputError` for a missing, damaged or foreign file."""
    from birddet.extras import require

    onnx = require("onnx", "onnx")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"exported model {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for a file that is not ONNX
        raise InputError(
            f"{path} is not a readable ONNX file ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
            "export one with `birddet export CHECKPOINT --format onnx --out MODEL.onnx`"
        ) from None
    meta = {p.key: p.value for p in model.metadata_props}
    found = meta.get(META_KIND)
    if found != kind:
        what = f"a birddet {found}" if found else "not written by `birddet export` (no birddet metadata)"
        raise InputError(
            f"{path} is {what}, not a birddet {kind}; "
            + (
                "export a detector with `birddet export CHECKPOINT --format onnx --out MODEL.onnx`"
                if kind == "detector"
                else "export a classifier with `birddet export CHECKPOINT --format onnx --classifier CLS ...`"
            )
        )
    return meta


def _json(meta: dict[str, str], key: str, path: str | os.PathLike[str]) -> Any:
    try:
        return json.loads(meta[key])
    except (KeyError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: metadata {key!r} is missing or damaged ({exc}); export the model again") from None


def _session(path: str | os.PathLike[str]) -> Any:
    """An onnxruntime CPU session using torch's thread count (the CLI's thread policy applies to both)."""
    from birddet.extras import require

    ort = require("onnx", "onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer of a quantized graph
    try:
        return ort.InferenceSession(str(path), options, providers=PROVIDERS)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise InputError(f"onnxruntime cannot load {path}: {' '.join(str(exc).split())[:300]}") from None


class _DeviceMarker(nn.Module):
    """An empty parameter, so `next(model.parameters()).device` (how every caller finds a model's device) works."""

    def __init__(self) -> None:
        super().__init__()
        self.marker = nn.Parameter(torch.zeros(0), requires_grad=False)


class OnnxRCNN(_DeviceMarker):
    """torchvision `FasterRCNN`'s eval-mode contract on an onnxruntime session (module docstring).

    `forward(images)` takes a list of float `[3, H, W]` images in [0, 1] (H, W at most `input_size`) and returns a
    dict of `boxes` (xyxy, the input's pixels), `labels` (1..K) and `scores` per image; the graph has a batch of 1,
    so the images run one by one.
    """

    def __init__(self, session: Any, *, score_floor: float, max_dets: int, rpn_post_nms: int, where: str) -> None:
        super().__init__()
        self.session = session
        self.where = where
        self.score_floor = score_floor
        self.max_dets = max_dets
        # The knobs BirdDetector.inference_caps sets; read back in forward.
        self.roi_heads = SimpleNamespace(score_thresh=score_floor, detections_per_img=max_dets)
        self.rpn = SimpleNamespace(_post_nms_top_n={"training": rpn_post_nms, "testing": rpn_post_nms})

    def forward(self, images: list[torch.Tensor], targets: Any = None) -> list[dict[str, torch.Tensor]]:
        if self.training or targets is not None:
            raise InputError(f"{self.where} is an exported model: it runs inference only; train from a checkpoint")
        thresh, cap = float(self.roi_heads.score_thresh), int(self.roi_heads.detections_per_img)
        if thresh < self.score_floor - 1e-9:
            raise InputError(
                f"{self.where} was exported keeping scores above {self.score_floor:g}, so a threshold of {thresh:g} "
                "cannot be met; export again with `birddet export ... --min-conf` at or below it"
            )
        if cap > self.max_dets:
            raise InputError(
                f"{self.where} was exported keeping {self.max_dets} boxes per image, so {cap} cannot be given; "
                f"export again with `birddet export ... --max-dets {cap}`"
            )
        outputs = []
        for image in images:
            array = image.detach().to("cpu", torch.float32).contiguous().numpy()
            boxes, labels, scores = self.session.run(None, {"image": array})
            keep = np.flatnonzero(scores > thresh)[:cap]  # torchvision keeps scores > score_thresh, sorted
            outputs.append(
                {
                    "boxes": torch.from_numpy(np.ascontiguousarray(boxes[keep])).to(image.device),
                    "labels": torch.from_numpy(labels[keep].astype(np.int64)).to(image.device),
                    "scores": torch.from_numpy(np.ascontiguousarray(scores[keep])).to(image.device),
                }
            )
        return outputs


def load_onnx_detector(path: str | os.PathLike[str], device: str | torch.device | None = None) -> Any:
    """A `BirdDetector` whose network is the exported graph at `path` (eval mode; onnxruntime runs on the CPU)."""
    from birddet.config import config_from_dict
    from birddet.models.detector import BirdDetector

    meta = read_onnx_metadata(path, "detector")
    where = str(path)
    config = config_from_dict(_json(meta, "birddet.config", path), where)
    categories = {int(k): str(v) for k, v in _json(meta, "birddet.categories", path).items()}
    caps = _json(meta, "birddet.caps", path)
    model = OnnxRCNN(
        _session(path),
        score_floor=float(caps["score_thresh"]),
        max_dets=int(caps["detections_per_img"]),
        rpn_post_nms=int(caps["rpn_post_nms_top_n"]),
        where=where,
    )
    return BirdDetector(model, categories, config).to(device or "cpu").eval()


class OnnxClassifierNet(_DeviceMarker):
    """Normalised crops `[N, 3, H, W]` -> logits `[N, C]` on an onnxruntime session (the graph's batch is dynamic)."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {"crops": crops.detach().to("cpu", torch.float32).contiguous().numpy()})
        return torch.from_numpy(logits).to(crops.device)


def load_onnx_classifier(
    path: str | os.PathLike[str], size: int | tuple[int, int] | None = None
) -> tuple[OnnxClassifierNet, BackboneInfo]:
    """An exported species classifier and its `BackboneInfo` (classes, normalisation, crop size)."""
    meta = read_onnx_metadata(path, "classifier")
    info_data = _json(meta, "birddet.classifier", path)
    fixed = (int(info_data["size"][0]), int(info_data["size"][1]))
    if size is not None and ((size, size) if isinstance(size, int) else tuple(size)) != fixed:
        raise InputError(
            f"{path} was exported for {fixed[0]}x{fixed[1]} crops; --classifier-size {size} needs the classifier "
            "exported again at that size (or drop --classifier-size)"
        )
    info = BackboneInfo(
        network=str(info_data["network"]),
        class_to_idx={str(k): int(v) for k, v in info_data["class_to_idx"].items()},
        rgb_stats={k: [float(x) for x in v] for k, v in info_data["rgb_stats"].items()},
        size=fixed,
        signature={},
        num_classes=int(info_data["num_classes"]),
        source=str(path),
    )
    return OnnxClassifierNet(_session(path)), info
