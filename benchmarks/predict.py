"""Prediction throughput: detection alone vs detect + classify, over the same folder of generated images.

    python benchmarks/predict.py [--images 4] [--size 640] [--classifier-size 384 256] [--repeats 3] [--threads 2]

Real sizes with random weights (nothing is downloaded): the detector is `vit_reg4_m16_rms_avg` + pyramid +
Faster R-CNN at `--size`; the classifier is a `vit_reg4_m16_rms_avg` with a 10,000-class iNat21-style head (so
top-k and the taxonomic roll-up cost what they will in use), run at each `--classifier-size`. Images are
1024x768 JPEGs with 1 to `--max-birds` (default 5) drawn "birds"; since a random detector puts boxes anywhere,
the detector still runs in full but its boxes are replaced by the drawn ones, so the classifier sees exactly the
number of crops the images hold.

Both modes go through `run_prediction` (DataLoader decoding, batching, writers). The time counted is the
per-batch processing (detector + crops + classifier + result building), excluding model loading, which a long
run pays once; medians over `--repeats` rounds, modes interleaved round by round so machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

import birddet.pipeline.predict as predict_mod
from birddet.backbone.presets import get_preset
from birddet.backbone.vit import ViT
from birddet.backbone.weights import save_birder_file
from birddet.config import config_from_dict
from birddet.data.images import load_image
from birddet.engine.checkpoint import save_checkpoint
from birddet.models.detector import BirdDetector, Prediction, build_detector
from birddet.pipeline.predict import PredictOptions, run_prediction

PRESET = "vit_reg4_m16_rms_avg"


def make_images(folder: Path, n: int, max_birds: int, seed: int = 0) -> dict[int, torch.Tensor]:
    """Write ``n`` JPEGs with 1..max_birds ellipses; return {pixel-sum key of the decoded image: boxes [K, 4]}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.fromarray(rng.integers(60, 200, (768, 1024, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        boxes = []
        for _ in range(max_birds - i % max_birds):  # max_birds, max_birds - 1, ...: "up to max_birds" per image
            w, h = rng.integers(60, 260, 2)
            x, y = rng.integers(0, 1024 - w), rng.integers(0, 768 - h)
            draw.ellipse((x, y, x + w, y + h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
            boxes.append([x, y, x + w, y + h])
        img.save(folder / f"img{i:03d}.jpg", quality=90)
        (folder / f"img{i:03d}.boxes").write_text(repr(boxes))
    table = {}
    for path in sorted(folder.glob("*.jpg")):
        key = int(torch.from_numpy(np.array(load_image(path))).sum())
        table[key] = torch.tensor(eval(path.with_suffix(".boxes").read_text()), dtype=torch.float32)  # noqa: S307
    return table


def make_classifier(path: Path, size: int, num_classes: int = 10_000) -> Path:
    """Random-weight ViT-M/16 classifier with iNat21-style lineage names (20 orders, 200 families, 2000 genera)."""
    torch.manual_seed(1)
    net = ViT(get_preset(PRESET), num_classes=num_classes, image_size=(size, size))
    names = {
        f"{i:05d}_Animalia_Chordata_Aves_Order{i % 20}_Family{i % 200}_Genus{i % 2000}_species{i}": i
        for i in range(num_classes)
    }
    return save_birder_file(net, path, class_to_idx=names)


def make_detector(path: Path, size: int) -> Path:
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"image_size": size, "backbone": {"preset": PRESET}}})
    return save_checkpoint(path, build_detector(cfg, {1: "bird"}))


def patch_detector_boxes(table: dict[int, torch.Tensor]) -> None:
    """Run the real detector, then report the drawn boxes so the crop count is known."""
    real = BirdDetector.predict

    def predict(self: BirdDetector, images: list[torch.Tensor], **kwargs: Any) -> list[Prediction]:
        out = real(self, images, **kwargs)
        for i, t in enumerate(images):
            boxes = table[int(t.sum())]
            n = boxes.shape[0]
            out[i] = Prediction(boxes, torch.full((n,), 0.9), [1] * n, ["bird"] * n, out[i].image_size)
        return out

    BirdDetector.predict = predict  # type: ignore[method-assign]


def timed_batches() -> list[float]:
    """Wrap the per-batch step to record its durations (the figure this benchmark reports)."""
    durations: list[float] = []
    real: Callable[..., Any] = predict_mod._process_batch

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)

    predict_mod._process_batch = wrapper  # type: ignore[assignment]
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--max-birds", type=int, default=5)
    parser.add_argument("--size", type=int, default=640, help="detector input size")
    parser.add_argument("--classifier-size", type=int, nargs="+", default=[384], help="classifier crop sizes")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="birddet-bench-") as tmp_name:
        tmp = Path(tmp_name)
        table = make_images(tmp / "images", args.images, args.max_birds)
        n_boxes = sum(b.shape[0] for b in table.values())
        ckpt = make_detector(tmp / "detector.pt", args.size)
        classifiers = {s: make_classifier(tmp / f"classifier{s}.pt", s) for s in args.classifier_size}
        patch_detector_boxes(table)
        durations = timed_batches()

        base = dict(conf=0.5, classify_conf=0.5, batch_size=args.batch_size, workers=args.workers)
        base |= dict(device=args.device, amp=args.amp, formats=["megadetector", "coco", "csv"])
        modes: dict[str, PredictOptions] = {"detect": PredictOptions(use_classifier=False, **base)}
        for s, path in classifiers.items():
            modes[f"detect+classify@{s}"] = PredictOptions(classifier=str(path), **base)

        rates: dict[str, list[float]] = {m: [] for m in modes}
        walls: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(args.repeats):
            for name, opts in modes.items():
                durations.clear()
                start = time.perf_counter()
                run_prediction(ckpt, [tmp / "images"], tmp / f"out-{name}-{r}", opts)
                walls[name].append(time.perf_counter() - start)
                rates[name].append(args.images / sum(durations))

    print(
        f"{args.images} images 1024x768, {n_boxes} birds ({n_boxes / args.images:.1f}/image), detector {PRESET} "
        f"@{args.size}, batch {args.batch_size}, {args.threads} threads, device {args.device}, "
        f"medians of {args.repeats}"
    )
    ref = statistics.median(rates["detect"])
    header = f"{'mode':<24} {'images/s':>9} {'s/image':>8} {'vs detect':>10} {'s/crop':>7} {'at 1 / 5 crops':>15}"
    print(header + f" {'wall s (incl. load)':>20}")
    for name in modes:
        rate = statistics.median(rates[name])
        wall = statistics.median(walls[name])
        if name == "detect":
            print(f"{name:<24} {rate:>9.3f} {1 / rate:>8.2f} {'':>10} {'':>7} {'':>15} {wall:>20.1f}")
            continue
        # Cost per crop from the extra time, to project the overhead for images with 1 and with 5 birds.
        per_crop = (1 / rate - 1 / ref) * args.images / n_boxes
        one, five = per_crop * ref, 5 * per_crop * ref
        extra = f"{ref / rate - 1:+.0%}"
        print(
            f"{name:<24} {rate:>9.3f} {1 / rate:>8.2f} {extra:>10} {per_crop:>7.2f} {f'+{one:.0%} / +{five:.0%}':>15} {wall:>20.1f}"
        )


if __name__ == "__main__":
    main()
