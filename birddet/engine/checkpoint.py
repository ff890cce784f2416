"""Detector checkpoints: one `torch.save` dict, readable with `weights_only=True`, written atomically.

Keys: `model` (state dict), `config` (the resolved config as plain data), `categories` (COCO id -> name),
`birddet_version`, and in `last.pt` only, `training` (optimizer, scheduler, scaler, EMA, epoch, step, RNG states,
best AP). A checkpoint alone rebuilds its model: the backbone weights file named in the config is not needed.

A checkpoint is untrusted input: its config decides the sizes of the network it rebuilds. The config is type- and
range-checked like any other, the categories must map integer ids to names, and the network is built on the `meta`
device and compared shape by shape with the stored weights (`build_matching`) before any memory is allocated for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from birddet import __version__
from birddet.backbone.weights import build_matching, load_untrusted
from birddet.config import Config, config_from_dict, config_to_dict
from birddet.errors import InputError
from birddet.fileio import atomic_torch_save
from birddet.models.detector import BirdDetector, build_detector


def save_checkpoint(
    path: str | Path,
    detector: BirdDetector,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write a detector checkpoint; `state_dict` overrides the model's own (e.g. EMA weights for `best.pt`)."""
    payload: dict[str, Any] = {
        "model": state_dict if state_dict is not None else detector.state_dict(),
        "config": config_to_dict(detector.config),
        "categories": {int(k): v for k, v in detector.categories.items()},
        "birddet_version": __version__,
    }
    if training is not None:
        payload["training"] = training
    return atomic_torch_save(payload, path)


def load_weights_only(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)` with one-line errors: anything but tensors and plain containers is refused
    unexecuted; a missing, truncated or foreign file (text, an image) is an `InputError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    return load_untrusted(
        path, "checkpoint", "pass a best.pt or last.pt written by birddet train", map_location=map_location
    )


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a detector checkpoint dict safely (see `load_weights_only`) and check that it is one."""
    path = Path(path)
    ckpt = load_weights_only(path, map_location)
    missing = [k for k in ("model", "config", "categories") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise InputError(
            f"{path} is not a birddet detector checkpoint (missing {', '.join(missing)}); "
            "a birder classifier file goes to --classifier, not here"
        )
    return ckpt


def checkpoint_categories(categories: Any, where: str) -> dict[int, str]:
    """The checkpoint's `categories` as COCO id -> name; integer ids (or their decimal strings) and string names."""
    if not isinstance(categories, dict) or not categories:
        raise InputError(
            f"{where}: 'categories' must be a non-empty mapping of COCO category ids to names, got "
            f"{type(categories).__name__}; the checkpoint is damaged, use another best.pt/last.pt"
        )
    out: dict[int, str] = {}
    for key, name in categories.items():
        if isinstance(key, bool) or not (isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit())):
            raise InputError(
                f"{where}: 'categories' key {key!r} is not an integer category id; the checkpoint is damaged, "
                "use another best.pt/last.pt"
            )
        if not isinstance(name, str):
            raise InputError(f"{where}: 'categories' name of id {key} must be a string, got {name!r}")
        out[int(key)] = name
    return out


# Which config keys size the tensors under each state-dict prefix, for the error that names a mismatch.
_SIZED_BY = {
    "model.backbone.body.": "model.backbone.preset / model.backbone.pretrain_size",
    "model.backbone.pyramid.": "model.pyramid.out_channels / model.pyramid.scale_factors",
    "model.rpn.": "model.rpn.conv_depth / model.rpn.aspect_ratios / model.pyramid.out_channels",
    "model.roi_heads.box_head.": (
        "model.roi_heads.box_head / representation_size / conv_dim / roi_output_size and model.pyramid.out_channels"
    ),
    "model.roi_heads.box_predictor.": "'categories' and model.roi_heads.representation_size",
}


def _claims(cfg: Config, n_categories: int, key: str) -> str:
    """The stored settings that decide the shape of state-dict entry `key`, with their values."""
    if not key:
        return "the network its config describes"
    m = cfg.model
    values = {
        "model.backbone.body.": f"preset {m.backbone.preset}, pretrain_size {m.backbone.pretrain_size}",
        "model.backbone.pyramid.": f"out_channels {m.pyramid.out_channels}, scale_factors {m.pyramid.scale_factors}",
        "model.rpn.": f"conv_depth {m.rpn.conv_depth}, {len(m.rpn.aspect_ratios)} aspect ratios",
        "model.roi_heads.box_head.": (
            f"box_head {m.roi_heads.box_head}, representation_size {m.roi_heads.representation_size}, "
            f"conv_dim {m.roi_heads.conv_dim}, roi_output_size {m.roi_heads.roi_output_size}"
        ),
        "model.roi_heads.box_predictor.": (
            f"{n_categories} categories, representation_size {m.roi_heads.representation_size}"
        ),
    }
    for prefix, keys in _SIZED_BY.items():
        if key.startswith(prefix):
            return f"its config's {keys} ({values[prefix]})"
    return "its config"


def detector_from_checkpoint(ckpt: dict[str, Any], where: str = "checkpoint") -> BirdDetector:
    """Rebuild the detector a checkpoint dict describes; nothing is allocated for a size the weights do not have."""
    cfg: Config = config_from_dict(ckpt["config"], where)
    categories = checkpoint_categories(ckpt["categories"], where)
    state = ckpt["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{where}: 'model' must be a state dict of tensors; the checkpoint is damaged")
    return build_matching(
        lambda: build_detector(cfg, categories, load_weights=False),
        state,
        where=where,
        claims=lambda key: _claims(cfg, len(categories), key),
    )


def load_detector(path: str | Path, device: str | torch.device | None = None) -> BirdDetector:
    """Rebuild a detector from a checkpoint file alone, in eval mode, on `device` (default CPU).

    A `.onnx` file written by `birddet export` loads here too, as a `BirdDetector` running on onnxruntime
    (`birddet.models.onnx_runtime`), so every command that takes a checkpoint takes an exported model.
    """
    from birddet.models.onnx_runtime import is_onnx_path, load_onnx_detector

    if is_onnx_path(path):
        return load_onnx_detector(path, device)
    detector = detector_from_checkpoint(read_checkpoint(path), str(path))
    return detector.to(device or "cpu").eval()
