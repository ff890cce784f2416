"""Peak memory of predict's image loader on decompression bombs that each pass the per-image cap.

    python benchmarks/decode_memory.py [--images 4] [--side 12000] [--workers 2] [--batch-size 4] [--budget 150]

The reviewers' repro: four PNGs of 12000 x 12000 px (about 140 KB each: flat colour compresses to nothing), each
144 Mpx, under the 150 Mpx per-image cap, decoded by 2 DataLoader workers in batches of 4. Each setting runs in its
own child process, which iterates the loader and holds every batch for a moment (as predict does while the
detector runs), while a thread samples the proportional set size (PSS, so shared memory between the workers and
the main process counts once) of the child and its workers every 10 ms. Printed: the peak total PSS per setting.

Settings: "before" is the loader as it was (`batch_size` images per batch, no budget); "default budget" is
`birddet.pipeline.predict.image_loader` with `--decode-budget` unset (a quarter of the available memory, so on a
big machine it may allow all four); "budget N" sets `--decode-budget N` megapixels.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys, threading, time
from pathlib import Path
import torch
from torch.utils.data import DataLoader
from birddet.data.images import MAX_IMAGE_PIXELS
from birddet.pipeline.predict import ImageFiles, PredictOptions, _collate, image_loader

folder, mode, workers, batch, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
paths = sorted(Path(folder).glob("*.png"))

def pss(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0

def tree(pid):
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        children = []
    return [pid] + [p for c in children for p in tree(int(c))]

peak, base, done = [0], [0], [False]
import os
me = os.getpid()
def sample():
    while not done[0]:
        peak[0] = max(peak[0], sum(pss(p) for p in tree(me)))
        time.sleep(0.01)
base[0] = pss(me)
threading.Thread(target=sample, daemon=True).start()
if mode == "before":
    loader = DataLoader(ImageFiles(paths, max_pixels=MAX_IMAGE_PIXELS), batch_size=batch, num_workers=workers,
                        collate_fn=_collate)
else:
    opts = PredictOptions(batch_size=batch, workers=workers, decode_budget=None if budget == "none" else float(budget))
    loader = image_loader(paths, opts, torch.device("cpu"))
decoded = 0
for b in loader:
    decoded += sum(img is not None for _, img, _ in b)
    time.sleep(1.0)  # the detector's turn: the workers keep decoding ahead meanwhile
time.sleep(0.1)
done[0] = True
print(f"{decoded} {base[0]} {peak[0]}")
"""


def make_bombs(folder: Path, count: int, side: int) -> list[Path]:
    from PIL import Image

    paths = []
    for i in range(count):
        path = folder / f"bomb{i}.png"
        Image.new("RGB", (side, side), (30 * i % 255, 120, 200)).save(path, compress_level=1)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--side", type=int, default=12000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--budget", type=float, nargs="*", default=[150.0], help="--decode-budget values (Mpx)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_bombs(Path(tmp), args.images, args.side)
        sizes = ", ".join(f"{p.stat().st_size / 1e3:.0f} KB" for p in paths)
        print(
            f"{args.images} PNGs of {args.side}x{args.side} px ({sizes}); {args.workers} workers, batch {args.batch_size}"
        )
        settings = [("before", "none"), ("default budget", "none")] + [
            (f"budget {b:g} Mpx", str(b)) for b in args.budget
        ]
        print(f"{'setting':<20} {'decoded':>7} {'peak PSS':>10} {'above start':>12}")
        for name, budget in settings:
            mode = "before" if name == "before" else "budget"
            out = subprocess.run(
                [sys.executable, "-c", CHILD, tmp, mode, str(args.workers), str(args.batch_size), budget],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            decoded, base, peak = int(out[0]), int(out[1]), int(out[2])
            print(f"{name:<20} {decoded:>7} {peak / 2**30:>8.2f} GiB {(peak - base) / 2**30:>10.2f} GiB")


if __name__ == "__main__":
    main()
