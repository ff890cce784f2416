"""Birder weights files: reading them as untrusted input, and writing them in birder's own format.

A birder `.pt` file is `torch.save` of a dict: `state` (the state dict), `task`, `signature`, `class_to_idx`,
`rgb_stats`, `birder_version` and optionally `config`. A `.safetensors` export holds the same state dict with those
fields as JSON strings in its metadata. Files are read with `weights_only=True`: a file that needs anything but
tensors and plain containers is refused without running any of its code (`load_untrusted`, which checkpoints use
too).

A weights file is untrusted input, and its small fields size big tensors: a signature claiming 3e9 classes would
make a 768 GB classifier head. So every field is type-checked when the file is read (`check_birder_fields`); the
sizes are checked against the tensors when a network is built from them (`birddet.backbone.weights`).

Apart from the registry, download and network building (`birddet.backbone.weights`) because reading a file safely
is one concern with its own rules, and saving belongs next to the reader that must read it back.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from birddet.backbone.resnet import ResNet
from birddet.backbone.vit import ViT
from birddet.errors import WeightsError
from birddet.fileio import atomic_path

__all__ = [
    "DEFAULT_RGB_STATS",
    "BirderFile",
    "check_birder_fields",
    "load_untrusted",
    "read_birder_file",
    "save_birder_file",
]

DEFAULT_RGB_STATS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


@dataclass
class BirderFile:
    """The contents of a birder weights file."""

    state: dict[str, torch.Tensor]
    class_to_idx: dict[str, int]
    rgb_stats: dict[str, list[float]]
    signature: dict[str, Any]
    task: str
    birder_version: str | None = None
    config: dict[str, Any] | None = None
    path: Path | None = None

    @property
    def input_size(self) -> tuple[int, int]:
        shape = self.signature["inputs"][0]["data_shape"]
        return (int(shape[2]), int(shape[3]))

    @property
    def num_classes(self) -> int:
        return int(self.signature["outputs"][0]["data_shape"][1])


_REQUIRED_FIELDS = ("state", "signature", "class_to_idx", "rgb_stats")


# The first bytes of what `torch.save` writes: a zip archive (PyTorch >= 1.6) or a pickle (protocol 2+, legacy).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def load_untrusted(path: Path, what: str, fix: str, *, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(path, weights_only=True)` with one-line errors naming `what` (e.g. "checkpoint") and `path`.

    Anything but tensors and plain containers is refused unexecuted. A file that is not a PyTorch file at all
    (text, an image, HTML from a failed download) is recognised by its first bytes, because torch's legacy
    loader fails on such input with whatever exception the bytes lead to (a `KeyError` for a text file).
    """
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(_TORCH_MAGIC):
        raise WeightsError(
            f"{what} {path} is not a PyTorch file (it starts with {head!r}, not a zip or pickle header); {fix}"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(
            f"refused to load {what} {path}: it holds Python objects other than tensors and plain containers, which "
            f"could run code when loaded ({first[:200]}); birddet only reads weights-only files. If you trust its "
            "source, re-save it as a plain dict of tensors"
        ) from None
    except (
        RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError,
        AttributeError, struct.error,
    ) as err:  # fmt: skip
        raise WeightsError(
            f"{what} {path} is not a readable PyTorch file; it may be truncated or corrupted "
            f"({type(err).__name__}: {str(err)[:200]}); {fix}"
        ) from None


def read_birder_file(path: str | os.PathLike) -> BirderFile:
    """Read a birder `.pt` or `.safetensors` weights file without unpickling arbitrary objects; every field is
    type-checked (`check_birder_fields`), so a damaged or hostile file fails here, with its name, not later."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file {path} is empty (0 bytes); download it again")
    if path.suffix == ".safetensors":
        return check_birder_fields(_read_safetensors(path))
    obj = load_untrusted(path, "weights file", "download it again")
    if not isinstance(obj, dict) or "state" not in obj:
        keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(
            f"{path} is not a birder model file: expected a dict with {', '.join(_REQUIRED_FIELDS)}, found {keys}"
        )
    missing = [k for k in _REQUIRED_FIELDS if k not in obj]
    if missing:
        raise WeightsError(f"{path} is missing the field(s) {', '.join(missing)} that every birder model file has")
    return check_birder_fields(
        BirderFile(
            state=obj["state"],
            class_to_idx=obj["class_to_idx"],
            rgb_stats=obj["rgb_stats"],
            signature=obj["signature"],
            task=str(obj.get("task", "")),
            birder_version=obj.get("birder_version"),
            config=obj.get("config"),
            path=path,
        )
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shape_of(signature: Any, side: str, length: int) -> list[int] | None:
    """`signature[side][0]["data_shape"]` when it is a list of `length` integers (the batch entry may be anything)."""
    try:
        shape = signature[side][0]["data_shape"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(shape, list) or len(shape) != length or not all(_is_int(v) for v in shape[1:]):
        return None
    return shape


def check_birder_fields(bf: BirderFile) -> BirderFile:
    """Refuse a birder file whose fields have the wrong types, naming the field and what it should be.

    The sizes in `signature` are checked against the tensors later (`build_from_state`); here only their form:
    `inputs[0].data_shape` is [N, 3, H, W] and `outputs[0].data_shape` [N, classes], `class_to_idx` maps names to
    distinct integer indices, `rgb_stats` holds three finite means and three positive stds.
    """
    where = bf.path

    def bad(field: str, expected: str, got: Any) -> WeightsError:
        text = repr(got)
        text = text if len(text) <= 80 else text[:77] + "..."
        return WeightsError(
            f"{where}: field '{field}' must be {expected}, got {text}; the file is damaged or not birder's"
        )

    if not isinstance(bf.state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in bf.state.items()
    ):
        raise bad("state", "a mapping of parameter names to tensors", type(bf.state).__name__)
    inputs, outputs = _shape_of(bf.signature, "inputs", 4), _shape_of(bf.signature, "outputs", 2)
    if inputs is None or inputs[1] != 3 or inputs[2] < 1 or inputs[3] < 1:
        raise bad("signature", "a mapping whose inputs[0].data_shape is [N, 3, height, width]", bf.signature)
    if outputs is None or outputs[1] < 0:
        raise bad("signature", "a mapping whose outputs[0].data_shape is [N, classes]", bf.signature)
    c2i = bf.class_to_idx
    if not isinstance(c2i, dict) or not all(isinstance(k, str) and _is_int(v) for k, v in c2i.items()):
        raise bad("class_to_idx", "a mapping of class names to integer indices", c2i)
    if len(set(c2i.values())) != len(c2i) or (c2i and (min(c2i.values()) < 0 or max(c2i.values()) >= len(c2i))):
        raise bad("class_to_idx", f"indices 0..{len(c2i) - 1}, each once", sorted(c2i.values())[:10])
    if c2i and len(c2i) != outputs[1]:
        raise bad("class_to_idx", f"as many classes as the signature's outputs ({outputs[1]})", len(c2i))
    stats = bf.rgb_stats
    if not (
        isinstance(stats, dict)
        and all(isinstance(stats.get(k), list | tuple) and len(stats[k]) == 3 for k in ("mean", "std"))
        and all(isinstance(v, int | float) and math.isfinite(v) for v in [*stats["mean"], *stats["std"]])
        and all(v > 0 for v in stats["std"])
    ):
        raise bad("rgb_stats", "a mapping with 3 finite 'mean' values and 3 positive 'std' values", stats)
    if bf.config is not None and not isinstance(bf.config, dict):
        raise bad("config", "a mapping of network settings", bf.config)
    bf.class_to_idx = dict(c2i)
    bf.rgb_stats = {k: [float(v) for v in stats[k]] for k in ("mean", "std")}
    return bf


def _read_safetensors(path: Path) -> BirderFile:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path} is not a readable safetensors file ({err}); download it again") from None
    missing = [k for k in ("signature", "class_to_idx", "rgb_stats") if k not in meta]
    if missing:
        raise WeightsError(f"{path} lacks birder's metadata field(s) {', '.join(missing)}; export it with birder")
    try:
        config = json.loads(meta["config"]) if meta.get("config") else None
        return BirderFile(
            state=state,
            class_to_idx=json.loads(meta["class_to_idx"]),
            rgb_stats=json.loads(meta["rgb_stats"]),
            signature=json.loads(meta["signature"]),
            task=meta.get("task", ""),
            birder_version=meta.get("birder_version"),
            config=config,
            path=path,
        )
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path} has metadata that is not valid JSON ({err}); export it again with birder") from None


def save_birder_file(
    net: ViT | ResNet,
    path: str | os.PathLike,
    *,
    class_to_idx: dict[str, int],
    rgb_stats: dict[str, list[float]] | None = None,
    birder_version: str = "0.8.4",
    config: dict[str, Any] | None = None,
) -> Path:
    """Write `net` in birder's file format (`.pt`, or `.safetensors` by suffix), readable by birder itself.

    Used to export a fine-tuned species classifier, and by the tests to make random weights in the real format.
    `config` is birder's optional network override (e.g. `{"num_layers": 4, ...}` for a preset other than
    ViT-M/16), which birder's `load_model` applies when it builds the network.
    """
    path = Path(path)
    rgb_stats = rgb_stats or DEFAULT_RGB_STATS
    signature = {
        "inputs": [{"data_shape": [0, 3, *net.image_size]}],
        "outputs": [{"data_shape": [0, net.num_classes]}],
    }
    task = "image_classification"
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            meta = {
                "birder_version": birder_version,
                "task": task,
                "class_to_idx": json.dumps(class_to_idx),
                "signature": json.dumps(signature),
                "rgb_stats": json.dumps(rgb_stats),
            }
            if config:
                meta["config"] = json.dumps(config)
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp), metadata=meta)
        else:
            payload: dict[str, Any] = {
                "state": net.state_dict(),
                "birder_version": birder_version,
                "task": task,
                "signature": signature,
                "class_to_idx": class_to_idx,
                "rgb_stats": rgb_stats,
            }
            if config:
                payload["config"] = config
            torch.save(payload, tmp)
    return path
