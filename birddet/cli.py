"""`birddet <command>`: train, eval, score, predict, synth, check, convert, split, stats.

The CLI only parses arguments and calls library functions; `tools/*.py` are thin wrappers over `main`.
Exit codes: 0 success, 2 bad input (one line on stderr saying what, where and how to fix), 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from birddet import __version__
from birddet.errors import InputError, RunStopped

logger = logging.getLogger("birddet")


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


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="COCO mAP of a detector checkpoint on an annotated split (species-level with --classifier)",
        description="COCO mAP of a detector. With --classifier, species-level mAP of detect-then-classify: each box "
        "is scored under its top-1 species with detection score x species probability, against ground truth "
        "whose categories are species (matched to the classifier's classes by name, case-insensitively).",
    )
    p.add_argument("checkpoint", help="detector checkpoint (best.pt / last.pt)")
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


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="detect birds and name their species")
    p.add_argument("checkpoint", help="detector checkpoint")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image files, folders (recursive) or .txt lists")
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
    p.add_argument("--format", default="megadetector,coco,csv", help="comma list of megadetector, coco, csv")
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
    _add_tiling_flags(p, merge=True)
    p.set_defaults(func=_run_predict)


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


def _run_predict(args: argparse.Namespace) -> int:
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
    )
    summary = run_prediction(args.checkpoint, args.sources, Path(args.out), options)
    print(summary)
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="generate a synthetic COCO bird dataset (square quickstart set, realistic photos, dense surveys)",
        description="Generate a synthetic COCO bird dataset. A preset sets every option; the flags replace one each.",
    )
    p.add_argument("out_dir")
    p.add_argument("--images", type=int, default=200, help="number of images (a fifth go to val)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="square", help="square (default), realistic or dense")
    p.add_argument(
        "--size", type=int, nargs=2, metavar=("MIN", "MAX"), help="side range in px (long side with --aspect)"
    )
    p.add_argument("--aspect", default=None, help="width:height choices, e.g. 16:9,4:3,3:4")
    p.add_argument("--bird-frac", type=float, nargs=2, metavar=("MIN", "MAX"), help="bird width / shorter side")
    p.add_argument("--birds", type=int, nargs=2, metavar=("MIN", "MAX"), help="birds per image")
    p.add_argument("--exif", type=float, default=None, help="share of EXIF-rotated JPEGs (0..1)")
    p.add_argument("--clutter", type=float, default=None, help="0: plain background .. 1: photo-like scene (0..1)")
    p.set_defaults(func=_run_synth)


def _parse_aspects(text: str) -> list[float]:
    ratios = []
    for part in text.split(","):
        w, sep, h = part.strip().partition(":")
        try:
            ratios.append(float(w) / float(h) if sep else float(w))
        except (ValueError, ZeroDivisionError):
            raise InputError(f"--aspect takes width:height pairs such as 16:9,4:3,3:4; cannot read {part!r}") from None
    return ratios


def _run_synth(args: argparse.Namespace) -> int:
    from birddet.data.synthetic import make_synthetic_coco

    if args.images < 2:
        raise InputError(f"--images must be at least 2 (one train and one val image), got {args.images}")
    num_val = max(1, args.images // 5)
    try:
        paths = make_synthetic_coco(
            args.out_dir,
            num_train=args.images - num_val,
            num_val=num_val,
            seed=args.seed,
            preset=args.preset,
            image_size=args.size,
            aspect_ratios=_parse_aspects(args.aspect) if args.aspect else None,
            bird_frac=args.bird_frac,
            birds_per_image=args.birds,
            exif_fraction=args.exif,
            clutter=args.clutter,
        )
    except ValueError as e:
        raise InputError(f"birddet synth: {e}") from None
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="validate a COCO split as training does; list every problem",
        description="The validation birddet train runs on its splits, as a report. Exit 2 when something is fatal.",
    )
    p.add_argument("coco", help="COCO JSON")
    p.add_argument("--images", required=True, help="image root the JSON's file_names are relative to")
    p.add_argument(
        "--role",
        choices=["train", "val"],
        default="val",
        help="val (default, the strictest): boxes that would be dropped are fatal; train: they are warnings",
    )
    p.add_argument("--no-headers", action="store_true", help="skip opening every image header (size, readability)")
    p.set_defaults(func=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from birddet.data.check import check_split

    check = check_split(args.coco, args.images, role=args.role, read_headers=not args.no_headers)
    print(check.format())
    if not check.ok:
        raise InputError(f"{args.coco}: {len(check.errors)} fatal problem(s), listed above as FATAL")
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="turn VOC, YOLO, CSV or predictions into COCO JSON for training")
    fmt = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    voc = fmt.add_parser("voc", help="Pascal VOC XML files (searched recursively)")
    voc.add_argument("src", help="folder of .xml files (or one file)")
    voc.add_argument("--out", required=True, help="output COCO JSON")
    voc.add_argument("--images", default=None, help="image root (default: the XML folder; images beside the XML)")
    voc.add_argument("--zero-based", action="store_true", help="coordinates are 0-based, not the VOC devkit's 1-based")
    voc.add_argument(
        "--frame",
        choices=["displayed", "stored"],
        default="displayed",
        help="for EXIF-rotated photos whose <size> cannot tell: boxes drawn on the displayed (rotated) image "
        "(default) or on the stored pixels (tools that ignore EXIF); the summary lists those photos",
    )
    yolo = fmt.add_parser("yolo", help="YOLO txt dataset (Ultralytics or Roboflow layout)")
    yolo.add_argument("src", help="data.yaml or the folder holding it")
    yolo.add_argument("--out", required=True, help="output folder: one <split>.json per split")
    table = fmt.add_parser("csv", help="box table image_path,xmin,ymin,xmax,ymax,label (DeepForest)")
    table.add_argument("src", help="CSV file with a header row")
    table.add_argument("--images", required=True, help="image root the image_path column is relative to")
    table.add_argument("--out", required=True, help="output COCO JSON")
    table.add_argument("--columns", default=None, help="other column names, e.g. image_path=file,label=species")
    pred = fmt.add_parser("predictions", help="birddet predict output -> pseudo-labels (optionally merged into GT)")
    pred.add_argument("src", help="birddet predict output folder, or its coco.json")
    pred.add_argument("--min-score", type=float, required=True, help="keep detections with at least this score")
    pred.add_argument("--out", required=True, help="output COCO JSON")
    pred.add_argument("--merge", default=None, help="ground-truth COCO JSON to add the pseudo-labels to")
    pred.add_argument("--images", default=None, help="image root to record (default: the ground truth's)")
    pred.add_argument("--iou", type=float, default=0.5, help="a pseudo-box overlapping GT this much is dropped")
    for parser in (voc, table):
        parser.add_argument("--classes", default=None, help="comma list fixing category ids 1..K in this order")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if getattr(args, "classes", None) else None
    if args.format == "voc":
        from birddet.data.formats.voc import convert_voc

        result = convert_voc(
            args.src, args.out, args.images, classes=classes, zero_based=args.zero_based, frame=args.frame
        )
        print(result.summary())
    elif args.format == "yolo":
        from birddet.data.formats.yolo import convert_yolo

        for result in convert_yolo(args.src, args.out).values():
            print(result.summary())
    elif args.format == "csv":
        from birddet.data.formats.csv import convert_csv, parse_columns

        columns = parse_columns(args.columns)
        print(convert_csv(args.src, args.images, args.out, columns=columns, classes=classes).summary())
    else:
        from birddet.data.formats.predictions import convert_predictions

        r = convert_predictions(
            args.src, args.out, min_score=args.min_score, merge=args.merge, images=args.images, iou=args.iou
        )
        print(
            f"{r['out']}: {r['kept']} pseudo-label(s) kept, {r['below_score']} below --min-score, "
            f"{r['overlap_gt']} overlapping ground truth, {r['new_images']} new image(s)"
        )
        print(f"image root: {r['image_root']}" if r["image_root"] else "image root: not known (pass --images)")
    return 0


def _add_split(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("split", help="split a COCO file into train/val(/test): stratified, grouped, seeded")
    p.add_argument("coco", help="COCO JSON")
    p.add_argument("--val", type=float, required=True, help="fraction of images for val, e.g. 0.2")
    p.add_argument("--test", type=float, default=0.0, help="fraction of images for test (default none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for train.json, val.json (and test.json)")
    p.add_argument(
        "--group-by",
        default=None,
        metavar="REGEX",
        help="keep images whose file_name gives the same match (1st group) in one split, e.g. '^(cam\\d+)/'",
    )
    p.set_defaults(func=_run_split)


def _run_split(args: argparse.Namespace) -> int:
    from birddet.data.split import split_coco

    result = split_coco(args.coco, args.out, val=args.val, test=args.test, seed=args.seed, group_by=args.group_by)
    print(result.summary())
    return 0


def _add_stats(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="counts, size histograms, a gallery and suggested image/anchor sizes")
    p.add_argument("coco", help="COCO JSON")
    p.add_argument("--images", required=True, help="image root the JSON's file_names are relative to")
    p.add_argument("--out", required=True, help="folder for stats.json, histograms.png, gallery.png")
    p.add_argument("--gallery", type=int, default=16, help="images in gallery.png (0: none, no image is read)")
    p.add_argument("--seed", type=int, default=0, help="which images the gallery samples")
    p.add_argument("--levels", type=int, default=None, help="pyramid levels to suggest anchors for (default: 5)")
    p.set_defaults(func=_run_stats)


def _run_stats(args: argparse.Namespace) -> int:
    from birddet.data.stats import format_stats, write_stats

    stats = write_stats(args.coco, args.images, args.out, gallery=args.gallery, seed=args.seed, num_levels=args.levels)
    print(format_stats(stats))
    print(f"written to {args.out}: stats.json, histograms.png" + (", gallery.png" if args.gallery > 0 else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="birddet", description="Find birds in images and name their species.")
    parser.add_argument("--version", action="version", version=f"birddet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = (_add_train, _add_train_classifier, _add_eval, _add_score, _add_predict, _add_synth)
    data_commands = (_add_check, _add_convert, _add_split, _add_stats)
    for add in (*commands, *data_commands):
        add(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting `KEY=VALUE` overrides stand anywhere after the config (before or after `--out`, `--resume`).

    argparse fills a `nargs="*"` positional only from the run of positionals right after the config, so
    `train CFG --out RUN a=1` would leave `a=1` unrecognised; such leftovers are appended, in order, to the
    command's overrides. Anything else left over is still an error.
    """
    args, extras = parser.parse_known_args(argv)
    if extras:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extras):
            args.overrides = [*args.overrides, *extras]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _passive_openmp_threads() -> None:
    """Let idle OpenMP threads sleep instead of spin (OMP_WAIT_POLICY=PASSIVE) unless the user chose a policy.

    On a small machine shared with other processes, spinning threads burn the time slices the working threads
    need: benchmarks/threads.py measured ViT-M/16 at 384 px, 2 threads, on 2 cores at load ~30: 53 s per call with
    the default policy or ACTIVE, 12.6 s with PASSIVE (1 thread: 13-18 s under every policy). OpenMP reads the
    variable when torch loads it, so this must run before the first torch import; every command imports torch
    lazily, after this.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    _passive_openmp_threads()
    parser = build_parser()
    args = _parse(parser, argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        message = " ".join(str(err).split())
        print(f"birddet: error: {message}", file=sys.stderr)
        return 2
    except RunStopped as err:
        message = " ".join(str(err).split())
        print(f"birddet: stopped: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("birddet: interrupted; finished work was kept on disk", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
