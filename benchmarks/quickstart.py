"""The quickstart promise, measured: `birddet train configs/quickstart.yaml` reaches AP50 >= 0.5 in 10 minutes.

    python benchmarks/quickstart.py [--config configs/quickstart.yaml] [--keep DIR] [KEY=VALUE ...]

Runs the same code path as the CLI into a temporary run folder (and a temporary synthetic data folder, so the
timing includes generating the data, as a first-time user's run does), then prints the wall time and the COCO
AP/AP50 of `best.pt` on the synthetic val split. Other processes on the machine slow it down: report the load
(`uptime`) with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from birddet.cli import main

TARGET_AP50 = 0.5
TARGET_SECONDS = 600.0


def run(config: str, overrides: list[str], keep: str | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="birddet-quickstart-") as tmp:
        root = Path(keep) if keep else Path(tmp)
        out = root / "run"
        start = time.perf_counter()
        code = main(["train", config, f"data.synthetic.dir={root / 'data'}", *overrides, "--out", str(out)])
        wall = time.perf_counter() - start
        if code != 0:
            raise SystemExit(code)
        stats = json.loads((out / "metrics.json").read_text())["stats"]
        return {"wall_s": wall, "AP": stats["AP"], "AP50": stats["AP50"]}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--keep", default=None, help="write data and run here instead of a temporary folder")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p.parse_args()


if __name__ == "__main__":
    args = parse()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {load:.2f}")
    r = run(args.config, args.overrides, args.keep)
    ok = r["AP50"] >= TARGET_AP50 and r["wall_s"] <= TARGET_SECONDS
    print(
        f"quickstart: wall {r['wall_s']:.0f} s, AP {r['AP']:.3f}, AP50 {r['AP50']:.3f} "
        f"(target AP50 >= {TARGET_AP50} within {TARGET_SECONDS:.0f} s: {'met' if ok else 'NOT met'})"
    )
