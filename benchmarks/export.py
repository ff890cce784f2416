"""CPU speed of the exported detector: PyTorch fp32 / bf16 against onnxruntime fp32 / int8, and int8's AP50 cost.

    python benchmarks/export.py [--models from_scratch vit_m16_640 vit_m16_1024] [--images 24] [--rounds 3]
        [--threads 2] [--train 224] [--val 56] [--train-minutes 10] [--ap-checkpoint CKPT] [--work DIR]

Speed: for each model (the `from_scratch` preset, configs/from_scratch.yaml; ViT-M/16 at 640 and 1024 px with
window attention, configs/vitdet_m16_inat21.yaml; all with random weights, which do not change the cost), the
script exports the detector (`birddet export`, fp32 and int8 calibrated on the synthetic train photos), then times
`BirdDetector.predict` on `--images` decoded photos of `birddet synth --preset realistic`'s val split, one image
per call (batch 1), `--threads` threads for torch and onnxruntime alike. The time is the whole call, resize
included (the same code for every backend; the "resize only" column is that floor). Each backend runs once to
warm up, then `--rounds` rounds with the backends interleaved, so load from other processes hits them all alike;
the tables show the median wall ms per image and the median CPU ms (all threads of the process) per image.
OpenVINO is timed only when `openvino` is importable (it is not a birddet dependency); otherwise it is reported as
absent.

Accuracy: AP50 of fp32 and int8 on the realistic val split, by `birddet eval` of the checkpoint, its fp32 export
and its int8 export. Random weights score 0, so a trained `from_scratch` model is needed: `--ap-checkpoint CKPT`,
or the script trains one on the synthetic train split for `--train-minutes` (the preset's own budget, 10 minutes,
by default). `--ap-checkpoint none` skips accuracy.

Run it on an idle machine: figures from a shared one are only a smoke test. Results go to stdout as markdown.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "from_scratch": ("configs/from_scratch.yaml", []),
    "vit_m16_640": ("configs/vitdet_m16_inat21.yaml", ["model.image_size=640"]),
    "vit_m16_1024": ("configs/vitdet_m16_inat21.yaml", ["model.image_size=1024"]),
}
#: Random weights (nothing to download) and no recomputation in inference.
COMMON = ["model.backbone.weights=null", "model.backbone.grad_checkpointing=false"]


def _images(paths: list[Path]) -> list:
    """Decoded uint8 [3, H, W] tensors (EXIF applied), so decoding is not timed."""
    from torchvision.transforms.v2 import functional as TF

    from birddet.data.images import load_image

    return [TF.pil_to_tensor(load_image(p)) for p in paths]


def _time(predict, images: list) -> list[tuple[float, float]]:
    """(wall ms, CPU ms) per image of one pass over `images`, one call per image. CPU time (all threads of this
    process) is the steadier figure on a shared machine, where wall time mostly measures the other processes."""
    out = []
    for image in images:
        wall, cpu = time.perf_counter(), time.process_time()
        predict(image)
        out.append(((time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000))
    return out


def speed(name: str, data: dict[str, Path], work: Path, args: argparse.Namespace) -> dict[str, float | None]:
    import numpy as np
    import torch

    from birddet.config import load_config
    from birddet.data.transforms import build_eval_transforms
    from birddet.engine.checkpoint import load_detector, save_checkpoint
    from birddet.engine.export import export_checkpoint
    from birddet.models.detector import build_detector

    config, overrides = MODELS[name]
    cfg = load_config(REPO / config, [*COMMON, *overrides])
    torch.manual_seed(0)
    ckpt = save_checkpoint(work / f"{name}.pt", build_detector(cfg, {1: "songbird", 2: "wader", 3: "raptor"}))
    started = time.perf_counter()
    export_checkpoint(ckpt, work / f"{name}.onnx")
    export_s = time.perf_counter() - started
    export_checkpoint(ckpt, work / f"{name}.int8.onnx", int8=True, calibrate=data["calib"])
    print(f"  {name}: exported in {export_s:.0f} s (fp32), int8 calibrated", file=sys.stderr, flush=True)
    torch_det = load_detector(ckpt)
    backends = {
        "PyTorch fp32": lambda im: torch_det.predict(im, batch_size=1),
        "PyTorch bf16": lambda im: torch_det.predict(im, batch_size=1, amp=True),
        "ORT fp32": (lambda d: lambda im: d.predict(im, batch_size=1))(load_detector(work / f"{name}.onnx")),
        "ORT int8": (lambda d: lambda im: d.predict(im, batch_size=1))(load_detector(work / f"{name}.int8.onnx")),
    }
    resize = build_eval_transforms(cfg.model.inference_size).resize_image
    backends["resize only"] = lambda im: resize(np.asarray(im.permute(1, 2, 0)))  # the floor every backend pays
    if importlib.util.find_spec("openvino") is not None:
        backends["OpenVINO fp32"] = _openvino(work / f"{name}.onnx")
    images = data["timed"]
    for run in backends.values():  # warm-up: allocator, ORT's first-run graph work, oneDNN kernels
        run(images[0])
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in backends}
    for r in range(args.rounds):
        order = list(backends)[r % len(backends) :] + list(backends)[: r % len(backends)]
        for key in order:
            times[key].extend(_time(backends[key], images))
    result: dict[str, float | None] = {}
    for k, v in times.items():
        result[k] = statistics.median(w for w, _ in v)
        result[f"{k} cpu"] = statistics.median(c for _, c in v)
    return result


def _openvino(path: Path):
    """OpenVINO on the exported graph, when it is installed: the raw graph call (no birddet post-filtering)."""
    import numpy as np
    import openvino as ov

    from birddet.data.transforms import build_eval_transforms, to_tensor
    from birddet.models.onnx_runtime import read_onnx_metadata

    size = int(read_onnx_metadata(path, "detector")["birddet.input_size"])
    compiled = ov.Core().compile_model(str(path), "CPU")
    resize = build_eval_transforms(size).resize_image
    return lambda im: compiled([to_tensor(resize(np.asarray(im.permute(1, 2, 0)))).numpy()])


def accuracy(data: dict[str, Path], work: Path, args: argparse.Namespace) -> dict[str, float] | None:
    """AP50 on the val split of the checkpoint, its fp32 export and its int8 export (`birddet eval`)."""
    from birddet.engine.export import export_checkpoint
    from birddet.engine.runner import evaluate_checkpoint

    if args.ap_checkpoint == "none":
        return None
    ckpt = Path(args.ap_checkpoint) if args.ap_checkpoint else _train(data, work, args.train_minutes)
    export_checkpoint(ckpt, work / "ap.onnx")
    export_checkpoint(ckpt, work / "ap.int8.onnx", int8=True, calibrate=data["calib"])
    ap = {}
    for key, model in (("PyTorch fp32", ckpt), ("ORT fp32", work / "ap.onnx"), ("ORT int8", work / "ap.int8.onnx")):
        result = evaluate_checkpoint(
            model,
            ann=data["val"],
            images=data["images"],
            out_dir=work / f"eval-{key.replace(' ', '_')}",
            plots=False,
            workers=0,
            device="cpu",
            amp=False,
        )
        ap[key] = float(result.stats["AP50"])
    return ap


def _train(data: dict[str, Path], work: Path, minutes: float) -> Path:
    from birddet.cli import main

    out = work / "from_scratch_run"
    argv = [
        "train",
        str(REPO / "configs/from_scratch.yaml"),
        f"data.train.ann={data['train']}",
        f"data.train.images={data['images']}",
        f"data.val.ann={data['val']}",
        f"data.val.images={data['images']}",
        f"train.time_budget={minutes}",
        "--out",
        str(out),
    ]
    if main(argv) != 0:
        raise SystemExit("training the from_scratch model failed")
    return out / "best.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--images", type=int, default=24, help="val photos timed per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", type=int, default=224, help="synthetic train photos (calibration, training)")
    parser.add_argument("--val", type=int, default=56, help="synthetic val photos (timing, AP50)")
    parser.add_argument("--train-minutes", type=float, default=10.0)
    parser.add_argument("--ap-checkpoint", default=None, help="a trained detector for AP50; 'none' skips accuracy")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_export"))
    args = parser.parse_args()
    # As the CLI does (birddet/cli/__init__.py): idle OpenMP threads sleep instead of spinning, which on a loaded
    # machine slows torch several-fold; set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import torch

    from birddet.data.synthetic import ensure_synthetic_coco

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    data = ensure_synthetic_coco(args.work / "data", num_train=args.train, num_val=args.val, preset="realistic")
    calib = args.work / "calibration"
    if not calib.is_dir():  # the train split's photos: calibration never sees the val photos it is scored on
        calib.mkdir()
        for image in json.loads(data["train"].read_text())["images"]:
            (calib / Path(image["file_name"]).name).symlink_to((data["images"] / image["file_name"]).resolve())
    val_files = [data["images"] / i["file_name"] for i in json.loads(data["val"].read_text())["images"]]
    data = {**data, "calib": calib, "timed": _images(val_files[: args.images])}

    rows = {name: speed(name, data, args.work, args) for name in args.models}
    ap = accuracy(data, args.work, args)

    print(
        f"\nms per image, batch 1, {args.threads} threads, median over {args.rounds} rounds x "
        f"{len(data['timed'])} realistic val photos; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the end, "
        f"{time.strftime('%Y-%m-%d %H:%M')}\n"
    )
    keys = ["PyTorch fp32", "PyTorch bf16", "ORT fp32", "ORT int8", "OpenVINO fp32", "resize only"]
    for title, suffix in (("wall ms per image", ""), ("CPU ms per image (all threads)", " cpu")):
        print(f"{title}:\n")
        print("| model | " + " | ".join(keys) + " | int8 vs PyTorch fp32 |")
        print("|---|" + "---:|" * (len(keys) + 1))
        for name, row in rows.items():
            cells = [f"{row[k + suffix]:.1f}" if row.get(k + suffix) is not None else "absent" for k in keys]
            speedup = row["PyTorch fp32" + suffix] / row["ORT int8" + suffix]  # type: ignore[operator]
            print(f"| {name} | " + " | ".join(cells) + f" | {speedup:.2f}x |")
        print()
    if ap is not None:
        print("\nAP50 on the realistic val split (`birddet eval`):\n")
        print("| | " + " | ".join(ap) + " | int8 - fp32 |")
        print("|---|" + "---:|" * (len(ap) + 1))
        print(
            "| AP50 | " + " | ".join(f"{v:.4f}" for v in ap.values()) + f" | {ap['ORT int8'] - ap['ORT fp32']:+.4f} |"
        )


if __name__ == "__main__":
    main()
