"""Bring your own data, measured: raw VOC / YOLO / CSV -> convert -> split -> check -> train -> eval, per format.

    python benchmarks/byod.py [--images 300] [--epochs 4] [--preset square|realistic|dense] [--no-train]
                              [--formats voc,yolo,csv] [--keep DIR] [KEY=VALUE ...]

Generates the synthetic bird set (one pool of images, as a user's unsplit data would be), writes it out as Pascal
VOC XML, a Roboflow-layout YOLO folder and a DeepForest CSV (with the library's own writers), then runs the four
README commands through the real CLI in subprocesses, one format after the other, and prints each step's wall time
and the AP50 of the run (`metrics.json`) and of `birddet eval RUN/best.pt`. `max_box_err` is the largest
difference (px) between a converted box and the generator's own COCO box, after matching images by file name: the
converters' accuracy on that data (with `--preset realistic`, on 16:9, portrait and EXIF-rotated JPEGs). Timings depend on the machine's load:
report `uptime` with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from birddet.data.formats.csv import write_csv
from birddet.data.formats.voc import write_voc
from birddet.data.formats.yolo import write_yolo
from birddet.data.synthetic import make_synthetic_coco

ROOT = Path(__file__).resolve().parents[1]


def birddet(*argv: str) -> tuple[float, str]:
    """Run `birddet ARGV` in a fresh process (as a user would); returns wall seconds and stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "birddet.cli", *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"birddet {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def make_raw_data(root: Path, num_images: int, seed: int, preset: str) -> tuple[Path, dict]:
    """The synthetic set as one unsplit pool, written in each raw format; returns the image folder and its COCO."""
    paths = make_synthetic_coco(root / "synth", num_train=num_images, num_val=0, seed=seed, preset=preset)
    coco = json.loads(paths["train"].read_text())
    images = paths["images"]
    write_voc(coco, root / "voc")  # XML only; images stay in their own folder (--images)
    write_yolo(coco, images, root / "yolo", "train")
    names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    (root / "yolo" / "data.yaml").write_text(yaml.safe_dump({"train": "../train/images", "names": names}))
    write_csv(coco, root / "birds.csv")
    return images, coco


def max_box_error(truth: dict, converted: dict) -> float:
    """Largest |coordinate difference| between matched boxes (images by base name, boxes sorted); inf if unmatched."""

    def boxes(data: dict) -> dict[str, list[list[float]]]:
        out: dict[str, list[list[float]]] = {}
        names = {img["id"]: Path(img["file_name"]).name.split("__")[-1] for img in data["images"]}
        for name in names.values():
            out[name] = []
        for a in data["annotations"]:
            out[names[a["image_id"]]].append(a["bbox"])
        # sort on rounded values: a 1e-7 difference must not reorder two boxes with the same x
        return {k: sorted(v, key=lambda b: [round(x, 3) for x in b]) for k, v in out.items()}

    a, b = boxes(truth), boxes(converted)
    if a.keys() != b.keys() or any(len(a[k]) != len(b[k]) for k in a):
        return float("inf")
    return max((abs(x - y) for k in a for p, q in zip(a[k], b[k]) for x, y in zip(p, q)), default=0.0)


def image_root_from(stdout: str) -> str:
    return next(line.split("image root: ", 1)[1].split()[0] for line in stdout.splitlines() if "image root: " in line)


def run_format(
    fmt: str, root: Path, images: Path, truth: dict, config: str, overrides: list[str], train: bool
) -> dict[str, float | str]:
    work = root / fmt
    t: dict[str, float | str] = {"format": fmt}
    if fmt == "voc":
        t["convert_s"], out = birddet(
            "convert", "voc", str(root / "voc"), "--images", str(images), "--out", str(work / "all.json")
        )
        coco = work / "all.json"
    elif fmt == "yolo":
        t["convert_s"], out = birddet("convert", "yolo", str(root / "yolo"), "--out", str(work))
        coco = work / "train.json"
    else:
        t["convert_s"], out = birddet(
            "convert", "csv", str(root / "birds.csv"), "--images", str(images), "--out", str(work / "all.json")
        )
        coco = work / "all.json"
    image_root = image_root_from(out)
    t["max_box_err"] = max_box_error(truth, json.loads(coco.read_text()))
    t["split_s"], _ = birddet("split", str(coco), "--val", "0.2", "--seed", "0", "--out", str(work / "split"))
    train_json, val_json = work / "split" / "train.json", work / "split" / "val.json"
    t["check_s"], _ = birddet("check", str(val_json), "--images", image_root)
    t["train_images"] = len(json.loads(train_json.read_text())["images"])
    t["val_images"] = len(json.loads(val_json.read_text())["images"])
    if not train:
        return t
    run = work / "run"
    t["train_s"], _ = birddet(
        "train", config, f"data.train.ann={train_json}", f"data.train.images={image_root}",
        f"data.val.ann={val_json}", f"data.val.images={image_root}", *overrides, "--out", str(run),
    )  # fmt: skip
    t["run_AP50"] = json.loads((run / "metrics.json").read_text())["stats"]["AP50"]
    t["eval_s"], _ = birddet("eval", str(run / "best.pt"), "--ann", str(val_json), "--images", image_root,
                             "--out", str(work / "eval"), "--no-plots")  # fmt: skip
    t["eval_AP50"] = json.loads((work / "eval" / "metrics.json").read_text())["stats"]["AP50"]
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="square", help="birddet synth preset (square, realistic, dense)")
    p.add_argument("--no-train", action="store_true", help="stop after convert, split and check")
    p.add_argument("--formats", default="voc,yolo,csv")
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--keep", default=None, help="work here instead of a temporary folder")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPUs, load {load:.2f} at start; {args.images} images, {args.epochs} epochs", flush=True)
    with tempfile.TemporaryDirectory(prefix="birddet-byod-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        start = time.perf_counter()
        images, truth = make_raw_data(root, args.images, args.seed, args.preset)
        print(f"generated and wrote VOC/YOLO/CSV in {time.perf_counter() - start:.1f} s", flush=True)
        rows = []
        for fmt in args.formats.split(","):
            overrides = [f"train.epochs={args.epochs}", *args.overrides]
            row = run_format(fmt, root, images, truth, args.config, overrides, not args.no_train)
            rows.append(row)
            print(json.dumps(row), flush=True)
    cols = ["format", "train_images", "val_images", "max_box_err", "convert_s", "split_s", "check_s", "train_s",
            "eval_s", "run_AP50", "eval_AP50"]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [r.get(c, "-") for c in cols]
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in cells) + " |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load {load:.2f} at end")


if __name__ == "__main__":
    main()
