"""Does suppressing boxes nested inside a higher-scored box of the same class raise or lower COCO AP?

    python benchmarks/nested_boxes.py --gt val.json --results EVAL_DIR/results.json [--thresholds 0.6 0.7 0.8 0.9]

Issue 21 saw two or three nested boxes around one bird on feeder photos: a smaller box inside a larger one, at an IoU
under the NMS threshold, so class-wise NMS keeps both. The candidate rule: per image and class, in score order, drop a
box whose intersection over the smaller of the two boxes (IoS) with an already kept box is at least the threshold.
This script applies it to an existing `results.json` (what `birddet eval` writes) and scores every variant with the
same pycocotools evaluation as `birddet eval`, so the answer comes from one trained model, not from retraining.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

import torch

from birddet.engine.evaluator import evaluate, load_ground_truth, load_results
from birddet.pipeline.tiling import match_matrix


def suppress_nested(results: list[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """`results` without the boxes that lie at least `threshold` (IoS) inside a higher-scored box of their class."""
    groups: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["image_id"], r["category_id"])].append(r)
    kept: list[dict[str, Any]] = []
    for dets in groups.values():
        dets = sorted(dets, key=lambda d: -d["score"])
        boxes = torch.tensor([d["bbox"] for d in dets], dtype=torch.float64)
        boxes[:, 2:] += boxes[:, :2]
        ios = match_matrix(boxes, boxes, "ios")
        keep: list[int] = []
        for i in range(len(dets)):
            if not keep or float(ios[i, keep].max()) < threshold:
                keep.append(i)
        kept.extend(dets[i] for i in keep)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gt", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.6, 0.7, 0.8, 0.9])
    args = parser.parse_args()
    gt = load_ground_truth(args.gt)
    results = load_results(args.results, gt)
    print(f"{'rule':<24} {'boxes':>7} {'AP':>7} {'AP50':>7} {'AP75':>7} {'AR100':>7}")
    for name, dets in [("none (today)", results)] + [
        (f"nested IoS >= {t:g}", suppress_nested(results, t)) for t in args.thresholds
    ]:
        s = evaluate(gt, dets, per_class=False).stats
        print(f"{name:<24} {len(dets):>7} {s['AP']:>7.4f} {s['AP50']:>7.4f} {s['AP75']:>7.4f} {s['AR100']:>7.4f}")


if __name__ == "__main__":
    main()
