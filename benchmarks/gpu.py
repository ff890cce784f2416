"""Helpers that benchmarks/gpu.sh calls; each prints `ROW|<what>|<value>|<unit>` lines that gpu.sh tabulates.

    python benchmarks/gpu.py ckpt OUT.pt --size 1024 [--window 16] [--preset ...]   random-weights checkpoint
    python benchmarks/gpu.py infer CKPT IMAGE_DIR [--batch 8] [--amp] [--seconds 20]    eval-mode detector images/s
    python benchmarks/gpu.py train-row RUN_DIR LABEL      images/s and peak memory from a run's metrics.jsonl
    torchrun --nproc_per_node=1 benchmarks/gpu.py nccl CKPT IMAGE_DIR OUT   NCCL (gloo on CPU) smoke run

`infer` decodes the images once, moves them to the device, then runs the detector in eval mode (torchvision's
resize/normalise/pad included, bf16 autocast with --amp) on batches for at least --seconds after one warm-up
batch: the model's throughput, without file decoding (that is what `birddet predict`'s figure adds).
Everything also runs on a CPU with tiny settings, which is how gpu.sh's `SMOKE=1` mode checks itself.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torchvision.transforms.v2 import functional as TF

from birddet.config import config_from_dict
from birddet.data.images import load_image
from birddet.engine.checkpoint import load_detector, save_checkpoint
from birddet.models.detector import build_detector


def device_of(spec: str) -> torch.device:
    return torch.device("cuda" if spec == "auto" and torch.cuda.is_available() else ("cpu" if spec == "auto" else spec))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cmd_ckpt(args: argparse.Namespace) -> None:
    # The heads of configs/vitdet_m16_inat21.yaml; --light shrinks them so a CPU smoke run takes seconds.
    model: dict = {
        "image_size": args.size,
        "backbone": {"preset": args.preset, "window_size": args.window},
        "rpn": {"conv_depth": 2},
        "roi_heads": {"box_head": "4conv1fc"},
    }
    if args.light:
        model.update(pyramid={"out_channels": 32}, rpn={"post_nms_top_n_test": 50}, roi_heads={"conv_dim": 32})
    cfg = config_from_dict({"model": model})
    torch.manual_seed(0)
    save_checkpoint(Path(args.out), build_detector(cfg, {1: "bird"}))
    print(f"wrote {args.out}")


def cmd_infer(args: argparse.Namespace) -> None:
    device = device_of(args.device)
    det = load_detector(Path(args.ckpt), device).eval()
    paths = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    images = [TF.pil_to_tensor(load_image(p)).to(device).float().div(255) for p in paths[: args.batch * 4]]
    batches = [images[i : i + args.batch] for i in range(0, len(images), args.batch)]
    batches = [b for b in batches if len(b) == args.batch] or batches[:1]

    def run(batch: list[torch.Tensor]) -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            det.model(batch)

    run(batches[0])  # warm-up: kernels, allocator, cached position embedding
    sync(device)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds or done == 0:
        for batch in batches:
            run(batch)
            done += len(batch)
        sync(device)
    ips = done / (time.perf_counter() - start)
    size = det.config.model.image_size
    print(f"ROW|eval images/s, {size} px, batch {args.batch}{', bf16' if args.amp else ''}|{ips:.1f}|img/s")


def cmd_train_row(args: argparse.Namespace) -> None:
    lines = [json.loads(x) for x in (Path(args.run) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r for r in lines if "images_per_s" in r]
    if not steps:
        raise SystemExit(f"{args.run}/metrics.jsonl has no step records")
    last = steps[-1]  # the first window includes warm-up (kernel selection, allocator growth)
    print(f"ROW|train images/s, {args.label}|{last['images_per_s']:.1f}|img/s")
    print(f"ROW|train peak memory, {args.label}|{last.get('max_memory_mb', float('nan')) / 1024:.1f}|GiB")


def cmd_nccl(args: argparse.Namespace) -> None:
    """One rank under torchrun: start the group (NCCL on a GPU, gloo on CPU), check a collective, then run
    sharded prediction inside that group, exactly the path `torchrun ... tools/predict.py` takes."""
    from birddet.pipeline.predict import PredictOptions, run_prediction

    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    value = torch.ones(1, device=device)
    dist.all_reduce(value)
    assert value.item() == dist.get_world_size(), value
    summary = run_prediction(
        args.ckpt,
        [args.images],
        Path(args.out),
        PredictOptions(use_classifier=False, device=str(device.type), workers=2, batch_size=4, amp=cuda),
    )
    dist.destroy_process_group()
    md = json.loads((Path(args.out) / "megadetector.json").read_text())
    backend = "nccl" if cuda else "gloo"
    print(f"ROW|torchrun 1 process, {backend}: sharded predict|{len(md['images'])}|images written")
    print(summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ckpt")
    p.add_argument("out")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--preset", default="vit_reg4_m16_rms_avg")
    p.add_argument("--light", action="store_true", help="small heads (CPU smoke runs)")
    p = sub.add_parser("infer")
    p.add_argument("ckpt")
    p.add_argument("images")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--device", default="auto")
    p = sub.add_parser("train-row")
    p.add_argument("run")
    p.add_argument("label")
    p = sub.add_parser("nccl")
    p.add_argument("ckpt")
    p.add_argument("images")
    p.add_argument("out")
    p.add_argument("--device", default="auto")
    args = parser.parse_args()
    {"ckpt": cmd_ckpt, "infer": cmd_infer, "train-row": cmd_train_row, "nccl": cmd_nccl}[args.cmd](args)


if __name__ == "__main__":
    main()
