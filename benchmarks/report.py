"""`birddet report` at scale: the time to build the report of a 10,000-image predict folder (target: < 2 min on 2
cores).

    python benchmarks/report.py [--images 10000] [--photos 400] [--size 1920 1080] [--max-images 2000] [--workers N]

A predict folder is generated the way predict writes one (`write_outputs`: megadetector.json, coco.json,
predictions.csv; `ProgressLog`: progress.jsonl), with 0 to 5 boxes an image, three species, and scores spread over
(0.05, 1). Its `--images` entries point at `--photos` distinct JPEGs of `--size` (writing 10,000 full-size photos
would take gigabytes; each shown image is still decoded and shrunk in full, and the OS caches the files as it
would after predict read them). Only `build_report` is timed (reading the folder, the stratified sample, the
previews, the site). Other processes on the machine slow it down: report the load (`uptime`) with the number.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from birddet.pipeline.progress import ProgressLog
from birddet.pipeline.results import Classification, Detection, ImageResult
from birddet.pipeline.taxonomy import Taxonomy
from birddet.pipeline.writers import write_outputs
from birddet.report import build_report

TARGET_SECONDS = 120.0
SPECIES = ["Parus major", "Turdus merula", "Pica pica"]


def make_photos(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Noisy JPEGs (noise decodes as slowly as a real photo; a flat colour would not)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        base = rng.integers(40, 200, size=3)
        noise = rng.integers(-40, 40, size=(size[1] // 4, size[0] // 4, 3))
        small = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        path = folder / f"photo_{i:04d}.jpg"
        small.resize(size, Image.Resampling.BILINEAR).save(path, quality=90)
        paths.append(path)
    return paths


def make_predict_folder(out: Path, photos: list[Path], count: int, size: tuple[int, int], seed: int = 0) -> None:
    rng = random.Random(seed)
    w, h = size
    results = []
    for i in range(count):
        dets = []
        for _ in range(rng.randrange(6)):
            x, y, bw, bh = (
                rng.uniform(0, w * 0.8),
                rng.uniform(0, h * 0.8),
                rng.uniform(30, w * 0.2),
                rng.uniform(30, h * 0.2),
            )
            probs = sorted((rng.random() for _ in SPECIES), reverse=True)
            order = rng.sample(range(len(SPECIES)), len(SPECIES))
            classes = [Classification(order[k], probs[k] / sum(probs)) for k in range(len(SPECIES))]
            dets.append(Detection((x, y, min(w, x + bw), min(h, y + bh)), rng.uniform(0.05, 1.0), 1, "bird", classes))
        results.append(ImageResult(f"cam{i % 20}/img_{i:05d}.jpg", str(photos[i % len(photos)]), w, h, dets))
    out.mkdir(parents=True)
    log = ProgressLog(out / "progress.jsonl", {"conf": 0.05})
    log.start(resume=False)
    log.append(results)
    taxonomy = Taxonomy({name: k for k, name in enumerate(SPECIES)})
    write_outputs(
        out, results, ["megadetector", "coco", "csv"], detection_categories={1: "bird"}, taxonomy=taxonomy,
        detector_name="benchmark.pt",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--size", type=int, nargs=2, default=(1920, 1080), metavar=("W", "H"))
    parser.add_argument("--max-images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: min(4, cores))")
    args = parser.parse_args()
    size = (args.size[0], args.size[1])
    with tempfile.TemporaryDirectory(prefix="birddet-report-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        photos = make_photos(root / "photos", args.photos, size)
        make_predict_folder(root / "run", photos, args.images, size)
        print(f"generated {args.images} results over {args.photos} {size[0]}x{size[1]} photos in "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip
        started = time.perf_counter()
        summary = build_report(root / "run", root / "report", max_images=args.max_images, workers=args.workers)
        seconds = time.perf_counter() - started
        report_mb = sum(p.stat().st_size for p in (root / "report").rglob("*") if p.is_file()) / 1e6
        print(summary)
        print(
            f"report of {args.images} images ({args.max_images} shown): {seconds:.1f} s, {report_mb:.0f} MB; "
            f"target < {TARGET_SECONDS:.0f} s; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
        )


if __name__ == "__main__":
    main()
