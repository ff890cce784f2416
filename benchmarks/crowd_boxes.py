"""Crowd / VOC-difficult boxes in training: ignore regions vs positives vs today's background, by val AP.

    python benchmarks/crowd_boxes.py --out runs/crowd [--fraction 0.3] [--epochs 5] [--num-train 128] [--table]

One synthetic set (`birddet synth`'s square quickstart preset); a seeded `--fraction` of the training boxes is
marked crowd (what `convert voc` makes of `<difficult>` birds). The same detector (configs/quickstart.yaml, same
seed, same steps) is trained three ways and scored on a val split where every bird is a normal box:

- `background` (before issue 18): the marked boxes are no targets and nothing else knows them, so anchors and
  proposals on those birds are sampled as background. Same as deleting the annotations from the training file.
- `ignored` (birddet's rule for crowd boxes): the marked boxes stay `iscrowd=1`; anchors/proposals covering them >= 50 % of their
  own area are neither positive nor negative (`birddet.models.ignore_regions`).
- `positives` (detectron2's VOC loader, and birddet's rule for VOC difficult birds): the marked boxes are trained
  as ordinary boxes (`iscrowd` cleared; `iscrowd: 1, difficult: 1` trains the same).

Every run is one `birddet train` process with one torch thread, the data loaded in-process and one evaluation at
the end, so a run is a fixed amount of computation whatever the machine's load; the CPU time is printed per run.
Finished runs are skipped; `--table` only prints.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

RULES = ("background", "ignored", "positives")


def make_splits(out: Path, fraction: float, num_train: int, num_val: int, seed: int) -> dict[str, Path]:
    """The synthetic set plus one training file per rule; returns rule -> training JSON (and "val")."""
    from birddet.data.synthetic import ensure_synthetic_coco

    data = out / "data"
    ensure_synthetic_coco(data, num_train=num_train, num_val=num_val, preset="square", seed=seed)
    train = json.loads((data / "train.json").read_text())
    anns = train["annotations"]
    rng = np.random.default_rng([seed, 18])
    marked = {anns[i]["id"] for i in rng.choice(len(anns), size=round(fraction * len(anns)), replace=False)}
    variants = {
        "background": [a for a in anns if a["id"] not in marked],
        "ignored": [{**a, "iscrowd": int(a["id"] in marked)} for a in anns],
        "positives": [{**a, "iscrowd": 0} for a in anns],
    }
    paths = {"val": data / "val.json"}
    for rule, rule_anns in variants.items():
        paths[rule] = out / f"train-{rule}.json"
        paths[rule].write_text(json.dumps({**train, "annotations": rule_anns}))
    print(f"{len(anns)} training boxes, {len(marked)} marked crowd/difficult ({len(marked) / len(anns):.0%})")
    return paths


def run_one(rule: str, paths: dict[str, Path], out: Path, epochs: int, seed: int) -> dict:
    run = out / rule
    done = run / "row.json"
    if done.is_file():
        return json.loads(done.read_text())
    cmd = [
        sys.executable, "-m", "birddet.cli", "train", "configs/quickstart.yaml",
        f"data.train.ann={paths[rule]}", f"data.train.images={out / 'data' / 'images'}",
        f"data.val.ann={paths['val']}", f"data.val.images={out / 'data' / 'images'}",
        f"train.epochs={epochs}", f"train.eval_every={epochs}", f"train.seed={seed}",
        "train.device=cpu", "data.workers=0", "--out", str(run),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    run.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(run / "train.log", "w") as log:
        code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise RuntimeError(f"rule {rule} failed (exit {code}); see {run / 'train.log'}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = json.loads((run / "metrics.json").read_text())["stats"]
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    row = {"rule": rule, "AP50": stats["AP50"], "AP": stats["AP"], "AR100": stats.get("AR100"), "cpu_min": cpu / 60}
    done.write_text(json.dumps(row, indent=1))
    return row


def table(rows: list[dict]) -> str:
    lines = ["| rule for marked boxes | val AP50 | val AP | CPU min |", "|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: RULES.index(r["rule"])):
        lines.append(f"| {r['rule']} | {r['AP50']:.3f} | {r['AP']:.3f} | {r['cpu_min']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fraction", type=float, default=0.3, help="share of training boxes marked crowd/difficult")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--num-train", type=int, default=128)
    p.add_argument("--num-val", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    p.add_argument("--table", action="store_true", help="print the table of finished runs only")
    args = p.parse_args()
    if not args.table:
        paths = make_splits(args.out, args.fraction, args.num_train, args.num_val, args.seed)
        for rule in args.rules:
            row = run_one(rule, paths, args.out, args.epochs, args.seed)
            print(f"{rule}: AP50 {row['AP50']:.3f} AP {row['AP']:.3f} ({row['cpu_min']:.1f} CPU min)", flush=True)
    rows = [json.loads(f.read_text()) for f in sorted(args.out.glob("*/row.json"))]
    print(table([r for r in rows if r["rule"] in RULES]))


if __name__ == "__main__":
    main()
