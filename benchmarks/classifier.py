"""Species classifier costs and the species quickstart curve.

    python benchmarks/classifier.py speed [--presets vit_reg4_small16_rms_avg,vit_reg4_m16_rms_avg] [--sizes 64,...]
    python benchmarks/classifier.py curve [--config configs/species_quickstart.yaml] [KEY=VALUE ...]

`speed`: milliseconds per crop for training (forward + backward + AdamW step, batch 32) and inference (forward
under `no_grad`, batch 64) at each crop size, plus the data side (decode + crop rule + augmentation of one
`CocoCrops` item on the synthetic set). Random weights: cost does not depend on them. On CPU the figures are
process CPU time (run with OMP_NUM_THREADS=1 for single-core cost that other processes on the machine do not
inflate); on a GPU, wall time after synchronising.

`curve`: runs `train-classifier` on the species quickstart (validating every epoch) in a temporary folder and prints
val top-1 against elapsed wall and CPU time (process user + system, which does not count time waiting for a core).
Other processes slow the wall clock: report the load (`uptime`) with the numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from birddet.backbone.presets import get_preset
from birddet.backbone.vit import ViT


def _cpu() -> float:
    """CPU seconds of this process and its finished children (DataLoader workers are reaped after each epoch)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def per_crop_ms(preset: str, size: int, *, train: bool, batch: int, repeats: int, device: torch.device) -> float:
    """Median milliseconds per crop over `repeats` timed batches (after one warm-up batch)."""
    net = ViT(get_preset(preset), num_classes=100, image_size=(size, size)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    net.train(train)
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times = []
    for i in range(repeats + 1):
        start = clock()
        if train:
            loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(clock() - start)
    return 1000.0 * statistics.median(times) / batch


def data_ms_per_crop(size: int, n: int = 64) -> float:
    from birddet.config import CropAugmentConfig
    from birddet.data.crops import CocoCrops, CropAugment
    from birddet.data.synthetic import make_synthetic_coco

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_synthetic_coco(tmp, num_train=40, num_val=0, seed=0)
        ds = CocoCrops(
            paths["train"],
            paths["images"],
            size=size,
            rgb_stats={"mean": [0.5] * 3, "std": [0.5] * 3},
            augment=CropAugment(CropAugmentConfig()),
        )
        n = min(n, len(ds))
        start = time.process_time()
        for i in range(n):
            ds[i]
        return 1000.0 * (time.process_time() - start) / n


def speed(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    print(f"{'preset':<26} {'crop':>5} {'train ms/crop':>14} {'infer ms/crop':>14} {'data ms/crop':>13}")
    for preset in args.presets.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            tr = per_crop_ms(preset, size, train=True, batch=32, repeats=args.repeats, device=device)
            inf = per_crop_ms(preset, size, train=False, batch=64, repeats=args.repeats, device=device)
            data = data_ms_per_crop(size)
            print(f"{preset:<26} {size:>5} {tr:>14.2f} {inf:>14.2f} {data:>13.2f}")


def curve(args: argparse.Namespace) -> None:
    from birddet.config import ClassifierConfig, load_config
    from birddet.engine import distributed as D
    from birddet.engine.classification import ClassificationTask
    from birddet.engine.trainer import run_training

    points: list[dict[str, Any]] = []
    start_wall, start_cpu = time.perf_counter(), _cpu()

    class TimedTask(ClassificationTask):
        def validate(self, model: torch.nn.Module) -> Any:
            elapsed = (time.perf_counter() - start_wall, _cpu() - start_cpu)
            outcome = super().validate(model)
            if outcome is not None:
                points.append({"wall_s": elapsed[0], "cpu_s": elapsed[1], "top1": outcome[0]["top1"]})
            return outcome

    with tempfile.TemporaryDirectory(prefix="birddet-species-") as tmp:
        overrides = [f"data.synthetic.dir={Path(tmp) / 'data'}", "train.eval_every=1", *args.overrides]
        cfg = load_config(args.config, overrides, schema=ClassifierConfig)
        ctx = D.init_distributed(cfg.train.device)
        summary = run_training(TimedTask(cfg, ctx), Path(tmp) / "run")
    print(f"{'epoch':>5} {'wall s':>8} {'CPU s':>8} {'val top-1':>10}")
    for i, p in enumerate(points, start=1):
        print(f"{i:>5} {p['wall_s']:>8.1f} {p['cpu_s']:>8.1f} {p['top1']:>10.4f}")
    print(
        f"best top-1 {summary['best_top1']:.4f} at epoch {summary['best_epoch']} (wall and CPU include making the data)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--presets", default="vit_reg4_small16_rms_avg,vit_reg4_m16_rms_avg")
    s.add_argument("--sizes", default="64,128,224,256")
    s.add_argument("--repeats", type=int, default=3, help="timed batches per measurement (median)")
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    c = sub.add_parser("curve")
    c.add_argument("--config", default="configs/species_quickstart.yaml")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {load:.2f}")
    speed(args) if args.what == "speed" else curve(args)


if __name__ == "__main__":
    main()
