"""Learning curves at equal CPU time: val AP50/AP (detectors) or val top-1 (species classifiers) after budgets of
2, 5 and 10 CPU minutes, per recipe.

    python benchmarks/learning_curve.py --out runs/curves [--minutes 2 5 10] [--candidates NAME ...]
        [--parallel 2] [--threads 1] [--data DIR] [--table]
    python benchmarks/learning_curve.py --task species --out runs/species ...   # `train-classifier` recipes on the
                                                                                 # realistic preset's hard species

Each (candidate, budget) pair is one `birddet train CONFIG ... train.time_budget=M train.budget_clock=cpu` run on
`birddet synth --preset realistic` (224 train / 56 val photos, generated into `--data` when missing), so every run
plans its own epochs and LR schedule for its budget, as a user's run would. The AP is that of the run's `best.pt` on
the val split (`metrics.json`).

Why CPU time: on a shared machine a wall-clock budget measures the neighbours as much as the recipe. Every run
is one process with `--threads` torch threads and the data loaded in-process (`data.workers=0`), and its budget
counts that process's CPU time over all its threads, so runs started side by side (`--parallel`) get the same amount
of computation whatever else the machine does. Idle OpenMP threads sleep instead of spinning
(`OMP_WAIT_POLICY=PASSIVE`), so waiting is not billed as work. One CPU minute is one minute of one core. The
defaults (one thread per run, two runs side by side) suit a 2-core machine: one thread wastes no CPU time on
synchronisation, so a CPU minute buys the most training; the whole default table takes about 35 minutes.

Finished runs are skipped, so the script can be called again to add budgets or candidates; `--table` only prints.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: from_scratch.yaml as it was before issue 21 (a quarter of the RoIs positive, no TTA, no box refinement, tested at
#: 224 px): the ablations below were measured against it, so they keep it and stay reproducible.
BEFORE = [
    "model.roi_heads.positive_fraction=0.25",
    "model.tta=none",
    "model.roi_heads.refine_steps=0",
    "model.test_size=null",
    "model.tta_sizes=[]",
]
#: from_scratch.yaml after the first half of issue 21 (half positive RoIs, flip TTA): the candidates marked so were
#: measured against it.
HALF_POSITIVE_TTA = ["model.roi_heads.refine_steps=0", "model.test_size=null", "model.tta_sizes=[]"]
#: from_scratch.yaml tested at its one square (256 px, flip TTA, two refinement passes), before `tta_sizes`.
ONE_SQUARE = ["model.tta_sizes=[]"]
#: name -> (config, overrides): the two recipes and the ablations of the from-scratch one.
CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "quickstart": ("configs/quickstart.yaml", []),
    "from_scratch": ("configs/from_scratch.yaml", []),
    "from_scratch before issue 21 (1/4 positive RoIs, no TTA)": ("configs/from_scratch.yaml", BEFORE),
    "from_scratch, with mosaic": (
        "configs/from_scratch.yaml",
        [*BEFORE, "data.augment.mosaic=1.0", "data.augment.mosaic_off_epochs=2"],
    ),
    "from_scratch, 288 px": (
        "configs/from_scratch.yaml",
        [*BEFORE, "model.image_size=288", "model.rpn.anchor_sizes=[36,72,144,288]"],
    ),
    # Tighter boxes (AP at IoU 0.5:0.95): the box-regression loss and the positives it learns from.
    "from_scratch, GIoU box loss": ("configs/from_scratch.yaml", [*BEFORE, "model.roi_heads.box_loss=giou"]),
    "from_scratch, GIoU box loss x2": (
        "configs/from_scratch.yaml",
        [*BEFORE, "model.roi_heads.box_loss=giou", "model.roi_heads.box_loss_weight=2.0"],
    ),
    "from_scratch, box coder x2": (
        "configs/from_scratch.yaml",
        [*BEFORE, "model.roi_heads.bbox_reg_weights=[20,20,10,10]"],
    ),
    "from_scratch, half positive RoIs": (
        "configs/from_scratch.yaml",
        [*BEFORE, "model.roi_heads.positive_fraction=0.5"],
    ),
    "from_scratch, 3/4 positive RoIs": (
        "configs/from_scratch.yaml",
        [*BEFORE, "model.roi_heads.positive_fraction=0.75"],
    ),
    "from_scratch, half positive RoIs, box coder x2": (
        "configs/from_scratch.yaml",
        [*BEFORE, "model.roi_heads.positive_fraction=0.5", "model.roi_heads.bbox_reg_weights=[20,20,10,10]"],
    ),
    "from_scratch, EMA": (
        "configs/from_scratch.yaml",
        [*BEFORE, "train.ema=true", "train.ema_decay=0.995", "train.ema_tau=100"],
    ),
    "from_scratch, 4conv1fc head": ("configs/from_scratch.yaml", [*BEFORE, "model.roi_heads.box_head=4conv1fc"]),
    # Against from_scratch.yaml after the first half of issue 21 (half positives, flip TTA):
    "from_scratch, fg IoU 0.6": (
        "configs/from_scratch.yaml",
        [*HALF_POSITIVE_TTA, "model.roi_heads.fg_iou_thresh=0.6"],
    ),
    "from_scratch, multi-scale 224/288, tested at 288": (
        "configs/from_scratch.yaml",
        [*HALF_POSITIVE_TTA, "data.augment.multi_scale=[1.0,1.2857]", "model.test_size=288"],
    ),
    # Resolution: birds are 20-25 px at 224 px. Crops of photos shown larger than the input square, tested larger.
    **{
        f"from_scratch, scale jitter 0.8-1.8, tested at 288{f', seed {seed}' if seed else ''}": (
            "configs/from_scratch.yaml",
            [*HALF_POSITIVE_TTA, "data.augment.scale_range=[0.8,1.8]", "model.test_size=288", f"train.seed={seed}"],
        )
        for seed in range(4)
    },
    "from_scratch, scale jitter 1.0-2.0, tested at 352": (
        "configs/from_scratch.yaml",
        [*HALF_POSITIVE_TTA, "data.augment.scale_range=[1.0,2.0]", "model.test_size=352"],
    ),
    "from_scratch after half positives and TTA, seed 1": (
        "configs/from_scratch.yaml",
        [*HALF_POSITIVE_TTA, "train.seed=1"],
    ),
    # Seeds of the config and of the one before issue 21: the spread between seeds is as large as most gains.
    **{
        f"from_scratch before issue 21, seed {seed}": ("configs/from_scratch.yaml", [*BEFORE, f"train.seed={seed}"])
        for seed in range(1, 4)
    },
    **{f"from_scratch, seed {seed}": ("configs/from_scratch.yaml", [f"train.seed={seed}"]) for seed in range(1, 4)},
    **{
        f"from_scratch at one test square{f', seed {seed}' if seed else ''}": (
            "configs/from_scratch.yaml",
            [*ONE_SQUARE, f"train.seed={seed}"],
        )
        for seed in range(4)
    },
}
#: name -> (config, overrides): species classifiers on the hard species (`--task species`).
SPECIES_CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "species_quickstart": ("configs/species_quickstart.yaml", []),
    "species_from_scratch": ("configs/species_from_scratch.yaml", []),
    "species_from_scratch, small ViT at 96 px (the previous recipe)": (
        "configs/species_from_scratch.yaml",
        ["model.backbone.preset=vit_reg4_small16_rms_avg", "model.image_size=96", "train.lr=1e-3"],
    ),
    "species_from_scratch, resnet_v1_18": ("configs/species_from_scratch.yaml", ["model.backbone.preset=resnet_v1_18"]),
    "species_from_scratch, 96 px": ("configs/species_from_scratch.yaml", ["model.image_size=96"]),
    "species_from_scratch, 128 px": ("configs/species_from_scratch.yaml", ["model.image_size=128"]),
    "species_from_scratch, no TrivialAugment": (
        "configs/species_from_scratch.yaml",
        ["data.augment.auto_augment=none"],
    ),
    "species_from_scratch, no label smoothing": ("configs/species_from_scratch.yaml", ["train.label_smoothing=0"]),
    "species_from_scratch, lr 1e-3": ("configs/species_from_scratch.yaml", ["train.lr=1e-3"]),
    "species_from_scratch, lr 4e-3": ("configs/species_from_scratch.yaml", ["train.lr=4e-3"]),
}
NUM_TRAIN, NUM_VAL = 224, 56  # a few hundred photos, 80/20, like the 282 feeder photos of issue 14


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name).replace("--", "-").strip("-")


def ensure_data(root: Path, species: str = "easy") -> Path:
    from birddet.data.synthetic import ensure_synthetic_coco

    ensure_synthetic_coco(root, num_train=NUM_TRAIN, num_val=NUM_VAL, preset="realistic", seed=0, species=species)
    return root


def run_one(name: str, minutes: float, data: Path, out: Path, threads: int) -> dict:
    """Train one candidate for `minutes` CPU minutes (skipped when already done); returns its row."""
    run = out / f"{slug(name)}-{minutes:g}min"
    done = run / "row.json"
    if done.is_file():
        return json.loads(done.read_text())
    if run.exists():  # an interrupted run: start again (its plan was made for a budget it did not get)
        import shutil

        shutil.rmtree(run)
    species = name in SPECIES_CANDIDATES
    config, overrides = SPECIES_CANDIDATES[name] if species else CANDIDATES[name]
    cmd = [
        sys.executable, "-m", "birddet.cli", "train-classifier" if species else "train", config, *overrides,
        f"data.train.ann={data / 'train.json'}", f"data.train.images={data / 'images'}",
        f"data.val.ann={data / 'val.json'}", f"data.val.images={data / 'images'}",
        f"train.time_budget={minutes}", "train.budget_clock=cpu", "train.device=cpu", "data.workers=0",
        "--out", str(run),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    run.mkdir(parents=True)
    start, load0 = time.time(), os.getloadavg()[0]
    with open(run / "train.log", "w") as log:
        code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise RuntimeError(f"{name} at {minutes} min failed (exit {code}); see {run / 'train.log'}")
    row = summarize(name, minutes, run)
    row.update(wall_min=(time.time() - start) / 60, load=(load0 + os.getloadavg()[0]) / 2)
    done.write_text(json.dumps(row, indent=1))
    return row


def summarize(name: str, minutes: float, run: Path) -> dict:
    import torch

    metrics = json.loads((run / "metrics.json").read_text())
    training = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["training"]
    plans = [json.loads(line)["budget_plan"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "budget_plan" in line]  # fmt: skip
    return {
        "candidate": name,
        "budget_min": minutes,
        "epochs": training["epoch"],
        "planned": [p["epochs"] for p in plans],
        "cpu_min": training["budget"]["elapsed_s"] / 60,
        "best_epoch": training["best_epoch"],
        **(
            {"top1": metrics["top1"]}
            if "top1" in metrics
            else {"AP50": metrics["stats"]["AP50"], "AP": metrics["stats"]["AP"]}
        ),
    }


def table(rows: list[dict], species: bool = False) -> str:
    """The markdown table of finished runs: val AP50 / AP for detectors, val top-1 for species classifiers."""
    order = list(SPECIES_CANDIDATES if species else CANDIDATES)
    scores = ["val top-1"] if species else ["val AP50", "val AP"]
    lines = [
        "| recipe | CPU budget (min) | epochs (plans) | CPU min used | wall min | load | " + " | ".join(scores) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(scores),
    ]
    for r in sorted(rows, key=lambda r: (order.index(r["candidate"]), r["budget_min"])):
        values = [r["top1"]] if species else [r["AP50"], r["AP"]]
        lines.append(
            f"| {r['candidate']} | {r['budget_min']:g} | {r['epochs']} ({' -> '.join(map(str, r['planned']))}) "
            f"| {r['cpu_min']:.1f} | {r.get('wall_min', float('nan')):.1f} | {r.get('load', float('nan')):.1f} | "
            + " | ".join(f"{v:.3f}" for v in values)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=None, help="the realistic synthetic set (default OUT/data)")
    p.add_argument("--minutes", type=float, nargs="+", default=[2, 5, 10])
    p.add_argument("--task", choices=["detector", "species"], default="detector",
                   help="detector: the detector recipes on the realistic preset; species: species classifiers on its "
                   "hard species (`birddet synth --preset realistic --species hard`)")  # fmt: skip
    p.add_argument("--species", choices=["easy", "hard"], default=None,
                   help="the synthetic set's species (default: hard for --task species, easy for detectors); "
                   "`--task detector --species hard` trains the detector half of the two-stage pair")  # fmt: skip
    p.add_argument("--candidates", nargs="+", default=None, choices=[*CANDIDATES, *SPECIES_CANDIDATES])
    p.add_argument("--parallel", type=int, default=2, help="runs at once (started side by side, same load)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--table", action="store_true", help="print the table of finished runs only")
    args = p.parse_args()
    species = args.task == "species"
    candidates = SPECIES_CANDIDATES if species else CANDIDATES
    args.candidates = args.candidates or list(candidates)
    kind = args.species or ("hard" if species else "easy")
    data = args.data or args.out / ("data-hard-species" if kind == "hard" else "data")
    if not args.table:
        # A set generated with other settings is generated again in place (`ensure_synthetic_coco`), so a detector
        # run pointed at the hard set without `--species hard` would silently turn it into the easy one.
        ensure_data(data, kind)
        jobs = [(c, m) for m in args.minutes for c in args.candidates]  # equal budgets side by side
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            for row in pool.map(lambda job: run_one(*job, data, args.out, args.threads), jobs):
                score = f"top-1 {row['top1']:.3f}" if species else f"AP50 {row['AP50']:.3f} AP {row['AP']:.3f}"
                print(f"{row['candidate']} @ {row['budget_min']:g} CPU min: {score}")
    for log in sorted(args.out.glob("*/train.log")):  # runs whose driver was stopped: summarise them here
        row_file = log.parent / "row.json"
        found = [(c, m) for c in candidates for m in args.minutes if log.parent.name == f"{slug(c)}-{m:g}min"]
        if found and not row_file.exists() and "best val " in log.read_text():  # the run finished
            row_file.write_text(json.dumps(summarize(*found[0], log.parent), indent=1))
    rows = [json.loads(f.read_text()) for f in sorted(args.out.glob("*/row.json"))]
    rows = [r for r in rows if r["candidate"] in candidates]
    print(table(rows, species))


if __name__ == "__main__":
    main()
