"""`birddet export`: a checkpoint (and optionally a species classifier) as ONNX graphs for onnxruntime.

Beside the checkpoint loader (`engine/checkpoint.py`); the exported file loads back through the same
`load_detector` (`models/onnx_runtime.py`), so every command that takes a checkpoint takes it.

What goes into the detector graph, and why: the image resize stays outside, in the one function every path uses
(`EvalTransform.resize_image`: longest side to the input size with area averaging, which no ONNX op matches), and
everything after it is torchvision's own `FasterRCNN` traced whole: `GeneralizedRCNNTransform` (normalisation with
the model's mean/std, its resize, which is the identity on an image already at the input size, and the padding to
the fixed `S x S` square), the ViT, the pyramid, the RPN, the RoI heads and the post-processing back to the input's
pixels. So normalisation and padding exist once, in torchvision, for both backends.

Shapes: batch 1 and 3 channels are fixed; the input height and width are dynamic (each at most `S`, as the resize
gives). They can be, because `model.fixed_square` pads every image to the same `S x S` square inside the graph, so
the ViT, its position embeddings, the window partition and the anchors all see one size. A model trained with
`min_size`/`max_size` pads to the image's own size instead; the ViT's grid would then be traced as a constant, so
such a model is refused.

The score threshold and the per-image box cap are baked in (`--min-conf`, `--max-dets`; defaults: the config's);
see `models/onnx_runtime.py` for why any stricter request is still answered exactly.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from birddet import __version__
from birddet.config import config_to_dict
from birddet.errors import InputError
from birddet.fileio import atomic_path
from birddet.models.detector import BirdDetector
from birddet.models.onnx_runtime import META_KIND, META_VERSION
from birddet.models.tta import set_square

logger = logging.getLogger(__name__)

#: ONNX opset of the graphs. 17 is the lowest with everything the detector needs from torchvision's symbolics
#: (RoiAlign's half-pixel mode is 16+) and is run by every onnxruntime since 1.13.
OPSET = 17
#: What the graphs say about their input, in the metadata and in docs/export.md.
RESIZE_RULE = (
    "longest side to input_size, aspect kept (albumentations LongestMaxSize, area averaging when shrinking, as "
    "`birddet eval`); input float RGB [3, H, W] in [0, 1]; the graph normalises with mean/std and pads bottom/right "
    "to input_size x input_size"
)
DYNAMIC_AXES = "height and width dynamic (each <= input_size); batch fixed at 1, 3 channels"


def _rms_norm_symbolic(g: Any, x: Any, shape: Any, weight: Any, eps: Any) -> Any:
    """`aten::rms_norm` for the TorchScript exporter, which has no symbolic for it before opset 23 (ONNX's
    RMSNormalization): x / sqrt(mean(x^2 over the normalised dims) + eps) * weight, as torch defines it."""
    from torch.onnx import symbolic_helper as sh

    dims = sh._get_const(shape, "is", "normalized_shape")
    eps_value = sh._get_const(eps, "f", "eps") if not sh._is_none(eps) else torch.finfo(torch.float32).eps
    mean_sq = g.op("ReduceMean", g.op("Mul", x, x), axes_i=list(range(-len(dims), 0)), keepdims_i=1)
    rms = g.op("Sqrt", g.op("Add", mean_sq, g.op("Constant", value_t=torch.tensor(eps_value, dtype=torch.float32))))
    out = g.op("Div", x, rms)
    return out if sh._is_none(weight) else g.op("Mul", out, weight)


def _export(module: torch.nn.Module, args: tuple[Any, ...], path: Path, **kwargs: Any) -> None:
    """`torch.onnx.export` with the TorchScript-based exporter (`dynamo=False`): torchvision's detection models
    export only through it (their eval path has data-dependent control flow that torchvision marks for tracing,
    as its own test_onnx.py does). Tracer warnings about Python values becoming constants are expected there and
    are silenced; the parity tests check what they would warn about."""
    torch.onnx.register_custom_op_symbolic("aten::rms_norm", _rms_norm_symbolic, OPSET)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET, **kwargs)


def _write_metadata(path: Path, kind: str, props: dict[str, Any]) -> None:
    """Add birddet's `metadata_props` (strings; JSON for structured values) and check the graph."""
    from birddet.extras import require

    onnx = require("onnx", "onnx")
    model = onnx.load(str(path))
    entries = {META_KIND: kind, META_VERSION: __version__, **props}
    for key, value in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@contextlib.contextmanager
def _input_size(detector: BirdDetector, size: int | None) -> Iterator[BirdDetector]:
    """The detector with its input square set to `size` (a multiple of 32), or as built when None."""
    m = detector.config.model
    if not (m.fixed_square and m.min_size is None and m.max_size is None):
        raise InputError(
            "export needs a model padded to a fixed square (model.fixed_square with min_size/max_size null, the "
            "default); this checkpoint pads each image to its own size, so its ViT grid cannot be traced once"
        )
    if size is not None and (size % 32 or size < 32):
        raise InputError(f"--image-size must be a positive multiple of 32, got {size}")
    size = m.test_square if size is None else size
    if size == m.test_square and not m.tta_sizes:
        yield detector
        return
    detector = copy.deepcopy(detector)
    if m.tta_sizes:
        logger.warning(
            "model.tta_sizes %s: the graph runs at one square (%d px) and the exported detector fuses only that and "
            "its mirror (`birddet eval CHECKPOINT --tta %s` gives the checkpoint's numbers for the same views)",
            m.tta_sizes,
            size,
            m.tta,
        )
        detector.config.model.tta_sizes = []
    detector.config.model.test_size = size  # the graph's square is an inference size; training's is kept on record
    set_square(detector.model.transform, size)
    yield detector


def export_detector(
    detector: BirdDetector,
    out: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    min_conf: float | None = None,
    max_dets: int | None = None,
) -> Path:
    """Write `detector` as one ONNX graph at `out` (module docstring), with its metadata; returns the path."""
    out = Path(out)
    detector = detector.cpu().eval()
    with _input_size(detector, image_size) as det:
        size = det.config.model.test_square
        conf = det.config.model.roi_heads.score_thresh if min_conf is None else float(min_conf)
        cap = det.box_cap(max_dets)
        # A landscape example: a square one would let the tracer treat height and width as one value.
        example = torch.rand(3, size * 3 // 4, size, generator=torch.Generator().manual_seed(0))
        with det.inference_caps(conf, cap), atomic_path(out) as tmp:
            _export(
                det.model,
                ([example],),
                tmp,
                input_names=["image"],
                output_names=["boxes", "labels", "scores"],
                dynamic_axes={
                    "image": {1: "height", 2: "width"},
                    **{k: {0: "boxes"} for k in ("boxes", "labels", "scores")},
                },
                do_constant_folding=True,
            )
            heads = det.model.roi_heads
            caps = {
                "score_thresh": heads.score_thresh,
                "detections_per_img": heads.detections_per_img,
                "rpn_post_nms_top_n": det.model.rpn._post_nms_top_n["testing"],
            }
            stats = det.config.model.rgb_stats
            _write_metadata(
                tmp,
                "detector",
                {
                    "birddet.categories": {str(k): v for k, v in det.categories.items()},
                    "birddet.input_size": str(size),
                    "birddet.mean": list(stats["mean"]),
                    "birddet.std": list(stats["std"]),
                    "birddet.resize": RESIZE_RULE,
                    "birddet.dynamic_axes": DYNAMIC_AXES,
                    "birddet.caps": caps,
                    "birddet.precision": "fp32",
                    "birddet.config": config_to_dict(det.config),
                },
            )
    return out


def export_classifier(source: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write a birder species classifier (file or registered name) as an ONNX graph: normalised crops
    `[N, 3, H, W]` (N dynamic, H, W the classifier's size) -> logits, with its classes and normalisation."""
    from birddet.backbone.weights import load_backbone

    net, info = load_backbone(source)
    if info.num_classes <= 0 or not info.class_to_idx:
        raise InputError(f"--classifier {source} has no classification head; pass a species classifier")
    out = Path(out)
    example = torch.rand(2, 3, *info.size, generator=torch.Generator().manual_seed(0))
    with atomic_path(out) as tmp:
        _export(
            net.cpu().eval(),
            (example,),
            tmp,
            input_names=["crops"],
            output_names=["logits"],
            dynamic_axes={"crops": {0: "crops"}, "logits": {0: "crops"}},
            do_constant_folding=True,
        )
        _write_metadata(
            tmp,
            "classifier",
            {
                "birddet.classifier": {
                    "network": info.network,
                    "class_to_idx": info.class_to_idx,
                    "rgb_stats": info.rgb_stats,
                    "size": list(info.size),
                    "num_classes": info.num_classes,
                    "source": str(source),
                },
                "birddet.dynamic_axes": "batch of crops dynamic; 3 channels and height x width fixed",
            },
        )
    return out


def classifier_path(out: str | os.PathLike[str]) -> Path:
    """Where `birddet export ... --classifier` writes the classifier: `MODEL.classifier.onnx` beside `MODEL.onnx`."""
    out = Path(out)
    return out.with_name(f"{out.stem}.classifier.onnx")


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    min_conf: float | None = None,
    max_dets: int | None = None,
    int8: bool = False,
    calibrate: str | os.PathLike[str] | None = None,
    classifier: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """`birddet export`: the checkpoint's detector at `out` (int8 with `int8`, calibrated on `calibrate`), and with
    `classifier` the species classifier at `classifier_path(out)`. Returns the files written."""
    from birddet.engine.checkpoint import load_detector
    from birddet.models.onnx_runtime import is_onnx_path

    out = Path(out)
    if not is_onnx_path(out):
        raise InputError(f"--out {out}: name the exported model MODEL.onnx (the suffix is how commands recognise it)")
    if int8 and calibrate is None:
        raise InputError("--int8 needs --calibrate DIR: a folder of photos like the ones the model will run on")
    if calibrate is not None and not int8:
        raise InputError("--calibrate is for --int8; add --int8, or drop --calibrate for an fp32 export")
    if is_onnx_path(checkpoint):
        raise InputError(f"{checkpoint} is already exported; export from the checkpoint (best.pt) it came from")
    detector = load_detector(checkpoint)
    written = []
    if int8:
        from birddet.engine.quantize import quantize_detector

        # The fp32 graph quantization starts from: a hidden name of this process's own, removed afterwards, so no
        # file of the user's is ever overwritten.
        fp32 = out.with_name(f".{out.stem}.fp32-{os.getpid()}.onnx")
        export_detector(detector, fp32, image_size=image_size, min_conf=min_conf, max_dets=max_dets)
        try:
            written.append(quantize_detector(fp32, out, calibrate))  # type: ignore[arg-type]
        finally:
            fp32.unlink(missing_ok=True)
    else:
        written.append(export_detector(detector, out, image_size=image_size, min_conf=min_conf, max_dets=max_dets))
    if classifier is not None:
        written.append(export_classifier(classifier, classifier_path(out)))
    return written
