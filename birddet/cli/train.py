"""`birddet train` and `birddet train-classifier`: load the config with its overrides, train, print the best epoch.

Each command imports the library inside its function: a bad config fails before the heavier imports, and torch
loads only after `main` has set the OpenMP wait policy (see `birddet/cli/__init__.py`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a detector on a COCO dataset", description="Train a detector.")
    p.add_argument("config", help="YAML config (e.g. configs/quickstart.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=1e-4")
    p.add_argument("--out", required=True, help="run folder (config.yaml, last.pt, best.pt, metrics, plots)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from birddet.config import load_config

    cfg = load_config(args.config, args.overrides)  # config errors before the heavier imports
    from birddet.engine.trainer import train

    summary = train(cfg, Path(args.out), resume=args.resume)
    if summary.get("best_epoch") is not None:
        stats = summary.get("best_stats", {})
        print(
            f"best val AP {summary['best_ap']:.4f} (AP50 {stats.get('AP50', float('nan')):.4f}) at epoch "
            f"{summary['best_epoch']}; run folder {summary['out_dir']}"
        )
    return 0


def _add_train_classifier(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-classifier",
        help="train a species classifier on crops of a COCO dataset's boxes",
        description="Train a species classifier on box crops; RUN/best.pt is a birder classifier file for --classifier.",
    )
    p.add_argument("config", help="YAML config (e.g. configs/species_quickstart.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=1e-4")
    p.add_argument("--out", required=True, help="run folder (config.yaml, last.pt, best.pt, metrics, plots)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.set_defaults(func=_run_train_classifier)


def _run_train_classifier(args: argparse.Namespace) -> int:
    from birddet.config import ClassifierConfig, load_config

    cfg = load_config(args.config, args.overrides, schema=ClassifierConfig)
    from birddet.engine.classification import train_classifier

    summary = train_classifier(cfg, Path(args.out), resume=args.resume)
    if summary.get("best_epoch", -1) >= 0:
        print(
            f"best val top-1 {summary['best_top1']:.4f} at epoch {summary['best_epoch']}; "
            f"classifier file {Path(summary['out_dir']) / 'best.pt'} (birddet predict ... --classifier it)"
        )
    return 0
