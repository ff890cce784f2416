"""Detector checkpoints: one `torch.save` dict, readable with `weights_only=True`, written atomically.

Keys: `model` (state dict), `config` (the resolved config as plain data), `categories` (COCO id -> name),
`birddet_version`, and in `last.pt` only, `training` (optimizer, scheduler, scaler, EMA, epoch, step, RNG states,
best AP). A checkpoint alone rebuilds its model: the backbone weights file named in the config is not needed.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from birddet import __version__
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
    unexecuted; a missing, truncated or foreign file is an `InputError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise InputError(
            f"refused to load checkpoint {path}: it holds Python objects other than tensors and plain containers, "
            f"which could run code when loaded ({first})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise InputError(f"checkpoint {path} is truncated or not a PyTorch file ({str(err)[:200]})") from None
    return ckpt


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


def detector_from_checkpoint(ckpt: dict[str, Any], where: str = "checkpoint") -> BirdDetector:
    cfg: Config = config_from_dict(ckpt["config"], where)
    detector = build_detector(cfg, {int(k): v for k, v in ckpt["categories"].items()}, load_weights=False)
    try:
        detector.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as err:
        raise InputError(f"{where}: the weights do not match the config stored with them ({str(err)[:300]})") from None
    return detector


def load_detector(path: str | Path, device: str | torch.device | None = None) -> BirdDetector:
    """Rebuild a detector from a checkpoint file alone, in eval mode, on `device` (default CPU)."""
    detector = detector_from_checkpoint(read_checkpoint(path), str(path))
    return detector.to(device or "cpu").eval()
