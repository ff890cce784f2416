"""Birder weights: the registry of published files, download and cache, and building a `ViT` from a file.

Reading a file (`.pt` or `.safetensors`, every field type-checked, nothing unpickled but tensors and plain
containers) is `birddet.backbone.birder_files`; its names are re-exported here.

A weights file is untrusted input, and its small fields size big tensors: a signature claiming 3e9 classes would
make a 768 GB classifier head. So every network is first built on the `meta` device (shapes only, no memory) and
compared tensor by tensor with the stored state dict (`build_matching`); only a network whose every shape is the
file's own is then built for real, so memory is bounded by the file's size.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from birddet.backbone.birder_files import (  # noqa: F401 (re-exported: they lived here, callers import them)
    DEFAULT_RGB_STATS,
    BirderFile,
    check_birder_fields,
    load_untrusted,
    read_birder_file,
    save_birder_file,
)
from birddet.backbone.presets import RESNET_PRESETS, build_network, find_preset, find_resnet_preset, get_preset
from birddet.backbone.resnet import ResNet, ResNetConfig
from birddet.backbone.vit import ViT, ViTConfig
from birddet.errors import WeightsError
from birddet.fileio import atomic_path

logger = logging.getLogger(__name__)

HUB_BASE_URL = "https://huggingface.co/birder-project"
CACHE_ENV = "BIRDDET_CACHE"


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


# -- building the network --------------------------------------------------------------------------------------
_ARCH_KEYS = ("conv_proj.weight", "reg_tokens", "pos_embedding", "encoder.block.0.norm1.weight")


_RESNET_STEM = "stem.0.0.weight"
_RESNET_STAGE = re.compile(r"body\.stage(\d+)\.(\d+)\.")


def is_resnet_state(state: dict[str, torch.Tensor]) -> bool:
    """birder's ResNet v1 layout (a 7x7 stem and `body.stage*` blocks) rather than the ViT's."""
    return _RESNET_STEM in state and any(_RESNET_STAGE.match(k) for k in state)


def infer_resnet_config(state: dict[str, torch.Tensor], *, where: str = "file") -> tuple[str, ResNetConfig]:
    """Read a ResNet v1's widths, depths and block type from its tensors; the name is the matching preset."""
    blocks: dict[int, set[int]] = {}
    for key in state:
        match = _RESNET_STAGE.match(key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    stages = sorted(blocks)
    if stages != list(range(1, len(stages) + 1)) or any(blocks[i] != set(range(len(blocks[i]))) for i in stages):
        raise WeightsError(f"{where}: its ResNet stages or blocks are not numbered from 1 and 0 without gaps")
    bottle_neck = "body.stage1.0.block1.3.weight" in state
    last_norm = 3 if bottle_neck else 2
    try:
        widths = [int(state[_RESNET_STEM].shape[0])]
        widths += [int(state[f"body.stage{i}.0.block1.{last_norm}.weight"].shape[0]) for i in stages]
    except KeyError as err:
        raise WeightsError(f"{where}: a ResNet v1 block is incomplete (no {err.args[0]})") from None
    cfg = ResNetConfig(filter_list=tuple(widths), units=tuple(len(blocks[i]) for i in stages), bottle_neck=bottle_neck)
    name = find_resnet_preset(cfg)
    if name is None:
        raise WeightsError(
            f"{where} holds a ResNet v1 (widths {list(cfg.filter_list)}, blocks {list(cfg.units)}, "
            f"{'bottleneck' if bottle_neck else 'basic'} blocks) that matches no birddet preset "
            f"({', '.join(RESNET_PRESETS)})"
        )
    return name, cfg


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
) -> tuple[str, ViT | ResNet]:
    """Build a `ViT` (or a `ResNet`, for a ResNet v1 state) for a birder state dict and load it strictly,
    explaining any mismatch (see `build_matching`: the signature's input size and class count are checked against
    the tensors before anything is allocated)."""
    cfg: ViTConfig | ResNetConfig
    if is_resnet_state(state):
        name, cfg = infer_resnet_config(state, where=where)
        if network is not None and network != name:
            raise WeightsError(
                f"{where} holds the ResNet {name} (a species-classifier CNN), not the {network} asked for; a "
                "detector's backbone is a ViT"
            )
    else:
        name, cfg = infer_config(state, network=network, where=where)

    def claims(key: str) -> str:
        if key.startswith("classifier."):
            return f"its signature's {num_classes} classes"
        if key == "pos_embedding":
            return f"its signature's input size {image_size[0]}x{image_size[1]}"
        return f"birddet's {name}"

    net = build_matching(
        lambda: build_network(cfg, num_classes, image_size),
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
) -> tuple[ViT | ResNet, BackboneInfo]:
    """Load a birder weights file (`.pt`, `.safetensors`) or registered weights name as a birddet `ViT` (or
    `ResNet`, for a ResNet v1 species classifier).

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
