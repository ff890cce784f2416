"""The dataset commands: `birddet synth`, `check`, `convert`, `split` and `stats`; none of them needs a model.

Each parses its flags and calls one function of `birddet.data`, imported inside the command.
"""

from __future__ import annotations

import argparse

from birddet.errors import InputError


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
    p.add_argument(
        "--species",
        choices=["easy", "hard"],
        default=None,
        help="easy (default): songbird, wader, raptor; hard: six look-alike songbirds with sexes that differ",
    )
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
            species=args.species,
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
    p = sub.add_parser("convert", help="turn VOC, YOLO, CSV, GIS labels or predictions into COCO JSON for training")
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
    gis = fmt.add_parser("gis", help="GIS labels (GeoPackage, shapefile) on a georeferenced orthomosaic")
    gis.add_argument("src", metavar="LABELS", help="labels file: .gpkg, .shp or any vector file GDAL reads")
    gis.add_argument("--raster", required=True, help="the georeferenced raster (GeoTIFF) the labels lie on")
    gis.add_argument("--out", required=True, help="output COCO JSON")
    gis.add_argument("--point-box", type=float, default=None, metavar="METRES", help="box side for point labels")
    gis.add_argument("--label-field", default=None, help="attribute holding the category (default: species, ...)")
    gis.add_argument("--layer", default=None, help="layer of a multi-layer file (default: the first)")
    gis.add_argument("--images", default=None, help="image root to record (default: the raster's folder)")
    for parser in (voc, table, gis):
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
    elif args.format == "gis":
        from birddet.data.formats.gis import convert_gis

        result = convert_gis(
            args.src,
            args.raster,
            args.out,
            point_box=args.point_box,
            label_field=args.label_field,
            layer=args.layer,
            images=args.images,
            classes=classes,
        )
        print(result.summary())
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
