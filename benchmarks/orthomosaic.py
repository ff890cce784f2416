"""Tiled prediction on GeoTIFF orthomosaics of growing size: tiles/s and peak RSS (memory must not grow).

    python benchmarks/orthomosaic.py [--gpx 0.25 1 4] [--tile 1024] [--nodata 0.4] [--workdir DIR] [--keep]

For each size a square RGB GeoTIFF (UTM, 5 cm pixels, tiled 512 px blocks, DEFLATE) is generated block row by block
row, never whole in memory: grey ground with a 12 px white "bird" every 300 px, and no data (0) in the corners
outside an ellipse that covers about `1 - nodata` of the raster, as a drone survey's footprint does. Then
`birddet predict --tile SIZE` runs over it in its own child process with a tiny random-init detector (the ViT tiny
preset at 256 px: the network's cost is not the point, the reading and the memory are) and `--workers 0` (rasters are
read in the main process anyway). Printed per size: windows read and skipped as nodata (from `rasters.json`),
seconds, windows/s, and the child's peak RSS (`getrusage`, its own and its children's).

Run it on a quiet machine: the figures scale with CPU and disk. The rasters are deleted afterwards unless `--keep`.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import resource, sys
from birddet.cli import main
code = main(sys.argv[1:])
me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"PEAK_RSS_KB {max(me, kids)}")
sys.exit(code)
"""

TINY = {
    "model": {
        "backbone": {"preset": "vit_reg4_tiny16_rms_avg"},
        "image_size": 256,
        "pyramid": {"out_channels": 32},
        "rpn": {"pre_nms_top_n_test": 200, "post_nms_top_n_test": 100},
        "roi_heads": {"representation_size": 64, "detections_per_img": 50},
    }
}


def write_orthomosaic(path: Path, side: int, *, nodata: float = 0.4, block: int = 512) -> Path:
    """A `side` x `side` RGB GeoTIFF written one block row at a time (module docstring)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    profile = {
        "driver": "GTiff",
        "width": side,
        "height": side,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500_000.0, 6_100_000.0, 0.05, 0.05),
        "nodata": 0,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "zlevel": 1,
        "BIGTIFF": "IF_SAFER",
    }
    # An ellipse with semi-axes r * side / 2 covers pi r^2 / 4 of the square: pick r for 1 - nodata.
    r = min(1.0, math.sqrt(4 * (1 - nodata) / math.pi))
    cols = (np.arange(side) + 0.5) / side * 2 - 1
    bird_cols = (np.arange(side) % 300 - 150) // 12 == 0
    with rasterio.open(path, "w", **profile) as ds:
        for y0 in range(0, side, block):
            rows = min(block, side - y0)
            yy = ((np.arange(y0, y0 + rows) + 0.5) / side * 2 - 1)[:, None]
            inside = (cols[None, :] ** 2 + yy**2) <= r * r
            strip = np.full((rows, side), 90, dtype=np.uint8)
            bird_rows = (np.arange(y0, y0 + rows) % 300 - 150) // 12 == 0  # rows 150-161 of every 300
            strip[np.ix_(bird_rows, bird_cols)] = 255
            strip[~inside] = 0
            ds.write(np.stack([strip] * 3), window=rasterio.windows.Window(0, y0, side, rows))
    return path


def tiny_checkpoint(path: Path) -> Path:
    import torch

    from birddet.config import config_from_dict
    from birddet.engine.checkpoint import save_checkpoint
    from birddet.models.detector import build_detector

    torch.manual_seed(0)
    return save_checkpoint(path, build_detector(config_from_dict(TINY), {1: "bird"}))


def measure(ckpt: Path, raster: Path, out: Path, tile: int, extra: list[str]) -> dict[str, float]:
    argv = ["predict", str(ckpt), str(raster), "--out", str(out), "--tile", str(tile), "--no-classifier"]
    argv += ["--workers", "0", "--device", "cpu", "--overwrite", *extra]
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"predict failed:\n{run.stderr[-3000:]}")
    peak_kb = next(int(line.split()[1]) for line in run.stdout.splitlines() if line.startswith("PEAK_RSS_KB"))
    record = json.loads((out / "rasters.json").read_text())["rasters"][0]
    return {
        "windows": record["windows_read"],
        "skipped": record["windows_skipped_nodata"],
        "seconds": seconds,
        "peak_gb": peak_kb * 1024 / 1e9,
        "detections": sum(record["detections"].values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpx", type=float, nargs="+", default=[0.25, 1.0, 4.0], help="raster sizes, gigapixels")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--nodata", type=float, default=0.4, help="fraction of the raster outside the footprint")
    parser.add_argument("--workdir", default=None, help="where the rasters go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated rasters")
    parser.add_argument("--predict-args", default="", help="more predict flags, e.g. '--no-full-image'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        ckpt = tiny_checkpoint(work / "tiny.pt")
        print(f"tile {args.tile}, tiny random-init detector at 256 px, --workers 0, {args.nodata:.0%} nodata")
        print(
            f"{'raster':>14} {'Gpx':>5} {'file':>8} {'windows':>8} {'skipped':>8} {'s':>7} {'win/s':>6} {'peak RSS':>9}"
        )
        for gpx in args.gpx:
            side = int(math.sqrt(gpx * 1e9))
            raster = write_orthomosaic(work / f"ortho_{side}.tif", side, nodata=args.nodata)
            m = measure(ckpt, raster, work / f"out_{side}", args.tile, args.predict_args.split())
            print(
                f"{side:>6} x {side:<6} {side * side / 1e9:>5.2f} {raster.stat().st_size / 1e6:>6.0f}MB "
                f"{m['windows']:>8} {m['skipped']:>8} {m['seconds']:>7.0f} {m['windows'] / m['seconds']:>6.1f} "
                f"{m['peak_gb']:>7.2f}GB",
                flush=True,
            )
            if args.keep:
                kept = Path(args.workdir or ".") / raster.name
                raster.replace(kept)
                print(f"kept {kept}")
            else:
                raster.unlink()


if __name__ == "__main__":
    main()
