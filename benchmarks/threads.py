"""Does OMP_WAIT_POLICY or the thread count matter on a small, shared CPU machine?

    python benchmarks/threads.py [--size 384] [--rounds 3] [--calls 2] [--threads 1 2] [--window 16]

OpenMP reads OMP_WAIT_POLICY when the process starts, so each setting runs in its own child process: the child
builds the real ViT-M/16 backbone (random weights), warms up once, then times `--calls` bf16 `detection_features`
calls and prints their median. Settings are interleaved round by round (every round starts one child per setting,
in a rotated order) so that the load from other processes hits all of them alike; the table shows the median over
rounds of each child's median. ACTIVE makes idle OpenMP threads spin (fast hand-off, burns CPU that other
processes on the machine want); PASSIVE makes them sleep.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CHILD = """
import statistics, sys, time, torch
from birddet.backbone.presets import get_preset
from birddet.backbone.vit import ViT
size, calls, window = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
net = ViT(get_preset("vit_reg4_m16_rms_avg"), num_classes=0, image_size=(384, 384)).eval()
net.set_window_attention(window)
x = torch.randn(1, 3, size, size)
times = []
with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
    for i in range(calls + 1):
        start = time.perf_counter()
        net.detection_features(x)
        if i:
            times.append(time.perf_counter() - start)
print(statistics.median(times), torch.get_num_threads())
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--window", type=int, default=0, help="window size in patches (0: global attention)")
    args = parser.parse_args()

    settings = [(policy, n) for n in args.threads for policy in ("default", "PASSIVE", "ACTIVE")]
    results: dict[tuple[str, int], list[float]] = {s: [] for s in settings}
    for r in range(args.rounds):
        order = settings[r % len(settings) :] + settings[: r % len(settings)]
        for policy, n in order:
            env = {**os.environ, "OMP_NUM_THREADS": str(n)}
            env.pop("OMP_WAIT_POLICY", None)
            if policy != "default":
                env["OMP_WAIT_POLICY"] = policy
            cmd = [sys.executable, "-c", CHILD, str(args.size), str(args.calls), str(args.window)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.split()
            results[(policy, n)].append(float(out[0]))
            print(f"  round {r + 1}: {policy} x{out[1]} threads: {float(out[0]):.2f} s", flush=True)

    load = os.getloadavg()[0]
    print(
        f"\nViT-M/16 detection_features, {args.size} px, bf16, window {args.window}, {os.cpu_count()} CPUs, "
        f"load {load:.1f} at the end, {time.strftime('%H:%M')}; median of {args.rounds} rounds x {args.calls} calls\n"
    )
    best = min(statistics.median(v) for v in results.values())
    print("| OMP_WAIT_POLICY | threads | median s | vs best |")
    print("|---|---:|---:|---:|")
    for (policy, n), v in results.items():
        med = statistics.median(v)
        print(f"| {policy} | {n} | {med:.2f} | {med / best:.2f}x |")


if __name__ == "__main__":
    main()
