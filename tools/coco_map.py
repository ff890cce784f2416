"""`python tools/coco_map.py --gt GT.json --results DT.json [--out PATH] [--no-plots]`: same as `birddet score`."""

import sys

from birddet.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["score", *sys.argv[1:]]))
