"""Where the CPU time of one detector training step goes, per config: what chose `configs/from_scratch.yaml`.

    python benchmarks/step_profile.py configs/quickstart.yaml configs/from_scratch.yaml [--threads 1] [--top 8]
        [KEY=VALUE ...]

For each config: the model the config builds (random init), a batch of `train.batch_size` random images at
`model.image_size` with two boxes each, a few warm-up steps, then the median CPU seconds of a forward + backward +
AdamW step over `--steps` steps, and torch.profiler's most expensive operators of one more step (self CPU time).
Data loading is left out: `benchmarks/learning_curve.py` measures whole runs.

On a CPU with the small ViT the RoI head, not the backbone, is what costs: torchvision's RoIAlign backward over 128
sampled RoIs per image was the largest operator of quickstart's step (37 %).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def profile(config: str, overrides: list[str], *, steps: int, top: int) -> None:
    from torch.profiler import profile as torch_profile

    from birddet.config import load_config
    from birddet.models.detector import build_detector

    cfg = load_config(config, overrides)
    size = cfg.model.input_size
    model = build_detector(cfg, {1: "songbird", 2: "wader", 3: "raptor"}, load_weights=False).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g) for _ in range(cfg.train.batch_size)]
    s = size / 192
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0], [60.0, 60.0, 100.0, 120.0]]) * s
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2])} for _ in images]

    def step() -> None:
        loss = sum(model(images, targets).values())
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        t = time.process_time()
        step()
        times.append(time.process_time() - t)
    with torch_profile() as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"\n{config} {' '.join(overrides)}: {size} px, batch {cfg.train.batch_size}, "
          f"{cfg.model.roi_heads.batch_size_per_image} RoIs/image: median {statistics.median(times):.3f} CPU s/step")  # fmt: skip
    for e in events[:top]:
        print(f"  {100 * e.self_cpu_time_total / total:5.1f} %  {e.key}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", help="config files, then KEY=VALUE overrides applied to each")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    configs = [c for c in args.configs if "=" not in c]
    overrides = [c for c in args.configs if "=" in c]
    for config in configs:
        profile(config, overrides, steps=args.steps, top=args.top)


if __name__ == "__main__":
    main()
