"""Train a detector: `python tools/train.py CONFIG [KEY=VALUE ...] --out RUN [--resume]`.

The distributed launch is `torchrun --nproc_per_node=N tools/train.py CONFIG ... --out RUN` (add torchrun's
`--nnodes/--rdzv-*` options for several machines). Same code path as `birddet train`.
"""

import sys

from birddet.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
