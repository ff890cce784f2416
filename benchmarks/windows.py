"""Window attention vs global attention: backbone and detector time, FLOPs and each component's share.

    python benchmarks/windows.py [--sizes 640 1024] [--dtypes fp32 bf16] [--threads 2] [--repeats 3] [--window 16]
    python benchmarks/windows.py --device cuda --repeats 10

The real ViT-M/16 preset with random weights (nothing downloaded). Global and windowed attention are the *same
network object with the same weights*, switched with `set_window_attention` between calls, and the two modes
alternate call by call, so load from other processes on a shared machine hits both alike; the tables show
medians. FLOPs count attention analytically where torch's counter has no formula (benchmarks/flops.py).

On a shared CPU machine run it as `birddet` runs (the CLI's default, see birddet/cli/__init__.py):
`OMP_WAIT_POLICY=PASSIVE python benchmarks/windows.py ...`; spinning OpenMP threads make timings 4-5x slower and
far noisier under load (benchmarks/threads.py).

Tables:
1. backbone (`detection_features`, batch 1): global vs windowed ms, speedup, GFLOPs of each;
2. detector (`model([image])`, eval, default birddet heads): total ms and the share of backbone (ViT), pyramid,
   RPN, RoI heads and the rest (torchvision's resize/normalise/pad and box post-processing), from forward hooks.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time
from collections.abc import Callable

import torch
from flops import count_gflops

from birddet.config import config_from_dict
from birddet.models.detector import BirdDetector, build_detector

PRESET = "vit_reg4_m16_rms_avg"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device, cpu: list[float] | None = None) -> float:
    """Wall seconds of one call; with `cpu`, also append the process's CPU seconds (all threads) to it."""
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start


def build(size: int, device: torch.device) -> BirdDetector:
    cfg = config_from_dict({"model": {"image_size": size, "backbone": {"preset": PRESET, "pretrain_size": [384, 384]}}})
    torch.manual_seed(0)
    det = build_detector(cfg, {1: "bird"})
    with torch.no_grad():
        for p in det.model.backbone.body.parameters():
            p.normal_(0.0, 0.02)
    return det.eval().to(device)


class ComponentClock:
    """Forward hooks that add up each component's wall time (synchronising CUDA at both ends)."""

    def __init__(self, det: BirdDetector, device: torch.device) -> None:
        m = det.model
        self.parts = {"ViT": m.backbone.body, "pyramid": m.backbone.pyramid, "RPN": m.rpn, "RoI heads": m.roi_heads}
        self.device = device
        self.totals = {k: 0.0 for k in self.parts}
        self._start: dict[str, float] = {}
        for name, mod in self.parts.items():
            if name != "ViT":
                mod.register_forward_pre_hook(lambda *_, n=name: self._begin(n))
                mod.register_forward_hook(lambda *_, n=name: self._end(n))
        # The detector calls the ViT's `detection_features`, not its forward, so hooks would not see it.
        features = m.backbone.body.detection_features

        def timed_features(x: torch.Tensor) -> dict[str, torch.Tensor]:
            self._begin("ViT")
            out = features(x)
            self._end("ViT")
            return out

        m.backbone.body.detection_features = timed_features

    def _begin(self, name: str) -> None:
        sync(self.device)
        self._start[name] = time.perf_counter()

    def _end(self, name: str) -> None:
        sync(self.device)
        self.totals[name] += time.perf_counter() - self._start[name]

    def reset(self) -> None:
        self.totals = {k: 0.0 for k in self.parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 1024])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=int, default=16, help="window size in patches (ViTDet: 14 at 1024 px)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-detector", action="store_true", help="backbone table only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    backbone_rows, detector_rows = [], []
    for size in args.sizes:
        det = build(size, device)
        body = det.model.backbone.body
        clock = ComponentClock(det, device)
        torch.manual_seed(1)
        image = torch.rand(3, size, size, device=device)
        x = ((image - 0.45) / 0.225).unsqueeze(0)
        run_backbone = functools.partial(body.detection_features, x)
        run_detector = functools.partial(det.model, [image])
        modes = {"global": 0, f"window {args.window}": args.window}
        gflops = {}
        for mode, w in modes.items():
            body.set_window_attention(w)
            with torch.no_grad():
                gflops[mode] = (
                    count_gflops(run_backbone),
                    float("nan") if args.skip_detector else count_gflops(run_detector),
                )
        for dtype in args.dtypes:
            autocast = (
                torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
            )
            bb: dict[str, list[float]] = {m: [] for m in modes}
            bb_cpu: dict[str, list[float]] = {m: [] for m in modes}
            dt: dict[str, list[float]] = {m: [] for m in modes}
            shares: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
            with torch.inference_mode(), autocast:
                for i in range(args.repeats + 1):  # the first round warms up
                    order = list(modes) if i % 2 == 0 else list(reversed(modes))
                    for mode in order:
                        body.set_window_attention(modes[mode])
                        clock.reset()
                        cpu: list[float] = []
                        t_bb = timed(run_backbone, device, cpu)
                        if i:
                            bb[mode].append(t_bb)
                            bb_cpu[mode].append(cpu[0])
                        if args.skip_detector:
                            continue
                        clock.reset()
                        t_det = timed(run_detector, device)
                        if i:
                            dt[mode].append(t_det)
                            shares[mode].append({k: v / t_det for k, v in clock.totals.items()})
                    if i:
                        print(
                            f"  {size} {dtype} round {i}: " + ", ".join(f"{m} {bb[m][-1]:.2f} s" for m in modes),
                            flush=True,
                        )
            g, w = list(modes)
            backbone_rows.append(
                (
                    size,
                    dtype,
                    *(statistics.median(bb[m]) * 1e3 for m in modes),
                    *(statistics.median(bb_cpu[m]) for m in modes),
                    gflops[g][0],
                    gflops[w][0],
                )
            )
            for mode in modes if not args.skip_detector else []:
                share = {k: statistics.median(s[k] for s in shares[mode]) for k in clock.parts}
                detector_rows.append((size, dtype, mode, statistics.median(dt[mode]) * 1e3, share, gflops[mode][1]))

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"\n{PRESET}, random weights, batch 1, {where}, median of {args.repeats}, torch {torch.__version__}\n")
    # CPU seconds (all threads of this process) are less inflated than wall time when other processes compete.
    print(
        f"| size | dtype | global ms | window {args.window} ms | speedup (wall) | speedup (CPU time) "
        "| GFLOPs global | GFLOPs windowed |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for size, dtype, g_ms, w_ms, g_cpu, w_cpu, g_fl, w_fl in backbone_rows:
        print(
            f"| {size} | {dtype} | {g_ms:.0f} | {w_ms:.0f} | {g_ms / w_ms:.2f}x | {g_cpu / w_cpu:.2f}x "
            f"| {g_fl:.0f} | {w_fl:.0f} |"
        )
    if args.skip_detector:
        return
    print("\nDetector (eval, default heads, 300 proposals): total time and each component's share\n")
    print("| size | dtype | attention | total ms | ViT | pyramid | RPN | RoI heads | rest | GFLOPs |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for size, dtype, mode, ms, share, fl in detector_rows:
        rest = 1.0 - sum(share.values())
        cells = " | ".join(f"{100 * share[k]:.0f}%" for k in ("ViT", "pyramid", "RPN", "RoI heads"))
        print(f"| {size} | {dtype} | {mode} | {ms:.0f} | {cells} | {100 * rest:.0f}% | {fl:.0f} |")


if __name__ == "__main__":
    main()
