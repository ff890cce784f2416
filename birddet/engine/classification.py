"""The species classifier as a task on the shared training loop (`birddet train-classifier`).

It trains a birder-family `ViT` or ResNet v1 (`model.backbone.preset`, e.g. `resnet_v1_10` from random init) on
crops of the boxes of a COCO dataset (`data.crops.CocoCrops`: predict's crop rule, then augmentation), a box's
category being its class; rare classes weigh more in the loss (`data.balance: loss`). The loop (`engine/loop.py`)
supplies layer-wise LR decay, warmup + cosine, AMP, EMA, accumulation, DDP and exact resume, as for the detector.

Run folder: `best.pt` is a **birder-format classifier file** (`state`, `class_to_idx`, `rgb_stats`, `signature`,
`task`, and `config` for presets other than ViT-M/16; birder loads a ResNet preset's file as `resnet_v1_18`) at
the crop size, so `birddet predict --classifier RUN/best.pt` and birder's own `load_model` read it as it is;
`last.pt` holds the raw weights and the training state; `metrics.json` holds `top1`, `top5` (more than 5 classes),
`per_class` accuracy and the confusion matrix, also drawn as `confusion_matrix.png`; `accuracy.png` is top-1
against the epoch.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from birddet import __version__
from birddet.config import ClassifierConfig, config_to_dict
from birddet.engine import distributed as D
from birddet.engine.loop import run_training
from birddet.engine.optim import build_optimizer
from birddet.engine.task import Task, resolve_data_paths
from birddet.errors import InputError
from birddet.fileio import atomic_torch_save, atomic_write_json

logger = logging.getLogger(__name__)

TASK_NAME = "species_classifier"
#: The ViT's new layers for fine-tuning: final norm and head take the full LR, blocks a layer-decayed one.
HEAD_PREFIXES = ("norm.", "classifier.")
_LAST_KEYS = ("model", "config", "class_names", "rgb_stats", "network", "training")


def class_weighted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None, *, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy with label smoothing, each crop's loss weighted by its own class's weight (`data.balance: loss`).

    Why not `F.cross_entropy(weight=..., label_smoothing=...)`: PyTorch weights the smoothing term of every crop by
    the weights of all classes, so each soft target leans toward the rare classes; with 970:30 crops the common
    class's top-1 falls to 0 at the loss minimum. Here the smoothed loss of a crop is weighted by its target's
    weight and normalised by the sum of those weights, which is exactly PyTorch's weighted mean when
    `label_smoothing` is 0.
    """
    per_crop = F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)
    if weight is None:
        return per_crop.mean()
    w = weight[targets]
    return (per_crop * w).sum() / w.sum()


class ClassificationTask(Task):
    """A ViT or ResNet on box crops; `best.pt` is the birder classifier file with the highest val top-1."""

    metric = "top1"

    def __init__(self, cfg: ClassifierConfig, ctx: D.DistContext) -> None:
        super().__init__(cfg, ctx)
        self.val_set: Any = None
        self.paths: Any = None
        self.net: Any = None
        self.network = cfg.model.backbone.preset
        self.rgb_stats: dict[str, list[float]] = {}
        self.class_weights: torch.Tensor | None = None

    # -- setup ---------------------------------------------------------------------------------------------------
    def read_checkpoint(self, path: Path) -> dict[str, Any]:
        from birddet.engine.checkpoint import load_weights_only

        ckpt = load_weights_only(path)
        missing = [k for k in _LAST_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        if missing or ckpt.get("task") != TASK_NAME:
            raise InputError(
                f"cannot resume from {path}: it is not the last.pt of a train-classifier run (missing "
                f"{', '.join(missing) or 'task=' + TASK_NAME}); resume it with the command that wrote it"
            )
        return ckpt

    def build_data(self, ckpt: dict[str, Any] | None) -> None:
        self.paths = resolve_data_paths(self.cfg, self.ctx)
        self._make_datasets(list(ckpt["class_names"]) if ckpt else None)

    def _make_datasets(self, class_names: list[str] | None) -> None:
        from birddet.data.crops import CocoCrops, CropAugment

        p, size = self.paths, self.cfg.model.image_size
        self.train_set = CocoCrops(
            p.train_ann,
            p.train_images,
            size=size,
            rgb_stats=self.rgb_stats,
            class_names=class_names,
            augment=CropAugment(self.cfg.data.augment),
        )
        self.val_set = CocoCrops(
            p.val_ann,
            p.val_images,
            size=size,
            rgb_stats=self.rgb_stats,
            class_names=self.train_set.class_names,
            skip_bad_images=False,
        )
        if self.cfg.data.cache_crops:
            self.train_set.cache_crops()
            self.val_set.cache_crops()
        counts = self.train_set.class_counts()
        if self.cfg.data.balance == "loss":
            # n / (C * n_c): a class's total weight is the same for every class; the mean weight per crop is 1.
            total = sum(counts)
            self.class_weights = torch.tensor([total / (len(counts) * c) for c in counts], dtype=torch.float32)
        logger.info(
            "species classes (crops in train): %s",
            ", ".join(f"{n} ({c})" for n, c in zip(self.train_set.class_names, counts, strict=True)),
        )

    def build_model(self, ckpt: dict[str, Any] | None) -> torch.nn.Module:
        from birddet.backbone.presets import build_network, get_classifier_preset
        from birddet.models.classifier import build_classifier_net

        names = self.train_set.class_names
        if ckpt is not None:
            side = self.cfg.model.image_size
            net = build_network(get_classifier_preset(ckpt["network"]), len(names), (side, side))
            net.load_state_dict(ckpt["model"], strict=True)
            net.freeze(self.cfg.model.backbone.freeze_blocks)
            net.set_grad_checkpointing(self.cfg.model.backbone.grad_checkpointing)
            self.network, rgb_stats = str(ckpt["network"]), dict(ckpt["rgb_stats"])
        else:
            net, self.network, rgb_stats, file_names = build_classifier_net(self.cfg.model, names)
            if file_names != names:  # model.head=keep: the labels follow the file's class order
                self._make_datasets(file_names)
        self.rgb_stats = {k: list(v) for k, v in rgb_stats.items()}
        self.train_set.rgb_stats = self.val_set.rgb_stats = self.rgb_stats  # normalise as the weights file says
        self.net = net.train()
        return self.net

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(model, self.cfg.train, body_prefix="", head_prefixes=HEAD_PREFIXES)

    def resolved_config(self, model: torch.nn.Module) -> ClassifierConfig:
        cfg = copy.deepcopy(self.cfg)
        cfg.model.backbone.preset = self.network
        cfg.model.rgb_stats = {k: list(v) for k, v in self.rgb_stats.items()}
        return cfg

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.train_set.class_names)}

    # -- training ------------------------------------------------------------------------------------------------
    def collate(self, batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        crops, labels = zip(*batch)
        return torch.stack(crops), torch.tensor(labels, dtype=torch.long)

    def forward(self, model: torch.nn.Module, inputs: Any, targets: Any, device: torch.device) -> dict[str, Any]:
        logits = model(inputs.to(device, non_blocking=True))
        weight = self.class_weights.to(device) if self.class_weights is not None else None
        loss = class_weighted_cross_entropy(
            logits.float(), targets.to(device), weight, label_smoothing=self.cfg.train.label_smoothing
        )
        return {"loss_cls": loss}

    # -- validation and files ------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, model: torch.nn.Module) -> tuple[dict[str, float], Any] | None:
        from birddet.engine.reports import classifier_metrics

        t = self.cfg.train
        device = self.ctx.device
        loader = DataLoader(
            Subset(self.val_set, D.shard_indices(len(self.val_set))),
            batch_size=t.eval_batch_size,
            shuffle=False,
            num_workers=self.cfg.data.workers,
            collate_fn=self.collate,
            generator=torch.Generator().manual_seed(0),  # keeps the training RNG stream untouched
        )
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.amp)
        k = min(5, len(self.train_set.class_names))
        was_training = model.training
        model.eval()
        rows: list[tuple[int, list[int]]] = []
        try:
            for crops, labels in loader:
                with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                    logits = model(crops.to(device, non_blocking=True))
                top = logits.float().topk(k, dim=1).indices.cpu().tolist()
                rows.extend(zip(labels.tolist(), top, strict=True))
        finally:
            model.train(was_training)
        rows = D.gather_lists(rows)
        if not self.ctx.is_main:
            return None
        metrics = classifier_metrics([r[0] for r in rows], [r[1] for r in rows], self.train_set.class_names)
        stats = {key: metrics[key] for key in ("top1", "top5") if key in metrics}
        return stats, metrics

    def describe(self, stats: dict[str, float]) -> str:
        top5 = f" top-5 {stats['top5']:.4f}" if "top5" in stats else ""
        return f"val top-1 {stats['top1']:.4f}{top5}"

    def write_best(self, out: Path, model: torch.nn.Module, result: Any) -> None:
        from birddet.backbone.weights import save_birder_file
        from birddet.engine.reports import plot_class_confusion
        from birddet.models.classifier import birder_config

        net = copy.deepcopy(model).cpu().eval()
        save_birder_file(
            net,
            out / "best.pt",
            class_to_idx=self.class_to_idx,
            rgb_stats=self.rgb_stats,
            config=birder_config(self.network),
        )
        atomic_write_json(out / "metrics.json", result, indent=2)
        try:
            plot_class_confusion(result, out / "confusion_matrix.png")
        except Exception:  # noqa: BLE001 - the numbers are on disk already
            logger.exception("could not draw %s", out / "confusion_matrix.png")

    def save_last(self, path: Path, model: torch.nn.Module, training: dict[str, Any]) -> None:
        payload = {
            "model": model.state_dict(),
            "config": config_to_dict(self.resolved_config(model)),
            "class_names": list(self.train_set.class_names),
            "rgb_stats": dict(self.rgb_stats),
            "network": self.network,
            "task": TASK_NAME,
            "birddet_version": __version__,
            "training": training,
        }
        atomic_torch_save(payload, path)

    def plot_history(self, history: list[dict[str, Any]], out: Path) -> None:
        from birddet.engine.plots import plot_accuracy

        plot_accuracy(history, out / "accuracy.png")


def train_classifier(cfg: ClassifierConfig, out_dir: Path, *, resume: bool = False) -> dict[str, Any]:
    """Train the species classifier described by `cfg` into `out_dir` (see the module docstring); returns a summary.

    Under `torchrun` every rank calls this; rank 0 writes the files and the summary is the same on every rank.
    """
    ctx = D.init_distributed(cfg.train.device)
    summary = run_training(ClassificationTask(cfg, ctx), Path(out_dir), resume=resume)
    if ctx.is_main:
        logger.info(
            "best val top-1 %.4f at epoch %d; classifier file %s",
            summary["best_top1"], summary["best_epoch"], Path(out_dir) / "best.pt",
        )  # fmt: skip
    return summary
