"""COCO mAP of a checkpoint: `python tools/eval.py CHECKPOINT --ann GT.json --images DIR [--out DIR]`.

Same code path as `birddet eval`; under `torchrun` the images are sharded across processes.
"""

import sys

from birddet.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["eval", *sys.argv[1:]]))
