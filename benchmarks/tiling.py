"""Tiled (sliced) inference, measured: small birds in big images, untiled vs tiled with each merge method.

    python benchmarks/tiling.py dense CHECKPOINT [--size 4000 3000] [--birds 300] [--bird-px 20 40] [--tile 192]
    python benchmarks/tiling.py mosaic CHECKPOINT --val DATA/val.json --images DATA/images [--grid 3]

`dense` draws one image of the synthetic `dense` preset (default 4,000 x 3,000 with 300 birds of 20-40 px) and
runs `birddet eval` on it untiled and tiled (NMS and greedy NMM, IoU and IoS matching), each in a fresh process,
with `--max-dets 1000`; it prints AP50 and AR at 1,000 detections per image (pycocotools' maxDets=1000), seconds per
megapixel and the process's peak resident memory.

`mosaic` is the acceptance check of tiling: it pastes the split's images (e.g. the quickstart val set) into
GRID x GRID mosaics, each image centred in a cell of the model's input size, with the boxes moved along, and compares
AP50 on the separate images, on the mosaics untiled, and on the mosaics tiled at the model's input size.

Timings on a shared CPU are noisy: report `uptime` with the numbers and compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

VARIANTS: dict[str, list[str]] = {
    "untiled": [],
    "tiled nms iou": ["--merge", "nms", "--merge-match", "iou"],
    "tiled nms ios": ["--merge", "nms", "--merge-match", "ios"],
    "tiled nmm iou": ["--merge", "nmm", "--merge-match", "iou"],
    "tiled nmm ios": ["--merge", "nmm", "--merge-match", "ios"],
}


def eval_once(checkpoint: str, ann: str, images: str, out: str, extra: list[str]) -> dict[str, Any]:
    """`birddet eval` in this process; returns its stats, wall time and peak RSS (run me in a fresh process)."""
    from birddet.cli import main

    start = time.perf_counter()
    argv = ["eval", checkpoint, "--ann", ann, "--images", images, "--out", out, "--no-plots", "--workers", "0"]
    code = main([*argv, *extra])
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(code)
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"stats": metrics["stats"], "max_dets": metrics["max_dets"], "wall_s": wall, "peak_mb": peak_mb}


def eval_in_child(checkpoint: str, ann: str, images: str, out: str, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "_one", checkpoint, ann, images, out, "--", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"eval failed ({' '.join(extra)}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _megapixels(ann: str) -> float:
    images = json.loads(Path(ann).read_text())["images"]
    return sum(i["width"] * i["height"] for i in images) / 1e6


# -- dense ------------------------------------------------------------------------------------------------------------
def dense(args: argparse.Namespace, root: Path) -> None:
    from birddet.data.synthetic import make_synthetic_coco

    w, h = args.size
    short = min(w, h)
    paths = make_synthetic_coco(
        root / "dense",
        num_train=0,
        num_val=1,
        preset="dense",
        seed=args.seed,
        image_size=(max(w, h), max(w, h)),
        aspect_ratios=(max(w, h) / short,),
        bird_frac=(args.bird_px[0] / short, args.bird_px[1] / short),
        birds_per_image=(args.birds, args.birds),
    )
    ann, images = str(paths["val"]), str(paths["images"])
    gt = json.loads(Path(ann).read_text())
    mpx = _megapixels(ann)
    info = gt["images"][0]
    print(f"dense image {info['width']} x {info['height']} ({mpx:.1f} Mpx), {len(gt['annotations'])} birds")
    base = ["--max-dets", "1000", "--device", args.device]
    tile = ["--tile", str(args.tile), "--tile-overlap", str(args.overlap), "--batch-size", str(args.batch_size)]
    rows = []
    for name, extra in VARIANTS.items():
        flags = base + ([] if name == "untiled" else tile + extra)
        r = eval_in_child(args.checkpoint, ann, images, str(root / name.replace(" ", "_")), flags)
        rows.append((name, r))
        s = r["stats"]
        print(
            f"{name:<14} AP50 {s['AP50']:.3f}  AR@{r['max_dets'][2]} {s['AR100']:.3f}  "
            f"{r['wall_s'] / mpx:6.2f} s/Mpx  peak {r['peak_mb']:.0f} MB"
        )


# -- mosaic -----------------------------------------------------------------------------------------------------------
def build_mosaics(val: str, images: str, grid: int, cell: int, out: Path) -> tuple[Path, Path]:
    """GRID x GRID mosaics of the split's images (each centred in a `cell` px square) with the boxes moved along;
    returns (mosaic COCO JSON, the COCO JSON of the images used, for the separate-images baseline)."""
    data = json.loads(Path(val).read_text())
    anns: dict[int, list[dict[str, Any]]] = {}
    for a in data["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    per = grid * grid
    used = data["images"][: len(data["images"]) // per * per]
    out.mkdir(parents=True, exist_ok=True)
    m_images, m_anns = [], []
    for m in range(len(used) // per):
        canvas = Image.new("RGB", (grid * cell, grid * cell), (124, 116, 104))
        for k, info in enumerate(used[m * per : (m + 1) * per]):
            with Image.open(Path(images) / info["file_name"]) as im:
                im = im.convert("RGB")
                ox = (k % grid) * cell + (cell - im.width) // 2
                oy = (k // grid) * cell + (cell - im.height) // 2
                canvas.paste(im, (ox, oy))
            for a in anns.get(info["id"], []):
                x, y, bw, bh = a["bbox"]
                m_anns.append({**a, "id": len(m_anns) + 1, "image_id": m + 1, "bbox": [x + ox, y + oy, bw, bh]})
        name = f"mosaic_{m:03d}.png"
        canvas.save(out / name)
        m_images.append({"id": m + 1, "file_name": name, "width": canvas.width, "height": canvas.height})
    mosaic = {"images": m_images, "annotations": m_anns, "categories": data["categories"]}
    (out / "mosaic.json").write_text(json.dumps(mosaic))
    ids = {i["id"] for i in used}
    subset = {
        "images": used,
        "annotations": [a for a in data["annotations"] if a["image_id"] in ids],
        "categories": data["categories"],
    }
    (out / "separate.json").write_text(json.dumps(subset))
    return out / "mosaic.json", out / "separate.json"


def mosaic(args: argparse.Namespace, root: Path) -> None:
    import torch

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model = ckpt["config"]["model"]
    cell = int(model.get("max_size") or model["image_size"])
    del ckpt
    m_ann, s_ann = build_mosaics(args.val, args.images, args.grid, cell, root / "mosaic")
    mosaic_images = str(root / "mosaic")
    n = len(json.loads(Path(s_ann).read_text())["images"])
    print(f"{n} images in {n // args.grid**2} mosaics of {args.grid}x{args.grid} cells of {cell} px")
    dev = ["--device", args.device]
    rows = {"separate images": eval_in_child(args.checkpoint, str(s_ann), args.images, str(root / "sep"), dev)}
    rows["mosaic untiled"] = eval_in_child(args.checkpoint, str(m_ann), mosaic_images, str(root / "unt"), dev)
    for overlap in args.overlaps:
        for merge in ("nms", "nmm"):
            flags = [*dev, "--tile", str(cell), "--tile-overlap", str(overlap), "--merge", merge]
            out = str(root / f"t{overlap}{merge}")
            rows[f"mosaic tiled {cell} ov {overlap} {merge}"] = eval_in_child(
                args.checkpoint, str(m_ann), mosaic_images, out, flags
            )
    ref = rows["separate images"]["stats"]["AP50"]
    for name, r in rows.items():
        s = r["stats"]
        print(f"{name:<32} AP50 {s['AP50']:.3f} ({s['AP50'] / ref:6.1%} of separate)  AP {s['AP']:.3f}")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    d = sub.add_parser("dense")
    d.add_argument("checkpoint")
    d.add_argument("--size", type=int, nargs=2, default=[4000, 3000], metavar=("W", "H"))
    d.add_argument("--birds", type=int, default=300)
    d.add_argument("--bird-px", type=float, nargs=2, default=[20, 40])
    d.add_argument("--tile", type=int, default=192)
    d.add_argument("--overlap", type=float, default=0.25)
    d.add_argument("--batch-size", type=int, default=8)
    d.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("mosaic")
    m.add_argument("checkpoint")
    m.add_argument("--val", required=True)
    m.add_argument("--images", required=True)
    m.add_argument("--grid", type=int, default=3)
    m.add_argument("--overlaps", type=float, nargs="+", default=[0.25, 0.5])
    for q in (d, m):
        q.add_argument("--device", default="cpu")
        q.add_argument("--keep", default=None, help="keep data and outputs here")
    return p.parse_args()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_one":
        ck, an, im, out_dir = sys.argv[2:6]
        print(json.dumps(eval_once(ck, an, im, out_dir, sys.argv[7:])))
        raise SystemExit(0)
    args = parse()
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load {load:.1f}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory(prefix="birddet-tiling-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        dense(args, root) if args.mode == "dense" else mosaic(args, root)
