"""`python -m birddet.cli ...`: the same as the `birddet` console script."""

from birddet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
