"""`birddet eval` (a detector checkpoint, or detect-then-classify with --classifier) and `birddet score` (a results file).

Both print the same COCO table (`birddet.engine.reports.format_table`); eval shares the tiling flags with predict
(`birddet/cli/common.py`). The library is imported inside each command, so torch loads only when one runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from birddet.cli.common import _add_tiling_flags, _add_tta_flag
from birddet.errors import InputError


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="COCO mAP of a detector checkpoint on an annotated split (species-level with --classifier)",
        description="COCO mAP of a detector. With --classifier, species-level mAP of detect-then-classify: each box "
        "is scored under its top-1 species with detection score x species probability, against ground truth "
        "whose categories are species (matched to the classifier's classes by name, case-insensitively).",
    )
    p.add_argument("checkpoint", help="detector checkpoint (best.pt / last.pt), or a MODEL.onnx from birddet export")
    p.add_argument("--classifier", default=None, help="birder classifier file (e.g. a train-classifier RUN/best.pt)")
    p.add_argument("--ann", required=True, help="COCO ground-truth JSON")
    p.add_argument("--images", required=True, help="image root the JSON's file_names are relative to")
    p.add_argument("--out", default=None, help="output folder (default: next to the checkpoint, eval-<split>)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="default: the run's train.eval_batch_size, as its validation"
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--amp",
        nargs="?",
        const="bf16",
        default=None,
        choices=["none", "bf16", "fp16"],
        help="autocast precision; default: the run's train.amp, so the numbers match the run's metrics.json",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--conf", type=float, default=0.5, help="score threshold for the confusion matrix")
    p.add_argument("--no-plots", action="store_true")
    _add_tta_flag(p)
    _add_tiling_flags(p, merge=True)
    p.set_defaults(func=_run_eval)


def _eval_kwargs(args: argparse.Namespace, out: Path) -> dict[str, object]:
    """The settings detector eval and two-stage eval share."""
    return {
        "ann": args.ann,
        "images": args.images,
        "out_dir": out,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "amp": args.amp,
        "device": args.device,
        "plots": not args.no_plots,
        "conf_threshold": args.conf,
        "tta": args.tta,
    }


def _run_eval(args: argparse.Namespace) -> int:
    from birddet.runlock import run_lock

    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval-{Path(args.ann).stem}"
    if args.classifier and (args.tile is not None or args.max_dets is not None):
        raise InputError("--tile and --max-dets are not supported with --classifier (two-stage eval) yet")
    # One run per folder (birddet/runlock.py); under torchrun rank 0 (RANK, set before any group exists) holds it.
    with run_lock(out, "eval", enabled=int(os.environ.get("RANK", "0")) == 0):
        if args.classifier:
            return _run_eval_two_stage(args, out)
        return _run_eval_detector(args, out)


def _run_eval_detector(args: argparse.Namespace, out: Path) -> int:
    from birddet.engine.reports import format_table
    from birddet.engine.runner import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint, **_eval_kwargs(args, out), tile=_tile_options(args), max_dets=args.max_dets
    )
    if result is not None:  # None on non-zero ranks under torchrun
        print(format_table(result))
        print(f"results written to {out}")
    return 0


def _run_eval_two_stage(args: argparse.Namespace, out: Path) -> int:
    from birddet.engine.reports import format_table
    from birddet.engine.two_stage import evaluate_two_stage

    outcome = evaluate_two_stage(args.checkpoint, args.classifier, **_eval_kwargs(args, out))
    if outcome is not None:  # None on non-zero ranks under torchrun
        result, two_stage = outcome
        print(format_table(result))
        top1 = two_stage["classifier_top1"]
        print(
            f"species scored as {two_stage['score']}; classifier top-1 on the {two_stage['classifier_matched']} "
            f"detections matched at IoU {two_stage['match_iou']}: {'n/a' if top1 is None else f'{top1:.4f}'}"
        )
        print(f"results written to {out}")
    return 0


def _tile_options(args: argparse.Namespace) -> Any:
    if args.tile is None:
        return None
    from birddet.pipeline.tiling import TileOptions

    return TileOptions(
        size=args.tile,
        overlap=args.tile_overlap,
        full_image=not args.no_full_image,
        merge=args.merge,
        match=args.merge_match,
        match_threshold=args.merge_threshold,
        batch_size=args.batch_size or TileOptions.batch_size,  # eval resolves its default from the run
    )


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="COCO mAP of an existing results file (no model needed)")
    p.add_argument("--gt", required=True, help="COCO ground-truth JSON")
    p.add_argument("--results", required=True, help="COCO results list, or a COCO dataset whose annotations have score")
    p.add_argument("--out", default=None, help="metrics.json path, or a folder")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=_run_score)


def _run_score(args: argparse.Namespace) -> int:
    from birddet.engine.reports import format_table
    from birddet.engine.scoring import score_files

    result = score_files(args.gt, args.results, args.out, plots=not args.no_plots)
    print(format_table(result))
    return 0
