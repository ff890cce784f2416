"""Run a detector over an annotated split and turn its output into COCO results (and, for `birddet eval`, a report).

`run_detector` is shared by the trainer's validation, `birddet eval` and two-stage eval: it writes what pycocotools
scores, i.e. boxes in each image's FRAME, the JSON's `width` x `height` (`CocoDetection.frame`; the ground truth is
in it, and a file that decodes to another size must not move the results), and the dataset's original COCO category
ids (the detector's categories matched to the dataset's by name, `align_categories`). The one rescale from the
pixels the detector saw to the frame is `_frame_results` (the detector's own resize is undone by torchvision
already); `coco_max_dets` is the one rule for how many boxes per image are scored. Under torchrun each rank runs a
strided shard and the lists are gathered, so evaluation happens once, on rank 0.

Every image of the split is scored under its own id: an image that cannot be decoded stops the run with an
`InputError` naming it (raised here, in the main process, so it reaches the user as one line even when a
DataLoader worker hit it), never replaced by another image.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from birddet.data.images import ImageLoadError
from birddet.engine import distributed as D
from birddet.errors import InputError
from birddet.fileio import atomic_write_json
from birddet.models.detector import coco_results, rescale_boxes
from birddet.pipeline.tiling import TileOptions

if TYPE_CHECKING:
    from birddet.data.coco import CategoryAlignment

logger = logging.getLogger(__name__)


def _collate(batch: list[Any]) -> tuple[Any, ...]:
    return tuple(zip(*batch))


def _amp_dtype(amp: bool | str) -> torch.dtype | None:
    """`True`/`"bf16"` -> bfloat16, `"fp16"` -> float16, `False`/`"none"` -> no autocast."""
    if amp is True or amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    return None


def _image_id(target: dict[str, Any]) -> int:
    value = target["image_id"]
    return int(value.item() if isinstance(value, torch.Tensor) else value)


def _orig_size(target: dict[str, Any]) -> tuple[int, int]:
    h, w = (
        int(v)
        for v in (
            target["orig_size"].tolist() if isinstance(target["orig_size"], torch.Tensor) else target["orig_size"]
        )
    )
    return h, w


def to_coco_results(
    output: dict[str, torch.Tensor], image: torch.Tensor, target: dict[str, Any], label_to_category: list[int]
) -> list[dict[str, Any]]:
    """One image's detections (torchvision's dict, boxes in `image`'s pixels) -> COCO result entries in its frame."""
    categories = [label_to_category[int(label)] for label in output["labels"].tolist()]
    return _frame_results(output["boxes"], output["scores"], categories, image, target)


def _frame_results(
    boxes: torch.Tensor, scores: torch.Tensor, categories: list[int], image: torch.Tensor, target: dict[str, Any]
) -> list[dict[str, Any]]:
    """xyxy `boxes` in the pixels of `image` (what the detector was given: the eval-resized image, or the decoded
    file when tiling) -> COCO results in the image's frame `target["orig_size"]`, one factor per axis."""
    if boxes.numel() == 0:
        return []
    framed = rescale_boxes(boxes, tuple(image.shape[-2:]), _orig_size(target))
    return coco_results(_image_id(target), framed, scores.cpu(), categories)


@dataclasses.dataclass(frozen=True)
class _Unreadable:
    """Stands in for an image that failed to decode, so the main process can stop with a one-line error."""

    image_id: int | None
    reason: str


class _ItemsOrFailures(Dataset):
    """`dataset[i]`, or `(_Unreadable, None)` when its image cannot be decoded.

    Raised inside a DataLoader worker, the error would reach the user wrapped in a multi-line worker traceback;
    returned as a value, it is raised by `run_detector` itself (`_check_readable`).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except ImageLoadError as err:
            ids = getattr(self.dataset, "image_ids", None)
            return _Unreadable(None if ids is None else int(ids[index]), " ".join(str(err).split())), None


def _check_readable(images: tuple[Any, ...], dataset: Dataset) -> None:
    for image in images:
        if isinstance(image, _Unreadable):
            ann = getattr(dataset, "ann_file", "the annotation file")
            raise InputError(
                f"{ann}: image id {image.image_id} cannot be decoded: {image.reason.rstrip('.')}. Evaluation scores "
                "every image of the split under its own id and never substitutes another, so fix or replace the "
                f"file, or remove image id {image.image_id} and its annotations from {ann}"
            )


@torch.no_grad()
def run_detector(
    detector: torch.nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 4,
    workers: int = 0,
    amp: bool | str = False,
    device: str | torch.device | None = None,
    progress: bool = False,
    tile: TileOptions | None = None,
    max_dets: int | None = None,
    categories: CategoryAlignment | None = None,
) -> list[dict[str, Any]]:
    """COCO results in each image's frame for every image of `dataset`, on every rank.

    `dataset` is a `CocoDetection` with eval transforms built with `skip_bad_images=False` (a substituted image
    would be scored under another image's id; an unreadable one raises `InputError` here). `detector` is a
    `BirdDetector` (or DDP around one); it is put in eval mode and restored afterwards. Each rank runs its own
    shard; the gathered list is returned everywhere so the caller decides who scores it. With `tile` the dataset
    must give decoded images (no transform) and `BirdDetector.predict` tiles each one; `max_dets` is the per-image
    box cap, None for the model's `detections_per_img` (`BirdDetector.box_cap`); score with `coco_max_dets`.

    `categories` (the dataset's `category_alignment` with the detector) writes each detection with the dataset's
    category id for its name and leaves out categories the dataset lacks, so the results score against the file
    whatever its numbering; None keeps the detector's own ids (two-stage eval, which drops the labels).
    """
    if getattr(dataset, "skip_bad_images", False):
        raise ValueError("run_detector needs a dataset built with skip_bad_images=False: evaluation never substitutes")
    module = D.unwrap_model(detector)
    if categories is not None and categories.model.as_dict() != module.categories:
        raise ValueError(
            f"run_detector: the alignment is for categories {categories.model.as_dict()}, the detector has "
            f"{module.categories}"
        )
    device = torch.device(device) if device is not None else next(module.parameters()).device
    shard = Subset(_ItemsOrFailures(dataset), D.shard_indices(len(dataset)))
    loader = DataLoader(
        shard,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        # A private generator keeps the global RNG untouched, so validation does not shift the training stream.
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
    )
    dtype = _amp_dtype(amp)
    was_training = module.training
    module.eval()
    results: list[dict[str, Any]] = []
    try:
        iterator = loader
        if progress and D.is_main_process():
            from tqdm import tqdm

            iterator = tqdm(loader, desc="eval", unit="batch", leave=False)
        conf = module.model.roi_heads.score_thresh
        for images, targets in iterator:
            _check_readable(images, dataset)
            if tile is not None:
                predictions = module.predict(
                    list(images), conf=conf, amp=dtype is not None, tile=tile, max_dets=max_dets
                )
                for pred, img, tgt in zip(predictions, images, targets):
                    results.extend(_frame_results(pred.boxes, pred.scores, pred.category_ids, img, tgt))
                continue
            batch = [img.to(device, non_blocking=True) for img in images]
            with (
                module.inference_caps(conf, max_dets),
                torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None),
            ):
                outputs = module(batch)
            for out, img, tgt in zip(outputs, images, targets):
                results.extend(to_coco_results(out, img, tgt, module.label_to_category))
    finally:
        module.train(was_training)
    if categories is not None:
        results = categories.dataset_results(results)
    return D.gather_lists(results)


def _gt_categories(ann: str | Path) -> dict[int, str]:
    """Category ids and names of a COCO file, read cheaply (full validation happens in `CocoDetection`)."""
    return _gt_category_use(ann)[0]


def _gt_category_use(ann: str | Path) -> tuple[dict[int, str], set[int]]:
    """`_gt_categories` plus the category ids the file's annotations use."""
    path = Path(ann)
    if not path.is_file():
        raise InputError(f"annotation file {path} does not exist; pass the COCO JSON of the split with --ann")
    try:
        data = json.loads(path.read_text())
        categories = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
        used = {int(a["category_id"]) for a in data.get("annotations", []) if "category_id" in a}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(
            f"{path}: cannot read its 'categories' and the annotations' category_id ({err}); is it a COCO detection "
            "file?"
        ) from None
    return categories, used


def check_categories(checkpoint_categories: dict[int, str], ann: str | Path, *, ckpt: str) -> CategoryAlignment:
    """Match the ground truth's categories to the checkpoint's by name (`align_categories`), before the detector is
    built: a category the ground truth's boxes use that the checkpoint does not know makes every score meaningless,
    while ids that differ for the same name are only a different numbering."""
    from birddet.data.coco import align_categories

    gt_categories, used = _gt_category_use(ann)
    return align_categories(
        checkpoint_categories, gt_categories, used=used, model_source=f"the checkpoint {ckpt}", dataset_source=str(ann)
    )


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    ann: str | Path,
    images: str | Path,
    out_dir: str | Path,
    batch_size: int | None = None,
    workers: int = 2,
    amp: bool | str | None = None,
    device: str = "auto",
    plots: bool = True,
    conf_threshold: float = 0.5,
    tile: TileOptions | None = None,
    max_dets: int | None = None,
    tta: str | None = None,
) -> Any:
    """`birddet eval`: detect on an annotated split, write `results.json` and the report; `EvalResult` on rank 0.

    `batch_size` and `amp` default to what the run validated with (`train.eval_batch_size`, `train.amp`), so the
    stats of `birddet eval RUN/best.pt` on the run's val split are the stats in `RUN/metrics.json`.
    Returns None on the other ranks of a torchrun launch (they only run their shard). `tile` runs sliced inference
    on the decoded images; `max_dets` caps boxes per image (default: the model's `detections_per_img`, tiled or
    not), and `coco_max_dets` makes pycocotools score as many as were kept (recorded in `metrics.json`).
    """
    from birddet.data.coco import CategoryMap, CocoDetection
    from birddet.data.transforms import build_eval_transforms
    from birddet.engine.checkpoint import detector_from_checkpoint, load_detector, read_checkpoint
    from birddet.engine.evaluator import evaluate, load_ground_truth
    from birddet.engine.reports import write_eval_inputs, write_report
    from birddet.models.onnx_runtime import is_onnx_path
    from birddet.models.tta import override_tta

    ctx = D.init_distributed(device)
    try:
        if is_onnx_path(checkpoint):  # an exported model (`birddet export`): its categories are in its metadata
            detector = load_detector(checkpoint, ctx.device)
            categories = detector.categories
            check_categories(categories, ann, ckpt=str(checkpoint)).log(logger)
        else:
            ckpt = read_checkpoint(checkpoint)
            categories = {int(k): str(v) for k, v in ckpt["categories"].items()}
            check_categories(categories, ann, ckpt=str(checkpoint)).log(logger)
            detector = detector_from_checkpoint(ckpt, str(checkpoint)).to(ctx.device).eval()
            del ckpt
        override_tta(detector.config.model, tta)  # this run only; the checkpoint keeps its own
        cfg = detector.config
        batch_size = batch_size or cfg.train.eval_batch_size
        if tile is not None:  # tiled, the batch is windows of one image
            tile = dataclasses.replace(tile, batch_size=batch_size)
        amp = cfg.train.amp if amp is None else amp
        dataset = CocoDetection(
            str(ann),
            str(images),
            None if tile is not None else build_eval_transforms(cfg.model.inference_size),
            category_map=CategoryMap.from_dict(categories),
            skip_bad_images=False,
        )
        if tile is not None:  # rasters (GeoTIFF) are read window by window, never decoded whole
            from birddet.data.rasters import windowed_coco

            dataset = windowed_coco(dataset)
        results = run_detector(
            detector,
            dataset,
            batch_size=1 if tile is not None else batch_size,  # tiled: the batch is windows, images come one by one
            workers=workers,
            amp=amp,
            device=ctx.device,
            progress=True,
            tile=tile,
            max_dets=max_dets,
            categories=dataset.category_alignment,
        )
        if not ctx.is_main:
            return None
        out = Path(out_dir)
        atomic_write_json(out / "results.json", results)
        write_eval_inputs(out, ann=ann, images=images, checkpoint=checkpoint)
        coco_gt = load_ground_truth(ann)
        result = evaluate(coco_gt, results, max_dets=coco_max_dets(detector, max_dets))
        write_report(result, out, coco_gt=coco_gt, results=results, plots=plots, score_threshold=conf_threshold)
        return result
    finally:
        D.cleanup(ctx)


def coco_max_dets(detector: torch.nn.Module, max_dets: int | None = None) -> tuple[int, int, int]:
    """pycocotools' `maxDets` for what `run_detector(detector, ..., max_dets=max_dets)` wrote: the default
    (1, 10, 100) unless the per-image cap (`BirdDetector.box_cap`: `max_dets`, else `detections_per_img`) is above
    100, then (1, 10, cap). Training validation and `birddet eval` both score with it, so a model allowed 1,000
    boxes per image is not scored on its best 100 only (a perfect detector on 300 birds would get AP 0.34)."""
    cap = D.unwrap_model(detector).box_cap(max_dets)
    return (1, 10, cap) if cap > 100 else (1, 10, 100)
