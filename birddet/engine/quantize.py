"""int8 detector graphs: onnxruntime's static quantization, calibrated on the user's own photos.

`quantize_static` runs the fp32 graph over calibration images, records each activation's range (min/max) and
writes a QDQ graph whose convolutions and matrix products run in int8 (weights per channel, activations per
tensor); RoIAlign, NMS and the box arithmetic stay in float. Calibration images go through the same resize as
inference (`EvalTransform.resize_image`), so the ranges are the ones the model will meet.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from birddet.errors import InputError
from birddet.fileio import atomic_path

logger = logging.getLogger(__name__)

#: Operators quantized: where the time goes (the ViT's matmuls, the pyramid's and heads' convolutions).
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]
#: Calibration images used at most: ranges settle after a few dozen photos, and each costs one fp32 forward.
MAX_CALIBRATION_IMAGES = 64
#: onnxruntime's min/max calibration holds every intermediate output of every calibration image until the end, so
#: the number of images shrinks with the input's area: 64 at 384 px and below, 23 at 640, 9 at 1024. (Its
#: `CalibMaxIntermediateOutputs` option would bound this, but in onnxruntime 1.32 it discards each full chunk
#: without folding it into the ranges: calibration then used only the last `n % chunk` images, or failed with
#: "No data is collected" when the chunk divided n.)
CALIBRATION_REFERENCE_SIDE = 384


def calibration_limit(input_size: int) -> int:
    """How many calibration images a graph with inputs of `input_size` px is calibrated on (see
    `CALIBRATION_REFERENCE_SIDE`)."""
    return max(
        4, min(MAX_CALIBRATION_IMAGES, int(MAX_CALIBRATION_IMAGES * (CALIBRATION_REFERENCE_SIDE / input_size) ** 2))
    )


def calibration_images(folder: str | os.PathLike[str], limit: int = MAX_CALIBRATION_IMAGES) -> list[Path]:
    """The image files directly in or under `folder` (sorted, at most `limit`, evenly spaced)."""
    from birddet.data.images import IMAGE_EXTENSIONS

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"--calibrate {root} is not a folder; pass a folder of photos like the ones you will run on")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise InputError(f"--calibrate {root} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    step = max(1, len(files) // limit)
    return files[::step][:limit]


def _resized_inputs(files: list[Path], input_size: int) -> Iterator[dict[str, Any]]:
    """`{"image": float32 [3, H, W]}` per readable file, resized as inference resizes; unreadable files are skipped
    with a warning (a calibration set is a sample, one bad photo does not spoil it)."""
    from birddet.data.images import load_image
    from birddet.data.transforms import build_eval_transforms, to_tensor

    resize = build_eval_transforms(input_size).resize_image
    import numpy as np

    for path in files:
        try:
            array = np.asarray(load_image(path))
        except InputError as exc:
            logger.warning("calibration: skipping %s (%s)", path, exc)
            continue
        yield {"image": to_tensor(resize(array)).numpy()}


def quantize_detector(
    fp32: str | os.PathLike[str], out: str | os.PathLike[str], calibrate: str | os.PathLike[str]
) -> Path:
    """Write the int8 version of the fp32 detector graph `fp32` at `out`, calibrated on the photos in `calibrate`;
    the metadata is carried over with `birddet.precision` = int8 and the calibration count."""
    from birddet.extras import require
    from birddet.models.onnx_runtime import read_onnx_metadata

    onnx = require("onnx", "onnx")
    require("onnx", "onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    meta = read_onnx_metadata(fp32, "detector")
    size = int(meta["birddet.input_size"])
    files = calibration_images(calibrate, calibration_limit(size))
    inputs = _resized_inputs(files, size)
    used = 0

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, Any] | None:
            nonlocal used
            item = next(inputs, None)
            used += item is not None
            return item

    out = Path(out)
    with atomic_path(out) as tmp:
        quantize_static(
            str(fp32),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        if used == 0:
            raise InputError(f"--calibrate {calibrate}: none of its {len(files)} images could be read")
        model = onnx.load(str(tmp))
        del model.metadata_props[:]
        for key, value in {**meta, "birddet.precision": "int8", "birddet.calibration_images": str(used)}.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(tmp))
    logger.info("int8: calibrated on %d images from %s", used, calibrate)
    return out
