"""`python tools/predict.py CHECKPOINT SOURCE... --out DIR [...]`: the same as `birddet predict` (see its --help).

Kept as a script for people who run the repository without installing it; all logic lives in the CLI and
`birddet.pipeline.predict`, so the two can never disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
    from birddet.cli import main

    raise SystemExit(main(["predict", *sys.argv[1:]]))
