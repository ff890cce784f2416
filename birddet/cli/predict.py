"""`birddet predict`: detect birds in images, folders or lists, name their species, write the chosen formats.

The flags map one to one onto `birddet.pipeline.predict.PredictOptions`; the tiling flags are shared with eval
(`birddet/cli/common.py`). The pipeline is imported inside the command, so torch loads only when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from birddet.cli.common import _add_tiling_flags, _add_tta_flag


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="detect birds and name their species")
    p.add_argument("checkpoint", help="detector checkpoint, or a MODEL.onnx from birddet export")
    p.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="image or video files, folders (recursive) or .txt lists"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--conf", type=float, default=0.1, help="lowest detection score written")
    p.add_argument("--classifier", default=None, help="birder classifier file or registered name")
    p.add_argument("--no-classifier", action="store_true", help="detection only")
    p.add_argument(
        "--classifier-size",
        type=int,
        default=None,
        help="classifier crop side (multiple of 16); default: the size the classifier file was trained at",
    )
    p.add_argument("--classify-conf", type=float, default=0.1, help="lowest detection score that gets classified")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--taxon", default=None, help="restrict species to a taxon (e.g. Aves), renormalising")
    p.add_argument("--species-list", default=None, help="text file of allowed species, one per line")
    p.add_argument("--common-names", default=None, help="JSON {class index: common name}")
    p.add_argument("--rollup-threshold", type=float, default=0.5)
    p.add_argument(
        "--format",
        default="megadetector,coco,csv",
        help="comma list of megadetector, coco, csv (with events.csv, counts.csv), camtrap-dp (needs --deployments)",
    )
    p.add_argument(
        "--event-gap",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="longest gap between two photos of one event (default 60, as AddaxAI); docs/events.md",
    )
    p.add_argument(
        "--deployment-depth",
        type=int,
        default=None,
        metavar="N",
        help="a camera is the first N folders below the source root (default: the photo's whole folder)",
    )
    p.add_argument(
        "--deployments",
        default=None,
        metavar="CSV",
        help="for camtrap-dp: each camera's deploymentID, latitude, longitude (+ other Camtrap DP deployment columns)",
    )
    p.add_argument("--save-images", action="store_true", help="write annotated copies to OUT/images/")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--decode-budget",
        type=float,
        default=None,
        metavar="MPX",
        help="megapixels decoded and waiting at once over all workers (default: a quarter of the available memory)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--resume", action="store_true", help="skip images already finished in OUT")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier run in OUT (its progress files and outputs are deleted first); without it, "
        "an OUT holding a run is refused",
    )
    p.add_argument("--checkpoint-every", type=int, default=500, help="save partial results every N images")
    p.add_argument(
        "--draw-conf", type=float, default=0.3, help="lowest score drawn by --save-images (files keep all >= --conf)"
    )
    video = p.add_mutually_exclusive_group()
    video.add_argument("--video-fps", type=float, default=1.0, help="video clips: frames a second looked at")
    video.add_argument("--every-n-frames", type=int, default=None, metavar="N", help="video clips: every N-th frame")
    p.add_argument(
        "--save-video", action="store_true", help="write annotated clips of the sampled frames to OUT/videos/"
    )
    _add_tta_flag(p)
    _add_tiling_flags(p, merge=True)
    p.add_argument(
        "--bands",
        default=None,
        metavar="B,B,B",
        help="raster bands read as R,G,B (or one as grey) with --tile, e.g. 1,2,3 out of RGBN (default: the bands "
        "tagged red/green/blue, else the first three)",
    )
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from birddet.data.rasters import parse_bands
    from birddet.pipeline.predict import PredictOptions, run_prediction

    options = PredictOptions(
        conf=args.conf,
        classifier=args.classifier,
        use_classifier=not args.no_classifier,
        classifier_size=args.classifier_size,
        classify_conf=args.classify_conf,
        top_k=args.top_k,
        taxon=args.taxon,
        species_list=args.species_list,
        common_names=args.common_names,
        rollup_threshold=args.rollup_threshold,
        formats=[f.strip() for f in args.format.split(",") if f.strip()],
        save_images=args.save_images,
        batch_size=args.batch_size,
        workers=args.workers,
        decode_budget=args.decode_budget,
        device=args.device,
        amp=args.amp,
        resume=args.resume,
        overwrite=args.overwrite,
        checkpoint_every=args.checkpoint_every,
        draw_conf=args.draw_conf,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        full_image=not args.no_full_image,
        merge=args.merge,
        merge_match=args.merge_match,
        merge_threshold=args.merge_threshold,
        max_dets=args.max_dets,
        tta=args.tta,
        event_gap=args.event_gap,
        deployment_depth=args.deployment_depth,
        deployments=args.deployments,
        bands=parse_bands(args.bands),
        video_fps=args.video_fps,
        every_n_frames=args.every_n_frames,
        save_video=args.save_video,
    )
    summary = run_prediction(args.checkpoint, args.sources, Path(args.out), options)
    print(summary)
    return 0
