"""`birddet <command>`: train, eval, score, predict, report, export, synth, check, convert, split, stats.

The CLI only parses arguments and calls library functions; `tools/*.py` are thin wrappers over `main`.
Exit codes: 0 success, 2 bad input (one line on stderr saying what, where and how to fix), 1 anything else.

This package holds what every command shares (the parser, override parsing, the OpenMP policy, exit codes); each
command family adds its subparser and runs from its own module: `train` (train, train-classifier), `evaluate`
(eval, score), `predict`, `data` (synth, check, convert, split, stats), with flags two families share in `common`.
No command module imports torch at import time: `main` must set the OpenMP wait policy before torch loads.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from birddet import __version__
from birddet.cli.data import _add_check, _add_convert, _add_split, _add_stats, _add_synth
from birddet.cli.evaluate import _add_eval, _add_score
from birddet.cli.export import _add_export
from birddet.cli.predict import _add_predict
from birddet.cli.report import _add_report
from birddet.cli.train import _add_train, _add_train_classifier
from birddet.errors import InputError, RunStopped

logger = logging.getLogger("birddet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="birddet", description="Find birds in images and name their species.")
    parser.add_argument("--version", action="version", version=f"birddet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = (
        _add_train,
        _add_train_classifier,
        _add_eval,
        _add_score,
        _add_predict,
        _add_report,
        _add_synth,
        _add_export,
    )
    data_commands = (_add_check, _add_convert, _add_split, _add_stats)
    for add in (*commands, *data_commands):
        add(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting `KEY=VALUE` overrides stand anywhere after the config (before or after `--out`, `--resume`).

    argparse fills a `nargs="*"` positional only from the run of positionals right after the config, so
    `train CFG --out RUN a=1` would leave `a=1` unrecognised; such leftovers are appended, in order, to the
    command's overrides. Anything else left over is still an error.
    """
    args, extras = parser.parse_known_args(argv)
    if extras:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extras):
            args.overrides = [*args.overrides, *extras]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _passive_openmp_threads() -> None:
    """Let idle OpenMP threads sleep instead of spin (OMP_WAIT_POLICY=PASSIVE) unless the user chose a policy.

    On a small machine shared with other processes, spinning threads burn the time slices the working threads
    need: benchmarks/threads.py measured ViT-M/16 at 384 px, 2 threads, on 2 cores at load ~30: 53 s per call with
    the default policy or ACTIVE, 12.6 s with PASSIVE (1 thread: 13-18 s under every policy). OpenMP reads the
    variable when torch loads it, so this must run before the first torch import; every command imports torch
    lazily, after this.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    _passive_openmp_threads()
    parser = build_parser()
    args = _parse(parser, argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        message = " ".join(str(err).split())
        print(f"birddet: error: {message}", file=sys.stderr)
        return 2
    except RunStopped as err:
        message = " ".join(str(err).split())
        print(f"birddet: stopped: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("birddet: interrupted; finished work was kept on disk", file=sys.stderr)
        return 130
