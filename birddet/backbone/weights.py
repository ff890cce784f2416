"""Reading and fetching birder weights files; building a `ViT` from them.

A birder `.pt` file is `torch.save` of a dict: `state` (the state dict), `task`, `signature`, `class_to_idx`,
`rgb_stats`, `birder_version` and optionally `config`. A `.safetensors` export holds the same state dict with those
fields as JSON strings in its metadata. Files are read with `weights_only=True`: a file that needs anything but
tensors and plain containers is refused without running any of its code.

A weights file is untrusted input, and its small fields size big tensors: a signature claiming 3e9 classes would
make a 768 GB classifier head. So every field is type-checked when the file is read, and every network is first
built on the `meta` device (shapes only, no memory) and compared tensor by tensor with the stored state dict
(`build_matching`); only a network whose every shape is the file's own is then built for real, so memory is
bounded by the file's size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import struct
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from birddet.backbone.presets import find_preset, get_preset
from birddet.backbone.vit import ViT, ViTConfig
from birddet.errors import WeightsError
from birddet.fileio import atomic_path

logger = logging.getLogger(__name__)

HUB_BASE_URL = "https://huggingface.co/birder-project"
CACHE_ENV = "BIRDDET_CACHE"
DEFAULT_RGB_STATS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


@dataclass(frozen=True)
class RegisteredWeights:
    """A published birder weights file: where it lives and the hash it must have."""

    name: str
    network: str
    repo: str
    sha256: str
    resolution: tuple[int, int]
    size_mb: float
    description: str

    @property
    def url(self) -> str:
        base = os.environ.get("BIRDDET_HUB_URL", HUB_BASE_URL).rstrip("/")
        return f"{base}/{self.repo}/resolve/main/{self.name}.pt"


# Hashes and sizes as listed in birder's model registry.
REGISTERED_WEIGHTS: dict[str, RegisteredWeights] = {
    w.name: w
    for w in (
        RegisteredWeights(
            "vit_reg4_m16_rms_avg_i-jepa-inat21",
            "vit_reg4_m16_rms_avg",
            "vit_reg4_m16_rms_avg_i-jepa-inat21",
            "7fde7375f5f9165114561f6288cdf086ba8b6635251304de08bd01883bb7a2da",
            (384, 384),
            167.4,
            "ViT-M/16 reg4, I-JEPA pretrained, fine-tuned on iNaturalist 2021 (10,000 species) at 384 px",
        ),
        RegisteredWeights(
            "vit_reg4_m16_rms_avg_i-jepa-inat21-256px",
            "vit_reg4_m16_rms_avg",
            "vit_reg4_m16_rms_avg_i-jepa-inat21",
            "e9b83e90c284877c859e92a05a35ff25884a06d3fd006d90ee576d58f71d3251",
            (256, 256),
            166.8,
            "ViT-M/16 reg4, I-JEPA pretrained, fine-tuned on iNaturalist 2021 (10,000 species) at 256 px",
        ),
        RegisteredWeights(
            "vit_reg4_m16_rms_avg_i-jepa",
            "vit_reg4_m16_rms_avg",
            "vit_reg4_m16_rms_avg_i-jepa",
            "0f5cd4e0acb44d1e429bbed342c60bf22087ecd1d7112363c3ceb909dcd9d547",
            (224, 224),
            146.2,
            "ViT-M/16 reg4 image encoder, I-JEPA pretrained, no classification head",
        ),
    )
}


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


@dataclass
class BackboneInfo:
    """What a loaded backbone came with: label mapping, normalisation and the size it classifies at."""

    network: str
    class_to_idx: dict[str, int]
    rgb_stats: dict[str, list[float]]
    size: tuple[int, int]
    signature: dict[str, Any]
    num_classes: int
    source: str | None = None
    birder_version: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def idx_to_class(self) -> dict[int, str]:
        return {v: k for k, v in self.class_to_idx.items()}


# -- cache and download ----------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where downloaded weights are kept: `$BIRDDET_CACHE`, else `$XDG_CACHE_HOME/birddet`, else `~/.cache/birddet`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "birddet"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_weights(name: str, *, cache: Path | None = None, progress: bool = True, timeout: float = 30.0) -> Path:
    """Fetch a registered weights file once into the cache and return its path.

    The download goes to a temporary file in the cache folder, is checked against the published sha256, and only
    then renamed into place, so an interrupted or corrupted download never leaves a file that looks finished.
    """
    if name not in REGISTERED_WEIGHTS:
        raise WeightsError(f"unknown weights {name!r}; registered weights: {', '.join(sorted(REGISTERED_WEIGHTS))}")
    spec = REGISTERED_WEIGHTS[name]
    dest = (cache or cache_dir()) / "weights" / f"{name}.pt"
    if dest.is_file():
        if sha256_of(dest) == spec.sha256:
            return dest
        logger.warning("cached %s has the wrong sha256; downloading it again", dest)
    url = spec.url
    try:
        with atomic_path(dest) as tmp:  # a broken or interrupted download never looks like a cached file
            _download(url, tmp, progress=progress, timeout=timeout, expected_mb=spec.size_mb)
            digest = sha256_of(tmp)
            if digest != spec.sha256:
                raise WeightsError(
                    f"downloaded {url} but its sha256 is {digest}, expected {spec.sha256}; the file was discarded, "
                    "try again (a proxy or a partial transfer can corrupt it)"
                )
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise WeightsError(
            f"could not download weights {name!r} from {url} ({err}). If this machine is offline, download that "
            f"file elsewhere and put it at {dest} (sha256 {spec.sha256}), or pass the file's path instead of the "
            f"name; set ${CACHE_ENV} to use another cache folder"
        ) from err
    return dest


def _download(url: str, dest: Path, *, progress: bool, timeout: float, expected_mb: float) -> None:
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "birddet"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:  # noqa: S310
        total = int(response.headers.get("Content-Length") or expected_mb * 1e6)
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name.split(".")[0], disable=not progress) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


def resolve_weights(source: str | os.PathLike) -> Path:
    """A path to an existing file, or a registered weights name (downloaded on first use)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if str(source) in REGISTERED_WEIGHTS:
        return download_weights(str(source))
    if path.suffix in (".pt", ".safetensors") or os.sep in str(source):
        raise WeightsError(f"weights file {path} does not exist")
    raise WeightsError(
        f"{source!r} is neither an existing file nor a registered weights name "
        f"({', '.join(sorted(REGISTERED_WEIGHTS))})"
    )


# -- reading files ---------------------------------------------------------------------------------------------
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
    net: ViT,
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


# -- building the network --------------------------------------------------------------------------------------
_ARCH_KEYS = ("conv_proj.weight", "reg_tokens", "pos_embedding", "encoder.block.0.norm1.weight")


def infer_config(
    state: dict[str, torch.Tensor], *, network: str | None = None, where: str = "file"
) -> tuple[str, ViTConfig]:
    """Recognise the architecture of a state dict; the head count (invisible in weights) comes from the preset."""
    absent = [k for k in _ARCH_KEYS if k not in state]
    if absent:
        sample = ", ".join(sorted(state)[:5])
        raise WeightsError(
            f"{where} does not hold a ViT with register tokens and RMSNorm (birder vit_reg4_*_rms_avg): missing "
            f"{', '.join(absent)}; its first keys are {sample}"
        )
    hidden, _, patch, _ = state["conv_proj.weight"].shape
    num_layers = len({k.split(".")[2] for k in state if k.startswith("encoder.block.")})
    mlp_dim = state["encoder.block.0.mlp.0.weight"].shape[0] if "encoder.block.0.mlp.0.weight" in state else -1
    num_reg = state["reg_tokens"].shape[1]
    name = network or find_preset(
        hidden_dim=hidden, num_layers=num_layers, mlp_dim=mlp_dim, patch_size=patch, num_reg_tokens=num_reg
    )
    if name is None:
        raise WeightsError(
            f"{where} holds a ViT (width {hidden}, depth {num_layers}, MLP {mlp_dim}, patch {patch}, "
            f"{num_reg} register tokens) that matches no birddet preset; pass network=<preset> if it is a variant"
        )
    return name, get_preset(name)


M = TypeVar("M", bound=nn.Module)


def build_matching(
    build: Callable[[], M],
    state: dict[str, torch.Tensor],
    *,
    where: str,
    claims: Callable[[str], str],
    hint: str = "",
) -> M:
    """`build()` a network that fits `state` exactly, without ever allocating for sizes the state does not have.

    An untrusted file's settings (a config, a signature) decide the network's sizes, and a hostile or damaged one
    can claim any size. So `build()` runs first on the `meta` device, where tensors have shapes but no memory, and
    every parameter and buffer is compared with `state`: a missing or extra key, or a shape that differs, is a
    `WeightsError` naming the file, the key, the shape the settings make (`claims(key)` says which settings) and
    the stored shape (`hint` is appended to the missing/extra keys message). Only then is the network built for real and loaded strictly, so what it allocates is what
    the file holds.
    """
    with torch.device("meta"):
        probe = build()
    expected = probe.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) ({', '.join(missing[:5])})")
        if extra:
            parts.append(f"unexpected {len(extra)} key(s) ({', '.join(extra[:5])})")
        raise WeightsError(f"{where} does not match {claims('')}: {'; '.join(parts)}{hint}")
    wrong = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        k = wrong[0]
        raise WeightsError(
            f"{where}: {claims(k)} make {k} of shape {tuple(expected[k].shape)}, but the file stores "
            f"{tuple(state[k].shape)} ({len(wrong)} tensor(s) differ); the file's settings do not describe its "
            "weights: it is damaged or was edited"
        )
    del probe, expected
    net = build()
    net.load_state_dict(state, strict=True)
    return net


def build_from_state(
    state: dict[str, torch.Tensor],
    *,
    image_size: tuple[int, int],
    num_classes: int,
    network: str | None = None,
    where: str = "file",
) -> tuple[str, ViT]:
    """Build a `ViT` for a birder state dict and load it strictly, explaining any mismatch (see `build_matching`:
    the signature's input size and class count are checked against the tensors before anything is allocated)."""
    name, cfg = infer_config(state, network=network, where=where)

    def claims(key: str) -> str:
        if key.startswith("classifier."):
            return f"its signature's {num_classes} classes"
        if key == "pos_embedding":
            return f"its signature's input size {image_size[0]}x{image_size[1]}"
        return f"birddet's {name}"

    net = build_matching(
        lambda: ViT(cfg, num_classes=num_classes, image_size=image_size),
        state,
        where=where,
        claims=claims,
        hint=". It may be another architecture (e.g. LayerNorm or class-token ViT) or an incomplete file",
    )
    return name, net


def load_backbone(
    source: str | os.PathLike,
    *,
    size: int | tuple[int, int] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    network: str | None = None,
) -> tuple[ViT, BackboneInfo]:
    """Load a birder weights file (`.pt`, `.safetensors`) or registered weights name as a birddet `ViT`.

    `size` is the classification input size recorded in `info.size` (default: the size the file was trained at);
    the network itself accepts any multiple of the patch size. Returns `(net, info)` with the net in eval mode.
    """
    path = resolve_weights(source)
    bf = read_birder_file(path)
    name, net = build_from_state(
        bf.state, image_size=bf.input_size, num_classes=bf.num_classes, network=network, where=str(path)
    )
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size[0] % net.patch_size or size[1] % net.patch_size:
            raise WeightsError(f"size {size} must be a multiple of the patch size {net.patch_size}")
    net.to(device=device, dtype=dtype).eval()
    info = BackboneInfo(
        network=name,
        class_to_idx=bf.class_to_idx,
        rgb_stats=bf.rgb_stats,
        size=tuple(size) if size is not None else bf.input_size,
        signature=bf.signature,
        num_classes=bf.num_classes,
        source=str(source),
        birder_version=bf.birder_version,
        config=dict(bf.config or {}),
    )
    return net, info
