"""Video throughput: PyAV decoding of a 1080p clip, and sampled frames through the detector end to end.

    python benchmarks/video.py [--seconds 20] [--rate 30] [--size 1920x1080] [--video-fps 1 2 5]
                               [--preset vit_reg4_m16_rms_avg] [--image-size 640] [--threads 2]

A generated H.264 clip (``--size``, ``--rate`` frames a second, ``--seconds`` long; moving shapes on a textured
background, so the encoder has real work and the decoder too) is read three ways:

- **decode**: every frame decoded by PyAV, nothing converted (the floor of any sampling);
- **decode + RGB**: every frame decoded and converted to an upright RGB tensor (`birddet.pipeline.video.read_frames`
  with every frame sampled);
- **sampled at F fps, end to end**: `birddet predict`'s own clip path (`_predict_clip`: decode, sample, batch,
  detect, results) with a random-weights detector (``--preset`` at ``--image-size``; nothing is downloaded) and no
  classifier, for each ``--video-fps`` F.

Printed as a markdown table: frames/s (decoded or sampled) and how many times faster than real time the clip is
gone through. Model loading is not counted (a long run pays it once). One round each; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

import birddet.pipeline.predict as predict_mod
from birddet.config import config_from_dict
from birddet.models.detector import build_detector
from birddet.pipeline.predict import PredictOptions
from birddet.pipeline.sources import SourceImage
from birddet.pipeline.video import Sampling, read_frames


def make_clip(path: Path, width: int, height: int, rate: int, seconds: float) -> Path:
    """An H.264 clip with a few moving squares on a noisy background."""
    rng = np.random.default_rng(0)
    background = rng.integers(60, 160, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(rate))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        side = height // 12
        for i in range(int(seconds * rate)):
            frame = background.copy()
            for k in range(4):
                x = (i * (8 + 3 * k) + k * width // 4) % (width - side)
                y = (k * height // 4 + side) % (height - side)
                frame[y : y + side, x : x + side] = (200, 40 + 40 * k, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_only(path: Path) -> tuple[int, float]:
    start = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        n = sum(1 for _ in container.decode(stream))
    return n, time.perf_counter() - start


def decode_rgb(path: Path) -> tuple[int, float]:
    start = time.perf_counter()
    _, frames = read_frames(path, Sampling(every_n_frames=1), max_pixels=10**9)
    n = sum(1 for _ in frames)
    return n, time.perf_counter() - start


def end_to_end(path: Path, run: predict_mod._Run, fps: float) -> tuple[int, float]:
    run.options.video_fps = fps
    start = time.perf_counter()
    result = predict_mod._predict_clip(run, SourceImage(path, path.name, path.parent))
    assert result.video is not None and result.failure is None, result.failure
    return len(result.video.frames), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=30, help="the clip's frame rate")
    parser.add_argument("--size", default="1920x1080", help="WIDTHxHEIGHT of the clip")
    parser.add_argument("--video-fps", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--preset", default="vit_reg4_m16_rms_avg", help="detector backbone preset")
    parser.add_argument("--image-size", type=int, default=640, help="detector input side")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip.mp4", width, height, args.rate, args.seconds)
        torch.manual_seed(0)
        cfg = config_from_dict({"model": {"image_size": args.image_size, "backbone": {"preset": args.preset}}})
        detector = build_detector(cfg, {1: "bird"}).to(args.device).eval()
        options = PredictOptions(use_classifier=False, batch_size=args.batch_size, device=args.device, conf=0.1)
        run = predict_mod._Run(detector, None, options, Path(tmp) / "out")

        rows = []
        for name, fn in (("decode", decode_only), ("decode + RGB", decode_rgb)):
            n, s = fn(clip)
            rows.append((name, n, s))
        for fps in args.video_fps:
            n, s = end_to_end(clip, run, fps)
            rows.append((f"sampled at {fps:g} fps, end to end", n, s))

    print(
        f"\n{width}x{height} H.264, {args.rate} fps, {args.seconds:g} s; detector {args.preset} at {args.image_size}, "
        f"batch {args.batch_size}, {args.device}, {args.threads} thread(s)\n"
    )
    print("| step | frames | seconds | frames/s | x real time |")
    print("|---|---:|---:|---:|---:|")
    for name, n, s in rows:
        print(f"| {name} | {n} | {s:.2f} | {n / s:.3g} | {args.seconds / s:.3g} |")


if __name__ == "__main__":
    main()
