"""`birddet export`: a detector checkpoint (and optionally a species classifier) as ONNX graphs for onnxruntime.

The exported `MODEL.onnx` goes wherever a checkpoint goes (`birddet predict MODEL.onnx ...`, `birddet eval
MODEL.onnx ...`); `--classifier CLS` also writes `MODEL.classifier.onnx` for `--classifier`. See docs/export.md and
`birddet.engine.export`. The library is imported inside the command, so torch loads only when it runs.
"""

from __future__ import annotations

import argparse


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a detector checkpoint to ONNX (fp32 or int8) for onnxruntime",
        description="Write the whole detector (backbone, pyramid, RPN, RoI heads, post-processing) as one ONNX graph "
        "with a batch of 1 and dynamic height/width; predict and eval take the .onnx file like a checkpoint.",
    )
    p.add_argument("checkpoint", help="detector checkpoint (best.pt / last.pt)")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (onnx)")
    p.add_argument("--out", required=True, help="the exported model, MODEL.onnx")
    p.add_argument(
        "--image-size", type=int, default=None, help="input square side (multiple of 32); default: the checkpoint's"
    )
    p.add_argument("--int8", action="store_true", help="onnxruntime static int8 quantization (needs --calibrate)")
    p.add_argument("--calibrate", default=None, metavar="DIR", help="folder of photos to calibrate int8 ranges on")
    p.add_argument(
        "--classifier", default=None, help="also export this birder species classifier to MODEL.classifier.onnx"
    )
    p.add_argument(
        "--min-conf",
        type=float,
        default=None,
        help="lowest score the graph keeps (default: the config's roi_heads.score_thresh); lower --conf later needs it",
    )
    p.add_argument(
        "--max-dets", type=int, default=None, help="boxes per image the graph keeps (default: detections_per_img)"
    )
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from birddet.engine.export import export_checkpoint

    written = export_checkpoint(
        args.checkpoint,
        args.out,
        image_size=args.image_size,
        min_conf=args.min_conf,
        max_dets=args.max_dets,
        int8=args.int8,
        calibrate=args.calibrate,
        classifier=args.classifier,
    )
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
