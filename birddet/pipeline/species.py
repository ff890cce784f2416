"""The second stage: a frozen birder species classifier applied to detection crops.

:class:`SpeciesClassifier` owns the classifier network, its preprocessing (size and ``rgb_stats`` from the birder
file), the taxonomy parsed from its class names, an optional restriction to a taxon or species list, top-k and
the taxonomic roll-up. Crops from many images go through one forward pass (:meth:`classify_images`), because
on both CPU and GPU one batch of N crops is much cheaper than N calls of one crop.

The classifier is a separate copy of the network even when the detector's backbone came from the same file:
fine-tuning the detector changes its backbone, and the species head only makes sense with the weights it was
trained with.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from birddet.backbone.vit import ViT
from birddet.backbone.weights import REGISTERED_WEIGHTS, BackboneInfo, WeightsError, cache_dir, load_backbone
from birddet.errors import InputError
from birddet.models.classifier import CROP_MARGIN, crops_for_classifier
from birddet.models.onnx_runtime import is_onnx_path, load_onnx_classifier
from birddet.pipeline.results import Classification
from birddet.pipeline.taxonomy import Rollup, Taxonomy

__all__ = ["CROP_MARGIN", "SpeciesClassifier", "SpeciesResult", "default_classifier_source"]

logger = logging.getLogger(__name__)

# Upper bound on crops per forward pass: a frame full of a flock must not exhaust GPU memory.
MAX_CROPS_PER_PASS = 64


@dataclass
class SpeciesResult:
    """Top-k species (highest first) and the roll-up for one crop."""

    classifications: list[Classification]
    rollup: Rollup


class SpeciesClassifier:
    """Frozen species classifier over detection crops.

    ``net`` maps normalised crops ``[N, 3, H, W]`` (``H, W = size``) to logits ``[N, C]``; probabilities are the
    softmax, optionally restricted to ``allowed`` class indices and renormalised (so "Aves only" redistributes
    the mass the classifier put on mammals among birds). ``top_k`` is capped by the number of allowed classes so
    a restricted result never lists a class that was filtered out.
    """

    def __init__(
        self,
        net: ViT,
        info: BackboneInfo,
        *,
        taxonomy: Taxonomy,
        allowed: Sequence[int] | None = None,
        top_k: int = 5,
        rollup_threshold: float = 0.5,
        margin: float = CROP_MARGIN,
        amp: bool = False,
        name: str | None = None,
    ) -> None:
        if top_k < 1:
            raise InputError(f"--top-k must be at least 1, got {top_k}")
        if not 0.0 <= rollup_threshold <= 1.0:
            raise InputError(f"--rollup-threshold must be in [0, 1], got {rollup_threshold}")
        if len(taxonomy) != info.num_classes:
            raise InputError(f"classifier has {info.num_classes} outputs but {len(taxonomy)} class names")
        self.net = net.eval().requires_grad_(False)
        self.info = info
        self.taxonomy = taxonomy
        self.allowed = sorted(set(allowed)) if allowed is not None else None
        self.top_k = top_k
        self.rollup_threshold = rollup_threshold
        self.margin = margin
        self.amp = amp
        self.name = name or info.source or info.network
        self.size: tuple[int, int] = (int(info.size[0]), int(info.size[1]))
        self.forward_calls = 0  # passes through the network; benchmarks and tests read it
        device = next(net.parameters()).device
        self._allowed_t = None if self.allowed is None else torch.tensor(self.allowed, dtype=torch.long, device=device)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @classmethod
    def load(
        cls,
        source: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        common_names: str | os.PathLike[str] | None = None,
        taxon: str | None = None,
        species_list: str | os.PathLike[str] | None = None,
        top_k: int = 5,
        rollup_threshold: float = 0.5,
        amp: bool = False,
        size: int | tuple[int, int] | None = None,
    ) -> SpeciesClassifier:
        """Load a birder classifier file or registered name; ``taxon`` and ``species_list`` both restrict.

        ``size`` overrides the crop size (default: the size the file was trained at); a smaller size trades some
        accuracy for speed, since the classifier's cost grows with the square of the side. When both are given the allowed set is their intersection (a species list for a region, further limited
        to birds); an empty intersection is an input error rather than a run that names nothing.
        """
        if is_onnx_path(source):  # exported by `birddet export --classifier`: runs on onnxruntime
            net, info = load_onnx_classifier(source, size)
        else:
            net, info = load_backbone(source, device=device, size=size)
        if info.num_classes <= 0 or not info.class_to_idx:
            raise WeightsError(
                f"{source} has no classification head (it is a feature encoder); pass a species classifier such as "
                "vit_reg4_m16_rms_avg_i-jepa-inat21 with --classifier"
            )
        taxonomy = Taxonomy(info.class_to_idx, common_names)
        allowed: set[int] | None = None
        if taxon:
            allowed = set(taxonomy.indices_in_taxon(taxon))
        if species_list:
            listed = set(taxonomy.indices_for_species_list(species_list))
            allowed = listed if allowed is None else allowed & listed
            if not allowed:
                raise InputError(f"no species in {species_list} belongs to taxon {taxon!r}; nothing could be named")
        return cls(
            net,
            info,
            taxonomy=taxonomy,
            allowed=None if allowed is None else sorted(allowed),
            top_k=top_k,
            rollup_threshold=rollup_threshold,
            amp=amp,
            name=str(source),
        )

    # -- preprocessing ------------------------------------------------------------------------------------

    def crops(self, image: torch.Tensor, boxes_xyxy: torch.Tensor) -> torch.Tensor:
        """Normalised square crops ``[N, 3, H, W]`` of a uint8 image ``[3, H, W]`` for boxes ``[N, 4]`` (pixels)."""
        return crops_for_classifier(image, boxes_xyxy.float().cpu(), self.size, self.info.rgb_stats, margin=self.margin)

    # -- inference ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def probabilities(self, crops: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[N, C]`` (float32, on the classifier's device), restricted if a filter is set."""
        if crops.shape[0] == 0:
            return torch.empty((0, len(self.taxonomy)), device=self.device)
        device = self.device
        outs = []
        for start in range(0, crops.shape[0], MAX_CROPS_PER_PASS):
            chunk = crops[start : start + MAX_CROPS_PER_PASS].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.net(chunk)
            self.forward_calls += 1
            outs.append(logits.float().softmax(dim=-1))
        probs = torch.cat(outs)
        if self.allowed is not None:
            probs = self.taxonomy.restrict(probs, self.allowed)
        return probs

    def results(self, probs: torch.Tensor) -> list[SpeciesResult]:
        """Top-k and roll-up for each row of ``probs`` (as returned by :meth:`probabilities`)."""
        if probs.shape[0] == 0:
            return []
        if self._allowed_t is not None:
            # Top-k among the allowed classes only: filtered classes have probability 0 and must not be listed.
            allowed = self._allowed_t.to(probs.device)
            k = min(self.top_k, allowed.numel())
            scores, pos = probs.index_select(1, allowed).topk(k, dim=1)
            indices = allowed[pos]
        else:
            k = min(self.top_k, probs.shape[1])
            scores, indices = probs.topk(k, dim=1)
        rollups = self.taxonomy.rollup(probs, self.rollup_threshold)
        out = []
        for s_row, i_row, rollup in zip(scores.cpu().tolist(), indices.cpu().tolist(), rollups, strict=True):
            out.append(SpeciesResult([Classification(int(i), float(s)) for i, s in zip(i_row, s_row)], rollup))
        return out

    def classify(self, crops: torch.Tensor) -> list[SpeciesResult]:
        """Prepared crops -> one :class:`SpeciesResult` per crop."""
        return self.results(self.probabilities(crops))

    def classify_images(
        self, images: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]
    ) -> list[list[SpeciesResult]]:
        """Crop every box of every image and classify them all in one pass (chunked at 64 crops).

        ``images[i]`` is a uint8 ``[3, H, W]`` tensor and ``boxes[i]`` its ``[N_i, 4]`` xyxy boxes in those pixels;
        returns a list per image, in box order.
        """
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box tensors")
        crops = [self.crops(img, b) for img, b in zip(images, boxes, strict=True) if b.shape[0] > 0]
        flat = self.classify(torch.cat(crops)) if crops else []
        out: list[list[SpeciesResult]] = []
        start = 0
        for b in boxes:
            out.append(flat[start : start + b.shape[0]])
            start += b.shape[0]
        return out


def default_classifier_source(weights: str | None) -> tuple[str | None, str]:
    """The classifier a detector implies (the birder weights its backbone came from), or None and why not.

    Only a source that is available without a network download counts: an existing file, or a registered name
    already in the cache. Detection still works without a classifier, so a missing one is a warning, not an
    error; downloading 170 MB behind the user's back would be a surprise on a metered or offline machine.
    """
    if not weights:
        return None, "the detector's backbone was not initialised from a birder classifier file"
    path = Path(weights).expanduser()
    if path.is_file():
        return str(path), ""
    if weights in REGISTERED_WEIGHTS:
        cached = cache_dir() / "weights" / f"{weights}.pt"
        if cached.is_file():
            return weights, ""
        return None, f"registered weights {weights!r} are not in the cache ({cached}); pass --classifier {weights}"
    return None, f"the detector's backbone weights {weights!r} are not available on this machine"
