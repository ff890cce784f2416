"""`birddet eval DET.pt --classifier CLS.pt`: species-level COCO mAP of the detect-then-classify pipeline.

Ground truth is annotated with species. The detector finds birds (its own labels are dropped: to the pipeline a
box is a bird, and overlapping boxes it gave under different labels are merged by class-agnostic NMS at the
detector's `roi_heads.nms_thresh`); each box is cropped with predict's crop rule and classified. A box is scored
under its **top-1 species** with

    score = detection score x species probability,

so a confident box with an unsure species ranks below a confident box with a sure one, and a wrong species is a
false positive of the species it was given (and its bird a miss of its own species). Categories are matched by
name, case-insensitively (class name, scientific name or, with birder's files, the full class name); a ground-
truth species the classifier cannot name is an error listing both sets. A classifier that knows more classes
than the ground truth (the 10,000 iNat21 species) is restricted to the ground truth's species and renormalised,
as `predict --species-list` does. Boxes are scored in each image's frame (the JSON's width and height, as detector
eval scores them; see `engine/runner.py`) and cropped from the decoded file's pixels.

`metrics.json` has detector eval's format (`stats`, `per_class` = per-species AP) plus `two_stage`: the scoring
rule, and the classifier's top-1 on the detections matched one-to-one to ground truth at IoU 0.5 (greedy by
score, as the confusion matrix matches), i.e. species accuracy on the birds the detector found.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import nms

from birddet.engine import distributed as D
from birddet.errors import InputError
from birddet.fileio import atomic_write_json

logger = logging.getLogger(__name__)

SCORE_RULE = "detection score x species probability (top-1 species per box)"
MATCH_IOU = 0.5


def match_species(taxonomy: Any, gt_categories: Mapping[int, str], *, ann: str, classifier: str) -> dict[int, int]:
    """Classifier class index -> ground-truth category id, by name (case-insensitive).

    `taxonomy` is the classifier's `pipeline.taxonomy.Taxonomy`. Every ground-truth category must match a class;
    otherwise the error lists the unmatched names and both sets.
    """
    class_to_category: dict[int, int] = {}
    unmatched = []
    for cid, name in sorted(gt_categories.items()):
        try:
            indices = taxonomy.indices_for_species_list([name])
        except InputError:
            unmatched.append(name)
            continue
        for idx in indices:
            if idx in class_to_category and class_to_category[idx] != cid:
                raise InputError(
                    f"{ann}: categories {class_to_category[idx]} ({gt_categories[class_to_category[idx]]!r}) and "
                    f"{cid} ({name!r}) name the same classifier class; merge them"
                )
            class_to_category[idx] = cid
    if unmatched:
        known = [t.class_name for t in taxonomy]
        raise InputError(
            f"{ann} has species the classifier {classifier} cannot name: {_names(unmatched)}. Ground-truth "
            f"categories: {_names(gt_categories.values())}; classifier classes: {_names(known)}. Names are matched "
            "case-insensitively; rename the categories or evaluate with a classifier trained on them"
        )
    return class_to_category


def _names(names: Any, limit: int = 12) -> str:
    names = [str(n) for n in names]
    more = f" ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def merge_labels(detections: Sequence[dict[str, Any]], iou_threshold: float) -> list[dict[str, Any]]:
    """Class-agnostic NMS over one image's COCO results: one box per bird, whatever label the detector gave it."""
    if not detections:
        return []
    boxes = torch.tensor([d["bbox"] for d in detections], dtype=torch.float32)
    boxes[:, 2:] += boxes[:, :2]
    scores = torch.tensor([d["score"] for d in detections], dtype=torch.float32)
    keep = nms(boxes, scores, iou_threshold).tolist()
    return [detections[i] for i in keep]


def species_results(
    detections: Sequence[dict[str, Any]], probs: torch.Tensor, class_to_category: Mapping[int, int]
) -> list[dict[str, Any]]:
    """One image's bird detections (COCO results) and their crops' species probabilities `[N, C]` -> COCO results
    under the top-1 species, scored `detection score x species probability`.

    Classes outside `class_to_category` must already have probability 0 (restricted), so the top-1 is always a
    ground-truth species.
    """
    if len(detections) != probs.shape[0]:
        raise ValueError(f"{len(detections)} detections but {probs.shape[0]} probability rows")
    if not detections:
        return []
    p, idx = probs.float().max(dim=1)
    out = []
    for det, pi, ci in zip(detections, p.tolist(), idx.tolist(), strict=True):
        out.append(
            {
                "image_id": det["image_id"],
                "category_id": int(class_to_category[int(ci)]),
                "bbox": list(det["bbox"]),
                "score": round(float(det["score"]) * pi, 6),
                # The two factors, for readers that show them apart (`birddet report`'s crop gallery); COCO tools
                # ignore extra keys.
                "det_score": round(float(det["score"]), 6),
                "species_prob": round(float(pi), 6),
            }
        )
    return out


def classifier_top1_on_matches(coco_gt: Any, results: Sequence[dict[str, Any]]) -> tuple[float, int]:
    """Species accuracy on the detections matched to ground truth at IoU 0.5: `(top1, number matched)`.

    Uses the report's confusion-matrix matching (one-to-one, greedy by score, any class) with no score threshold;
    the top-1 is the diagonal of its species block over the block's total. NaN when nothing matched.
    """
    from birddet.engine.reports import confusion_matrix

    matrix, _ = confusion_matrix(coco_gt, results, score_threshold=0.0, iou_threshold=MATCH_IOU)
    block = matrix[:-1, :-1]
    matched = int(block.sum())
    return (float(np.trace(block) / matched) if matched else float("nan")), matched


def evaluate_two_stage(
    checkpoint: str | Path,
    classifier: str | Path,
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
    tta: str | None = None,
) -> tuple[Any, dict[str, Any]] | None:
    """Detect, classify and score against species ground truth; writes `results.json` and the report into
    `out_dir`. Returns `(EvalResult, two_stage dict)` on rank 0 and None on the other ranks.

    `batch_size` and `amp` default to the detector run's validation settings, as in `evaluate_checkpoint`."""
    from birddet.data.coco import CategoryMap, CocoDetection
    from birddet.data.crops import KeepPixels
    from birddet.data.transforms import build_eval_transforms
    from birddet.engine.checkpoint import load_detector
    from birddet.engine.evaluator import evaluate, load_ground_truth
    from birddet.engine.reports import metrics_dict, write_eval_inputs, write_report
    from birddet.engine.runner import _gt_categories, coco_max_dets, run_detector
    from birddet.models.detector import rescale_boxes
    from birddet.models.tta import override_tta
    from birddet.pipeline.species import SpeciesClassifier

    ctx = D.init_distributed(device)
    try:
        gt_categories = _gt_categories(ann)
        species = SpeciesClassifier.load(classifier, device=ctx.device, top_k=1)
        class_to_category = match_species(species.taxonomy, gt_categories, ann=str(ann), classifier=str(classifier))
        if len(class_to_category) < len(species.taxonomy):
            species = SpeciesClassifier(
                species.net, species.info, taxonomy=species.taxonomy, allowed=sorted(class_to_category), top_k=1
            )
        detector = load_detector(checkpoint, ctx.device)  # a checkpoint or an exported .onnx
        override_tta(detector.config.model, tta)  # this run only; the checkpoint keeps its own
        cfg = detector.config
        batch_size = batch_size or cfg.train.eval_batch_size
        amp = cfg.train.amp if amp is None else amp
        cmap = CategoryMap.from_dict(gt_categories)
        dataset = CocoDetection(
            str(ann),
            str(images),
            build_eval_transforms(cfg.model.inference_size),
            category_map=cmap,
            skip_bad_images=False,
        )
        detections = run_detector(
            detector, dataset, batch_size=batch_size, workers=workers, amp=amp, device=ctx.device, progress=True
        )
        by_image: dict[int, list[dict[str, Any]]] = {}
        for det in detections:
            by_image.setdefault(int(det["image_id"]), []).append(det)
        pixels = CocoDetection(str(ann), str(images), KeepPixels(), category_map=cmap, skip_bad_images=False)
        nms_iou = cfg.model.roi_heads.nms_thresh
        results: list[dict[str, Any]] = []
        for index in D.shard_indices(len(pixels)):
            birds = merge_labels(by_image.get(pixels.image_ids[index], []), nms_iou)
            if not birds:
                continue
            image, target = pixels[index]
            boxes = torch.tensor([d["bbox"] for d in birds], dtype=torch.float32)
            boxes[:, 2:] += boxes[:, :2]
            # Results are in the image's frame (the JSON's size); the crops come from the decoded file's pixels.
            boxes = rescale_boxes(boxes, target["orig_size"], tuple(image.shape[-2:]))
            results.extend(
                species_results(birds, species.probabilities(species.crops(image, boxes)), class_to_category)
            )
        results = D.gather_lists(results)
        if not ctx.is_main:
            return None
        out = Path(out_dir)
        atomic_write_json(out / "results.json", results)
        write_eval_inputs(out, ann=ann, images=images, checkpoint=checkpoint, classifier=classifier)
        coco_gt = load_ground_truth(ann)
        result = evaluate(coco_gt, results, max_dets=coco_max_dets(detector))
        write_report(result, out, coco_gt=coco_gt, results=results, plots=plots, score_threshold=conf_threshold)
        top1, matched = classifier_top1_on_matches(coco_gt, results)
        top1 = None if matched == 0 else top1  # JSON has no NaN
        two_stage = {
            "score": SCORE_RULE,
            "detector": str(checkpoint),
            "classifier": str(classifier),
            "classifier_top1": top1,
            "classifier_matched": matched,
            "match_iou": MATCH_IOU,
            "num_detections": len(results),
        }
        atomic_write_json(out / "metrics.json", {**metrics_dict(result), "two_stage": two_stage}, indent=2)
        return result, two_stage
    finally:
        D.cleanup(ctx)


__all__ = [
    "SCORE_RULE",
    "classifier_top1_on_matches",
    "evaluate_two_stage",
    "match_species",
    "merge_labels",
    "species_results",
]
