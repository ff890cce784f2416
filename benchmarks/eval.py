"""Cost of birddet's checked evaluation against raw pycocotools, same data, same process.

A seeded synthetic set (default 5,000 images x 100 detections, 5 classes, ~4 ground-truth boxes per image) is
scored twice per repeat: raw pycocotools (`loadRes` + `evaluate` + `accumulate` + `summarize`) and birddet
(`load_results` + `evaluate`, i.e. validation, building the detection index, the same COCOeval run and the
per-class table). The order alternates between repeats so machine-load drift hits both alike; the script prints
the medians, the ratio, and checks that the 12 stats are identical.

    python benchmarks/eval.py                      # 5,000 x 100, 3 repeats
    python benchmarks/eval.py --images 500 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
import time
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from birddet.engine.evaluator import STAT_NAMES, evaluate, load_ground_truth, load_results


def make_data(num_images: int, dets_per_image: int, seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ground truth and detections: jittered copies of the GT boxes plus random false positives."""
    rng = np.random.default_rng(seed)
    num_cats = 5
    gt_per_image = rng.integers(1, 8, num_images)
    n_gt = int(gt_per_image.sum())
    wh = rng.uniform(8, 300, (n_gt, 2))
    xy = rng.uniform(0, 1, (n_gt, 2)) * (np.array([640.0, 480.0]) - np.minimum(wh, [600, 450]))
    gt_boxes = np.round(np.concatenate([xy, wh], axis=1), 2)
    gt_img = np.repeat(np.arange(num_images), gt_per_image)
    gt_cat = rng.integers(1, num_cats + 1, n_gt)
    images = [{"id": int(i), "width": 640, "height": 480} for i in range(num_images)]
    annotations = [
        {"id": k + 1, "image_id": int(i), "category_id": int(c), "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for k, (i, c, b) in enumerate(zip(gt_img.tolist(), gt_cat.tolist(), gt_boxes.tolist()))
    ]
    categories = [{"id": c, "name": f"bird{c}"} for c in range(1, num_cats + 1)]

    n_det = num_images * dets_per_image
    det_img = np.repeat(np.arange(num_images), dets_per_image)
    boxes = np.concatenate([rng.uniform(0, 500, (n_det, 2)), rng.uniform(4, 300, (n_det, 2))], axis=1)
    # the first detections of each image follow its ground truth, so AP is far from zero
    starts = np.concatenate([[0], np.cumsum(gt_per_image)[:-1]])
    cats = rng.integers(1, num_cats + 1, n_det)
    for img in range(num_images):
        g = slice(starts[img], starts[img] + gt_per_image[img])
        d = slice(img * dets_per_image, img * dets_per_image + gt_per_image[img])
        boxes[d] = gt_boxes[g] + rng.normal(0, 4, gt_boxes[g].shape)
        cats[d] = gt_cat[g]
    boxes[:, 2:] = np.maximum(boxes[:, 2:], 1)
    boxes = np.round(boxes, 2)
    scores = np.round(rng.uniform(0, 1, n_det), 4)
    dets = [
        {"image_id": int(i), "category_id": int(c), "bbox": b, "score": s}
        for i, c, b, s in zip(det_img.tolist(), cats.tolist(), boxes.tolist(), scores.tolist())
    ]
    return {"images": images, "annotations": annotations, "categories": categories}, dets


def run_pycocotools(gt: dict[str, Any], dets: list[dict[str, Any]]) -> tuple[float, list[float]]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        dets = copy.deepcopy(dets)  # loadRes mutates its input; the copy is outside the timed part
        t0 = time.perf_counter()
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        elapsed = time.perf_counter() - t0
    return elapsed, ev.stats.tolist()


def run_birddet(gt: dict[str, Any], dets: list[dict[str, Any]]) -> tuple[float, list[float], float]:
    coco_gt = load_ground_truth(gt)
    t0 = time.perf_counter()
    checked = load_results(dets, coco_gt)
    t_load = time.perf_counter() - t0
    result = evaluate(coco_gt, checked)
    elapsed = time.perf_counter() - t0
    return elapsed, [result.stats[n] for n in STAT_NAMES], t_load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    gt, dets = make_data(args.images, args.dets)
    print(f"{args.images} images, {len(dets)} detections, {len(gt['annotations'])} ground-truth boxes")
    raw, ours, loads = [], [], []
    for r in range(args.repeats):
        order = ("raw", "ours") if r % 2 == 0 else ("ours", "raw")
        for which in order:
            if which == "raw":
                t, ref_stats = run_pycocotools(gt, dets)
                raw.append(t)
            else:
                t, our_stats, t_load = run_birddet(gt, dets)
                ours.append(t)
                loads.append(t_load)
        print(f"repeat {r + 1}: pycocotools {raw[-1]:.2f} s, birddet {ours[-1]:.2f} s (load_results {loads[-1]:.2f} s)")
    assert our_stats == ref_stats, "stats differ from pycocotools"
    m_raw, m_ours, m_load = statistics.median(raw), statistics.median(ours), statistics.median(loads)
    print(f"median pycocotools (loadRes+evaluate+accumulate+summarize): {m_raw:.2f} s")
    print(f"median birddet (load_results+evaluate):                     {m_ours:.2f} s  (load_results {m_load:.2f} s)")
    print(f"ratio birddet / pycocotools: {m_ours / m_raw:.3f}; stats identical: AP {our_stats[0]:.4f}")


if __name__ == "__main__":
    main()
