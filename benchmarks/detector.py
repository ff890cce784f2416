"""Detector inference latency and FLOPs: birddet vs birder's `vitdet`, same random backbone weights, same input.

    python benchmarks/detector.py [--size 640] [--threads 2] [--repeats 3] [--device cpu]

Every variant runs in this process on the same 640x640 input, interleaved round by round so that machine noise
hits them alike; medians are reported with the ratio to birder. The variants isolate each design difference:
box head (torchvision's TwoMLPHead vs ViTDet's 4conv1fc), RPN conv depth, test-time proposal count, and the
attention kernel (fused scaled-dot-product attention vs the unfused math path). FLOPs are
counted with `torch.utils.flop_counter.FlopCounterMode` (matmul/conv FLOPs, 2 per multiply-add) plus attention,
which the counter misses for the CPU fused kernel and benchmarks/flops.py counts analytically.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from flops import count_gflops
from torch.nn.attention import SDPBackend, sdpa_kernel

from birddet.backbone.presets import get_preset
from birddet.backbone.vit import ViT
from birddet.config import config_from_dict
from birddet.models.detector import BirdDetector, build_detector

CATEGORIES = {1: "bird"}
MATH_ATTENTION = "birddet default, math attention instead of fused SDPA"
ALL_ATTENTION_BACKENDS = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.MATH,
]


def birddet_variant(body_state: dict[str, torch.Tensor], size: int, **model: dict) -> BirdDetector:
    cfg = config_from_dict({"model": {"image_size": size, "backbone": {"pretrain_size": [size, size]}, **model}})
    torch.manual_seed(0)
    det = build_detector(cfg, CATEGORIES)
    det.model.backbone.body.load_state_dict(body_state, strict=False)
    return det.eval()


def birder_vitdet(body_state: dict[str, torch.Tensor], size: int) -> torch.nn.Module:
    from birder.model_registry import registry

    backbone = registry.net_factory("vit_reg4_m16_rms_avg", 0, size=(size, size))
    backbone.load_state_dict(body_state, strict=False)
    torch.manual_seed(0)
    return registry.detection_net_factory("vitdet", 1, backbone, size=(size, size)).eval()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-birder", action="store_true", help="skip birder (when it is not installed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    body = ViT(get_preset("vit_reg4_m16_rms_avg"), num_classes=0, image_size=(args.size, args.size))
    with torch.no_grad():
        for p in body.parameters():
            p.normal_(std=0.02)
    state = {k: v for k, v in body.state_dict().items() if not k.startswith(("norm.", "classifier."))}

    vitdet_like = {
        "rpn": {"conv_depth": 2, "post_nms_top_n_test": 1000},
        "roi_heads": {"box_head": "4conv1fc"},
    }
    variants: dict[str, torch.nn.Module] = {}
    if not args.no_birder:
        variants["birder vitdet (4conv1fc, RPN depth 2, 1000 props)"] = birder_vitdet(state, args.size)
    variants["birddet with vitdet settings (4conv1fc, depth 2, 1000)"] = birddet_variant(
        state, args.size, **vitdet_like
    )
    variants["+ 2mlp box head (depth 2, 1000)"] = birddet_variant(
        state, args.size, rpn={"conv_depth": 2, "post_nms_top_n_test": 1000}
    )
    variants["+ RPN conv depth 1 (2mlp, 1000)"] = birddet_variant(state, args.size, rpn={"post_nms_top_n_test": 1000})
    variants["+ 300 test proposals = birddet default"] = birddet_variant(state, args.size)
    # Same model with PyTorch's unfused (math) attention instead of the fused SDPA kernel.
    variants[MATH_ATTENTION] = variants["+ 300 test proposals = birddet default"]

    torch.manual_seed(1)
    image01 = torch.rand(3, args.size, args.size, device=device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(3, 1, 1)
    normalised = ((image01 - mean) / std).unsqueeze(0)

    def call(name: str, model: torch.nn.Module, dtype: torch.dtype | None) -> Callable[[], object]:
        backends = [SDPBackend.MATH] if name == MATH_ATTENTION else ALL_ATTENTION_BACKENDS

        def run() -> object:
            with (
                torch.no_grad(),
                torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
                sdpa_kernel(backends),
            ):
                if name.startswith("birder "):
                    return model(normalised)  # birder's detectors take normalised tensors
                return model([image01])  # torchvision's transform normalises (and resizes to the same size)

        return run

    for model in variants.values():
        model.to(device)

    rows = []
    for dtype_name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        times: dict[str, list[float]] = {name: [] for name in variants}
        for name, model in variants.items():
            call(name, model, dtype)()  # warm-up
        for _ in range(args.repeats):
            for name, model in variants.items():
                times[name].append(timed(call(name, model, dtype)))
        for name, model in variants.items():
            gflops = count_gflops(call(name, model, dtype)) if dtype is None else float("nan")
            rows.append((dtype_name, name, statistics.median(times[name]), gflops))

    print(
        f"\nDetector inference, {args.size}x{args.size}, batch 1, {args.threads} threads, device {device}, "
        f"median of {args.repeats}\n"
    )
    print("| dtype | variant | latency (s) | vs birder | GFLOPs |")
    print("|---|---|---:|---:|---:|")
    for dtype_name, name, median, gflops in rows:
        base = next((m for d, n, m, _ in rows if d == dtype_name and n.startswith("birder ")), None)
        ratio = f"{base / median:.2f}x faster" if base else "-"
        g = f"{gflops:.1f}" if gflops == gflops else ""
        print(f"| {dtype_name} | {name} | {median:.3f} | {ratio} | {g} |")


if __name__ == "__main__":
    main()
