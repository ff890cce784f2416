"""`birddet score`: COCO mAP of an existing results file, with the report written next to it.

It joins the two halves of evaluation: the numbers (`engine/evaluator.py`: load and check the files, run
pycocotools) and what people read (`engine/reports.py`: `metrics.json`, `per_class.csv`, plots). It sits above
both, so that the reports, which read `EvalResult`, never have to be imported by the evaluator that makes it.
"""

from __future__ import annotations

from pathlib import Path

from birddet.engine.coco_inputs import load_ground_truth, load_results
from birddet.engine.evaluator import EvalResult, evaluate
from birddet.engine.reports import write_report


def score_files(
    gt: str | Path, results: str | Path, out: str | Path | None = None, *, plots: bool = True
) -> EvalResult:
    """`birddet score`: COCO mAP of an existing results file, with the report written when `out` is given.

    `out` ending in `.json` is the metrics file and the CSV and plots go next to it; any other `out` is a folder
    that receives `metrics.json`, `per_class.csv` and the plots.
    """
    coco_gt = load_ground_truth(gt)
    dets = load_results(results, coco_gt, gt_where=str(gt))
    result = evaluate(coco_gt, dets)
    if out is not None:
        out = Path(out)
        if out.suffix.lower() == ".json":
            write_report(result, out.parent, coco_gt=coco_gt, results=dets, plots=plots, metrics_path=out)
        else:
            write_report(result, out, coco_gt=coco_gt, results=dets, plots=plots)
    return result
