"""The detector as a task on the shared training loop (`birddet train`).

What is the detector's own: `CocoDetection` datasets with the large-scale-jitter transforms, aspect-ratio grouped
batches, torchvision Faster R-CNN's loss parts, validation with pycocotools (`metric` = COCO AP) and the birddet
detector checkpoint format (`engine/checkpoint.py`). Everything else is the loop's (`engine/loop.py`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from birddet.config import Config
from birddet.engine import distributed as D
from birddet.engine.optim import build_optimizer
from birddet.engine.run_state import module_state
from birddet.engine.task import DataPaths, Task, epoch_batches, resolve_data_paths
from birddet.errors import InputError

logger = logging.getLogger(__name__)


def build_datasets(cfg: Config, paths: DataPaths, categories: dict[int, str] | None = None) -> tuple[Any, Any]:
    """Training and validation `CocoDetection`s, after validating both splits completely (`check_training_splits`).

    Every fatal problem in either split is reported in one `InputError` before step 1, rather than the first one
    only, or a bad val box stopping the run at its first evaluation. `categories` (from a checkpoint being resumed)
    fixes the label mapping; otherwise the training file defines it. Both splits are matched to it by name, so their
    ids may differ from it (see `align_categories`).
    """
    from birddet.data.check import check_training_splits
    from birddet.data.coco import CategoryMap, CocoDetection
    from birddet.data.transforms import build_eval_transforms, build_train_transforms

    train_check, val_check = check_training_splits(
        (paths.train_ann, paths.train_images), (paths.val_ann, paths.val_images), categories
    )
    for line in train_check.warnings + val_check.warnings:
        logger.warning(line)
    size = cfg.model.input_size
    aug = cfg.data.augment
    cmap = CategoryMap.from_dict(categories) if categories else None
    try:
        train_transforms = build_train_transforms(
            size,
            scale_range=aug.scale_range,
            hflip=aug.hflip,
            color_jitter=aug.color_jitter,
            mosaic=aug.mosaic,
            mosaic_off_epochs=aug.mosaic_off_epochs,
            copy_paste=aug.copy_paste,
        )
    except ValueError as err:
        raise InputError(f"data.augment: {err}") from None
    train_ds = CocoDetection(
        paths.train_ann,
        paths.train_images,
        train_transforms,
        category_map=cmap,
        validated=(train_check.data, train_check.report),
    )
    tile = cfg.data.tile
    val_ds = CocoDetection(
        paths.val_ann,
        paths.val_images,
        # tiled: validation runs tiled prediction on the original images (see `val_tile_options`)
        None if tile.size else build_eval_transforms(cfg.model.inference_size),
        category_map=train_ds.category_map,
        skip_bad_images=False,
        validated=(val_check.data, val_check.report),
    )
    val_ds.category_alignment.log(logger)
    if len(train_ds) == 0:
        raise InputError(f"{paths.train_ann} has no images to train on")
    if cfg.data.cache_images and tile.size:
        logger.warning("data.cache_images is ignored with data.tile: windows are cut from the full-resolution images")
    elif cfg.data.cache_images:
        train_ds.cache_pixels(train_transforms.source_side)
    if tile.size:
        from birddet.data.tiled import TiledCocoDetection

        if aug.mosaic or aug.copy_paste:
            raise InputError(
                "data.tile cannot be combined with data.augment.mosaic or copy_paste yet (their partner images would "
                "be whole images, not windows); set those to 0 for tiled training"
            )

        train_ds = TiledCocoDetection(
            train_ds,
            size=tile.size,
            overlap=tile.overlap,
            min_visibility=tile.min_visibility,
            negatives=tile.negatives,
            seed=cfg.train.seed,
        )
    if len(val_ds) == 0:
        raise InputError(f"{paths.val_ann} has no images to validate on")
    return train_ds, val_ds


def val_tile_options(cfg: Config) -> Any:
    """Validation of a tiled run predicts the way the model will be used: tiled, with the training windows."""
    if not cfg.data.tile.size:
        return None
    from birddet.pipeline.tiling import TileOptions

    return TileOptions(size=cfg.data.tile.size, overlap=cfg.data.tile.overlap, batch_size=cfg.train.eval_batch_size)


class DetectionTask(Task):
    """Faster R-CNN on a COCO split; `best.pt` is the detector checkpoint with the highest val AP."""

    metric = "AP"

    def __init__(self, cfg: Config, ctx: D.DistContext) -> None:
        super().__init__(cfg, ctx)
        self.val_set: Any = None
        self.val_ann = ""
        self.detector: Any = None
        self.checkpoint_path = "last.pt"

    def read_checkpoint(self, path: Path) -> dict[str, Any]:
        from birddet.engine.checkpoint import read_checkpoint

        self.checkpoint_path = str(path)
        return read_checkpoint(path)

    def build_data(self, ckpt: dict[str, Any] | None) -> None:
        paths = resolve_data_paths(self.cfg, self.ctx)
        self.train_set, self.val_set = build_datasets(self.cfg, paths, ckpt["categories"] if ckpt else None)
        self.val_ann = paths.val_ann

    def build_model(self, ckpt: dict[str, Any] | None) -> torch.nn.Module:
        from birddet.engine.checkpoint import detector_from_checkpoint
        from birddet.models.detector import build_detector

        if ckpt is not None:
            self.detector = detector_from_checkpoint(ckpt, self.checkpoint_path).train()
        else:
            self.detector = build_detector(self.cfg, self.train_set.category_map.as_dict()).train()
        # Training pads its crops with the model's own mean, the value eval and predict pad with (torchvision pads
        # the normalised batch with 0); the stats are known only now (the weights file may name them).
        self.train_set.transforms.use_rgb_stats(self.detector.config.model.rgb_stats)
        return self.detector

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(model, self.cfg.train)

    def resolved_config(self, model: torch.nn.Module) -> Config:
        return model.config  # type: ignore[return-value]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return epoch_batches(
            self.train_set, self.cfg.train, epoch, self.ctx, group_by_aspect=self.cfg.data.aspect_ratio_grouping
        )

    def forward(self, model: torch.nn.Module, inputs: Any, targets: Any, device: torch.device) -> dict[str, Any]:
        images = [img.to(device, non_blocking=True) for img in inputs]
        targets = [
            {"boxes": t["boxes"].to(device, non_blocking=True), "labels": t["labels"].to(device)} for t in targets
        ]
        return model(images, targets)

    def validate(self, model: torch.nn.Module) -> tuple[dict[str, float], Any] | None:
        from birddet.engine.evaluator import evaluate, load_ground_truth
        from birddet.engine.runner import coco_max_dets, run_detector

        t = self.cfg.train
        results = run_detector(
            model,
            self.val_set,
            batch_size=t.eval_batch_size,
            workers=self.cfg.data.workers,
            amp=t.amp,
            device=self.ctx.device,
            tile=val_tile_options(self.cfg),
            categories=self.val_set.category_alignment,
        )
        if not self.ctx.is_main:
            return None
        # Scored with as many boxes per image as the model keeps (`birddet eval` uses the same rule), or a flock
        # of 300 would be scored on its best 100 boxes and `best.pt` chosen on that.
        result = evaluate(load_ground_truth(self.val_ann), results, max_dets=coco_max_dets(model))
        return {k: float(v) for k, v in result.stats.items()}, result

    def describe(self, stats: dict[str, float]) -> str:
        return f"val AP {stats['AP']:.4f} AP50 {stats['AP50']:.4f}"

    def write_best(self, out: Path, model: torch.nn.Module, result: Any) -> None:
        from birddet.engine.checkpoint import save_checkpoint
        from birddet.engine.reports import write_metrics_json

        save_checkpoint(out / "best.pt", self.detector, state_dict=module_state(model))
        write_metrics_json(result, out / "metrics.json")

    def save_last(self, path: Path, model: torch.nn.Module, training: dict[str, Any]) -> None:
        from birddet.engine.checkpoint import save_checkpoint

        save_checkpoint(path, self.detector, training=training)

    def plot_history(self, history: list[dict[str, Any]], out: Path) -> None:
        from birddet.engine.plots import plot_ap

        plot_ap(history, out / "ap.png")
