"""``birddet predict``'s output folder: the user's photos, one run per folder, an earlier run.

The output folder belongs to one run (docs/your-files.md): the run holds ``OUT/birddet.lock`` (`birddet.runlock`),
and a run without ``--resume`` into a folder holding an earlier run (progress files, outputs, manifest) is
refused unless ``--overwrite`` is given, which deletes those files first. The user's photos are read-only: a run
that would write any file (an output, a progress file, an annotated copy) over one of its own input files, the
same file by device and inode, is refused before anything is written, and a ``--out`` inside a SOURCE folder is
left out of that folder's listing. The output files are written as one set with a manifest
(`birddet.pipeline.writers.write_outputs`); ``--resume`` warns when a kill left them torn, and rewrites them.

Apart from the run (`birddet.pipeline.predict`) because these are the safety rules of the folder, checked once
before the first write: the run itself only calls `_claim_folder` and `_clear_earlier_run`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from birddet.engine import distributed
from birddet.errors import InputError
from birddet.fileio import remove_stale_temps
from birddet.pipeline.predict_options import PredictOptions
from birddet.pipeline.progress import PROGRESS_NAME
from birddet.pipeline.shards import Shard
from birddet.pipeline.sources import SourceImage
from birddet.pipeline.video_events import EVENTS_NAME
from birddet.pipeline.writers import MANIFEST_NAME, OUTPUT_NAMES, check_outputs
from birddet.runlock import LOCK_NAME, RunLock

logger = logging.getLogger(__name__)


def _annotated_path(out_dir: Path, file: str) -> Path:
    """Where ``--save-images`` writes the annotated copy of ``file``: ``OUT/images/<file>`` (+ ``.jpg`` when
    Pillow cannot write that extension)."""
    target = out_dir / "images" / file
    if Image.registered_extensions().get(target.suffix.lower()) is None:
        target = target.with_name(target.name + ".jpg")
    return target


def _progress_files(out_dir: Path) -> list[Path]:
    """Every progress file in ``out_dir``: a one-process run's and each rank's of a torchrun run."""
    return [out_dir / PROGRESS_NAME, *sorted(out_dir.glob("progress.rank*-of-*.jsonl"))]


def _run_files(out_dir: Path) -> list[Path]:
    """The files of an earlier run in ``out_dir`` (progress, outputs, manifest) that exist."""
    names = (*OUTPUT_NAMES.values(), MANIFEST_NAME, EVENTS_NAME)  # events.csv: a run with video clips
    return [p for p in (*_progress_files(out_dir), *(out_dir / n for n in names)) if p.exists()]


def _protect_sources(items: Sequence[SourceImage], out_dir: Path, options: PredictOptions) -> None:
    """Refuse, before anything is written, a run that would write over one of its own input files.

    "The same file" is the same device and inode (what ``os.path.samefile`` compares), so a symlinked folder, a
    relative path or a hard link is caught as well as the plain case: ``predict ds/images --out ds
    --save-images`` would put each annotated copy at ``ds/images/<file>``, which is the photo itself.
    """
    inputs: dict[tuple[int, int], Path] = {}
    for src in items:
        try:
            st = src.path.stat()
        except OSError:
            continue  # a missing list entry: nothing to protect
        inputs[(st.st_dev, st.st_ino)] = src.path
    fixed = (LOCK_NAME, MANIFEST_NAME, *OUTPUT_NAMES.values())
    targets = [(out_dir / name, "an output file") for name in fixed]
    targets += [(p, "a progress file") for p in _progress_files(out_dir)]
    if options.save_images:
        targets += [(_annotated_path(out_dir, src.file), "its annotated copy, --save-images") for src in items]
    hits: list[tuple[Path, str, Path]] = []
    for target, what in targets:
        try:
            st = target.stat()
        except OSError:
            continue
        if (source := inputs.get((st.st_dev, st.st_ino))) is not None:
            hits.append((target, what, source))
    if hits:
        target, what, source = hits[0]
        more = f" ({len(hits)} source files in all)" if len(hits) > 1 else ""
        raise InputError(
            f"refusing to write {target} ({what}): it is the source file {source}{more}; birddet never writes "
            "over its input files: choose an --out folder that does not hold the photos"
        )


def _claim_folder(out_dir: Path, items: Sequence[SourceImage], options: PredictOptions, shard: Shard) -> RunLock | None:
    """Rank 0 checks the sources are safe, takes the folder's lock and checks for an earlier run; every rank
    gets rank 0's verdict, so no rank touches a progress file of a folder another run holds."""
    lock: RunLock | None = None
    failure: InputError | None = None
    if shard.is_main:
        try:
            _protect_sources(items, out_dir, options)
            lock = RunLock(out_dir, "predict").acquire()
            remove_stale_temps(out_dir / "images", recursive=True)  # annotated copies cut short by a kill
            earlier = _run_files(out_dir)
            if earlier and not options.resume and not options.overwrite:
                raise InputError(
                    f"{out_dir} already holds a prediction run ({', '.join(p.name for p in earlier)}); pass "
                    "--resume to continue it, --overwrite to replace it, or choose another --out"
                )
            if options.resume and (torn := check_outputs(out_dir)):
                logger.warning(
                    "the output files in %s are not one set (%s): a run was stopped while writing them; "
                    "this run rewrites them",
                    out_dir, "; ".join(torn),
                )  # fmt: skip
        except InputError as exc:
            failure = exc
            if lock is not None:
                lock.release()
    verdict = distributed.broadcast_object(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if verdict is not None:
        raise InputError(verdict)
    return lock


def _clear_earlier_run(out_dir: Path, options: PredictOptions, shard: Shard) -> None:
    """``--overwrite``: rank 0 deletes the earlier run's progress files, outputs and manifest (never annotated
    images, which may sit among the user's files); the other ranks wait, then start their own progress files."""
    if options.overwrite and shard.is_main:
        earlier = _run_files(out_dir)
        for p in earlier:
            p.unlink(missing_ok=True)
        if earlier:
            logger.warning(
                "--overwrite: deleted %s of the earlier run in %s", ", ".join(p.name for p in earlier), out_dir
            )
    distributed.barrier()
