"""Train a species classifier on box crops: `python tools/train_classifier.py CONFIG [KEY=VALUE ...] --out RUN [--resume]`.

The distributed launch is `torchrun --nproc_per_node=N tools/train_classifier.py CONFIG ... --out RUN`. Same code
path as `birddet train-classifier`; `RUN/best.pt` is a birder classifier file for `birddet predict --classifier`.
"""

import sys

from birddet.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train-classifier", *sys.argv[1:]]))
