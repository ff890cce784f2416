"""What more than one command family shares: the tiling and box-cap flags of `birddet predict` and `birddet eval`.

Apart so that both command modules take the flags from one place and neither imports the other.
"""

from __future__ import annotations

import argparse


def _add_tta_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tta",
        choices=("none", "flip"),
        default=None,
        help="test-time augmentation for this run: none is one view at the test square, flip also detects in the "
        "mirrored image and fuses the boxes (tighter boxes, twice the detector's time), neither with the "
        "checkpoint's other squares (model.tta_sizes); default: the checkpoint's model.tta and model.tta_sizes",
    )


def _add_tiling_flags(p: argparse.ArgumentParser, *, merge: bool) -> None:
    """Sliced inference and box caps, shared by predict and eval (see birddet.pipeline.tiling)."""
    g = p.add_argument_group("big images, small birds (tiling) and dense scenes")
    g.add_argument(
        "--tile",
        type=int,
        default=None,
        metavar="SIZE",
        help="detect in overlapping SIZE x SIZE windows in original pixels (the model's image_size keeps pixels 1:1)",
    )
    g.add_argument("--tile-overlap", type=float, default=0.25, help="fraction of --tile shared by neighbouring windows")
    g.add_argument("--no-full-image", action="store_true", help="skip the extra whole-image pass when tiling")
    if merge:
        g.add_argument("--merge", choices=("nms", "nmm"), default="nms", help="class-aware NMS or greedy box merging")
        g.add_argument(
            "--merge-match",
            choices=("iou", "ios"),
            default="iou",
            help="IoU (default), or intersection over the smaller box (joins cut halves; can swallow a flock)",
        )
        g.add_argument("--merge-threshold", type=float, default=0.5, help="overlap at which two boxes are one bird")
    g.add_argument(
        "--max-dets",
        type=int,
        default=None,
        metavar="N",
        help="boxes per image, tiled or not (default: the checkpoint's model.roi_heads.detections_per_img)",
    )
