"""`birddet report DIR --out REPORT/`: an offline HTML review of a predict or eval output folder (`birddet.report`).

The command reads only the files `predict` and `eval` wrote; it never loads a model or torch.
"""

from __future__ import annotations

import argparse

from birddet.report.sample import DEFAULT_MAX_IMAGES


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="an offline HTML review of a predict or eval output folder",
        description="Write a static site (open REPORT/index.html from disk; no server, no network) that shows a "
        "predict folder's images with their boxes, or an eval folder's true positives, false positives and misses, "
        "at a live score threshold.",
    )
    p.add_argument("folder", metavar="DIR", help="a `birddet predict --out` or `birddet eval --out` folder")
    p.add_argument("--out", required=True, help="report folder (new, empty, or an earlier report to replace)")
    p.add_argument(
        "--max-images",
        type=int,
        default=DEFAULT_MAX_IMAGES,
        help="show at most N images: a sample stratified by species and confidence (default %(default)s)",
    )
    p.add_argument(
        "--images",
        default=None,
        help="folder the run's file names are relative to (default: where predict's progress.jsonl or "
        "eval_inputs.json says the images are)",
    )
    p.add_argument("--gt", default=None, help="eval folders: ground-truth JSON (default: from eval_inputs.json)")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from birddet.report import build_report

    print(build_report(args.folder, args.out, max_images=args.max_images, images=args.images, gt=args.gt))
    return 0
