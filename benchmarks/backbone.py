"""Forward latency of birddet's ViT against birder's, same weights, same process.

Both libraries load one random-weights file in birder's format (the real `vit_reg4_m16_rms_avg` architecture,
10,000 classes). For each input size and precision it times `detection_features` (the detector's path) and the
classification `forward`, batch 1, alternating which library runs first in every repeat so drift in machine load
hits both alike, and prints a markdown table of medians and the birddet/birder ratio.

    python benchmarks/backbone.py --threads 2 --warmup 1 --repeats 5
    python benchmarks/backbone.py --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from birddet.backbone.presets import PRESETS
from birddet.backbone.vit import ViT
from birddet.backbone.weights import load_backbone, save_birder_file

NETWORK = "vit_reg4_m16_rms_avg"


def make_weights(path: Path, num_classes: int) -> Path:
    torch.manual_seed(0)
    net = ViT(PRESETS[NETWORK], num_classes=num_classes, image_size=(384, 384))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.02)
    return save_birder_file(net, path, class_to_idx={str(i): i for i in range(num_classes)})


def load_birder(path: Path, device: torch.device) -> torch.nn.Module:
    from birder.common import fs_ops

    net, _ = fs_ops.load_model(device, NETWORK, path=path, inference=True)
    net.set_dynamic_size(True)
    return net


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 640])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--num-classes", type=int, default=10000)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")

    with tempfile.TemporaryDirectory() as tmp:
        path = make_weights(Path(tmp) / f"{NETWORK}.pt", args.num_classes)
        ours, _ = load_backbone(path, device=device)
        theirs = load_birder(path, device)

    calls: dict[str, dict[str, Callable[[torch.Tensor], object]]] = {
        "detection_features": {"birddet": ours.detection_features, "birder": theirs.detection_features},
        "forward": {"birddet": ours, "birder": theirs},
    }
    rows = []
    for size in args.sizes:
        x = torch.randn(1, 3, size, size, device=device)
        for dtype in args.dtypes:
            autocast = (
                torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
            )
            for what, fns in calls.items():
                times: dict[str, list[float]] = {"birddet": [], "birder": []}
                with torch.inference_mode(), autocast:
                    for i in range(args.warmup + args.repeats):
                        order = ["birddet", "birder"] if i % 2 == 0 else ["birder", "birddet"]
                        for lib in order:
                            elapsed = timed(lambda fn=fns[lib], x=x: fn(x), device)
                            if i >= args.warmup:
                                times[lib].append(elapsed)
                ours_ms = statistics.median(times["birddet"]) * 1e3
                theirs_ms = statistics.median(times["birder"]) * 1e3
                ratio_best = min(times["birddet"]) / min(times["birder"])
                rows.append((what, size, dtype, ours_ms, theirs_ms, ratio_best))
                print(f"  {what} {size} {dtype}: birddet {ours_ms:.1f} ms, birder {theirs_ms:.1f} ms", flush=True)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(
        f"\n{NETWORK}, {args.num_classes} classes, batch 1, {device_name}, median of {args.repeats} "
        f"(warmup {args.warmup}), torch {torch.__version__}\n"
    )
    # The ratio of best times is less sensitive to other processes on a shared machine than the medians.
    print("| call | size | precision | birddet ms | birder ms | birddet/birder | ratio of best times |")
    print("|---|---|---|---:|---:|---:|---:|")
    for what, size, dtype, ours_ms, theirs_ms, ratio_best in rows:
        print(
            f"| {what} | {size} | {dtype} | {ours_ms:.1f} | {theirs_ms:.1f} | {ours_ms / theirs_ms:.2f} | {ratio_best:.2f} |"
        )


if __name__ == "__main__":
    main()
