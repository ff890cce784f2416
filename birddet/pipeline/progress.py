"""``birddet predict``'s progress file: the finished images of a run, so that a long run never loses them.

Long runs never lose finished work. Results are appended to ``OUT/progress.jsonl`` every ``checkpoint_every``
images: the first line records the settings that shape results, each further line is one finished image
(``ImageResult.to_dict``), written with a single ``write`` + ``fsync``; a line cut short by a crash is ignored on
resume. ``--resume`` keeps every image that succeeded and **retries images that failed** (a file may have been
fixed or finished copying since), and video clips whose decoding stopped early for the same reason, after
checking that the settings match; a finished clip is skipped whole. Ctrl-C writes the final output files for the
finished images before exiting. ``progress.jsonl`` is kept after a complete run, so ``--resume`` on a
finished folder only rewrites the outputs. A full disk stops the run with one line (``progress.jsonl`` keeps
every finished image; appends are whole lines or nothing).

Apart from the run (`birddet.pipeline.predict`) because the file's format and its resume check are one concern,
which the run and the output-folder checks (`birddet.pipeline.run_folder`) both rely on.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from birddet.errors import InputError
from birddet.fileio import append_text, atomic_path
from birddet.pipeline.results import ImageResult

__all__ = ["PROGRESS_NAME", "PROGRESS_VERSION", "ProgressLog"]

logger = logging.getLogger(__name__)

PROGRESS_NAME = "progress.jsonl"
PROGRESS_VERSION = 1


_MISSING = object()


def _shown(settings: dict[str, Any], key: str) -> str:
    """A setting's value for the resume error; a progress file written before birddet recorded it says so."""
    return repr(settings[key]) if key in settings else "(not recorded)"


class ProgressLog:
    """Append-only record of finished images in ``OUT/progress.jsonl`` (see the module docstring)."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.settings = settings

    def start(self, *, resume: bool) -> dict[str, ImageResult]:
        """Open the log; with ``resume``, return the successful results it holds (keyed by absolute path).

        The log is rewritten atomically with only what is kept, which also drops a torn last line, so appends
        that follow always start on a clean line.
        """
        kept: dict[str, ImageResult] = {}
        if resume and self.path.is_file():
            kept = self._read()
        elif resume:
            logger.warning("--resume: no %s in %s yet; starting from the first image", self.path.name, self.path.parent)
        with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"birddet_progress": PROGRESS_VERSION, "settings": self.settings}) + "\n")
            for r in kept.values():
                fh.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return kept

    def _read(self) -> dict[str, ImageResult]:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("birddet_progress") != PROGRESS_VERSION:
            raise InputError(f"{self.path} is not a birddet progress file; delete it or choose another --out")
        old = header.get("settings", {})
        changed = sorted(k for k in set(old) | set(self.settings) if old.get(k, _MISSING) != self.settings.get(k))
        if changed:
            detail = ", ".join(f"{k}: {_shown(old, k)} -> {_shown(self.settings, k)}" for k in changed)
            raise InputError(
                f"cannot --resume in {self.path.parent}: settings differ from the interrupted run ({detail}); "
                "use the same options, or drop --resume to start again"
            )
        kept: dict[str, ImageResult] = {}
        for lineno, line in enumerate(lines[1:], start=2):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                if lineno == len(lines):
                    logger.warning("%s: ignoring a last line cut short by an interruption", self.path)
                    continue
                raise InputError(f"{self.path} line {lineno} is damaged; delete the file to start again") from None
            result = ImageResult.from_dict(data)
            stopped_early = result.video is not None and result.video.error is not None
            if result.failure is None and not stopped_early:  # failures (and clips cut short) are retried
                kept[result.path] = result
            else:
                kept.pop(result.path, None)
        return kept

    def append(self, results: Sequence[ImageResult]) -> None:
        """Append ``results`` in one write and fsync, so a kill loses at most this call's lines."""
        if not results:
            return
        append_text(self.path, "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in results))
