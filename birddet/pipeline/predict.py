"""``birddet predict``: detect birds in many images, name their species, write MegaDetector/COCO/CSV outputs.

Flow per batch of ``batch_size`` images: DataLoader workers decode files (EXIF orientation applied, every mode
converted to 8-bit RGB, failures turned into a reason string) -> the detector runs on the batch -> every box with
a score of at least ``classify_conf`` in the batch is cropped, and all crops go through the classifier in one pass
-> :class:`ImageResult` per image. Boxes are in the pixels of the image as displayed.

Long runs never lose finished work. Results are appended to ``OUT/progress.jsonl`` every ``checkpoint_every``
images: the first line records the settings that shape results, each further line is one finished image
(``ImageResult.to_dict``), written with a single ``write`` + ``fsync``; a line cut short by a crash is ignored on
resume. ``--resume`` keeps every image that succeeded and **retries images that failed** (a file may have been
fixed or finished copying since), after checking that the settings match. Ctrl-C writes the final output files
for the finished images before exiting. ``progress.jsonl`` is kept after a complete run, so ``--resume`` on a
finished folder only rewrites the outputs. A full disk stops the run with one line (``progress.jsonl`` keeps
every finished image; appends are whole lines or nothing).

The output folder belongs to one run (docs/your-files.md): the run holds ``OUT/birddet.lock`` (`birddet.runlock`),
and a run without ``--resume`` into a folder holding an earlier run (progress files, outputs, manifest) is
refused unless ``--overwrite`` is given, which deletes those files first. The user's photos are read-only: a run
that would write any file (an output, a progress file, an annotated copy) over one of its own input files, the
same file by device and inode, is refused before anything is written, and a ``--out`` inside a SOURCE folder is
left out of that folder's listing. The output files are written as one set with a manifest
(`birddet.pipeline.writers.write_outputs`); ``--resume`` warns when a kill left them torn, and rewrites them.

``torchrun --nproc_per_node=N tools/predict.py ...`` splits the run over N processes: each rank predicts a strided
shard and keeps its own progress file, and rank 0 writes the same output files a one-process run writes (see
``birddet.pipeline.shards``).

The settings recorded for the resume check are every option that changes an image's result: the checkpoint,
the classifier and its options, ``--conf``, ``--amp`` (bf16 boxes and scores differ from fp32 ones), the box cap
actually applied (``--max-dets``, else the checkpoint's ``detections_per_img``, tiled or not) and the tiling
options. ``--batch-size``, ``--workers``, ``--device`` and the output options are not: with ``model.fixed_square``
(the default) every image is padded to the same square, so its detections do not depend on its batch mates, and a
device changes results only by float rounding. A model built with ``min_size``/``max_size`` pads a batch to its
largest image instead, and the ViT attends over that padding, so there a resumed run equals a clean one exactly
only with ``--batch-size 1``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from birddet.data.images import (
    MAX_IMAGE_PIXELS,
    TILED_MAX_IMAGE_PIXELS,
    PixelBudgetBatches,
    default_decode_budget,
    load_image,
    loader_slots,
)
from birddet.engine import distributed
from birddet.engine.checkpoint import load_detector
from birddet.errors import InputError
from birddet.fileio import append_text, atomic_path, remove_stale_temps
from birddet.models.detector import BirdDetector
from birddet.pipeline.shards import Shard, check_resume_layout, join, leave, merge_results
from birddet.pipeline.sources import SourceImage, scan_sources
from birddet.pipeline.species import SpeciesClassifier, default_classifier_source
from birddet.pipeline.taxonomy import Taxonomy
from birddet.pipeline.tiling import TileOptions
from birddet.pipeline.visualize import save_annotated
from birddet.pipeline.writers import (
    MANIFEST_NAME,
    OUTPUT_NAMES,
    Detection,
    ImageResult,
    check_outputs,
    write_outputs,
)
from birddet.runlock import LOCK_NAME, RunLock

__all__ = ["PROGRESS_NAME", "PredictOptions", "run_prediction"]

logger = logging.getLogger(__name__)

PROGRESS_NAME = "progress.jsonl"
PROGRESS_VERSION = 1


@dataclass
class PredictOptions:
    """Every knob of a prediction run; the CLI fills it from its flags (see ``birddet predict --help``)."""

    conf: float = 0.1
    classifier: str | None = None
    use_classifier: bool = True
    classify_conf: float = 0.1
    top_k: int = 5
    taxon: str | None = None
    species_list: str | None = None
    common_names: str | None = None
    rollup_threshold: float = 0.5
    formats: list[str] = field(default_factory=lambda: ["megadetector", "coco", "csv"])
    save_images: bool = False
    batch_size: int = 4
    workers: int = 2
    device: str = "auto"
    amp: bool = False
    resume: bool = False
    # Replace an earlier run in the output folder (its progress files, outputs and manifest are deleted first).
    overwrite: bool = False
    checkpoint_every: int = 500
    # Crop side for the classifier (a multiple of 16); None = the size the classifier file was trained at.
    classifier_size: int | None = None
    # Sliced inference (birddet.pipeline.tiling): window side in original pixels, None = one resized pass.
    tile: int | None = None
    tile_overlap: float = 0.25
    full_image: bool = True
    merge: str = "nms"
    merge_match: str = "iou"
    merge_threshold: float = 0.5
    # Boxes per image; None = the checkpoint's model.roi_heads.detections_per_img (tiled: of the merged boxes).
    max_dets: int | None = None
    # Lowest score drawn by --save-images (the files get everything >= conf): weak boxes make a picture unreadable.
    draw_conf: float = 0.3
    # Megapixels decoded and waiting at once, over all workers (birddet.data.images.PixelBudgetBatches); None = a
    # quarter of the available memory, never less than one image at the per-image cap.
    decode_budget: float | None = None

    def tile_options(self) -> TileOptions | None:
        """The tiling settings as `TileOptions` (validated), or None for an untiled run."""
        if self.tile is None:
            return None
        return TileOptions(
            size=self.tile,
            overlap=self.tile_overlap,
            full_image=self.full_image,
            merge=self.merge,  # type: ignore[arg-type]
            match=self.merge_match,  # type: ignore[arg-type]
            match_threshold=self.merge_threshold,
            batch_size=self.batch_size,
        )

    def validate(self) -> None:
        """Reject impossible values before any model is loaded, so a typo costs nothing."""
        for name in ("conf", "classify_conf", "rollup_threshold", "draw_conf"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
        for name, low in (("top_k", 1), ("batch_size", 1), ("workers", 0), ("checkpoint_every", 1)):
            value = getattr(self, name)
            if value < low:
                raise InputError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
        if self.decode_budget is not None and not self.decode_budget > 0:
            raise InputError(f"--decode-budget must be a positive number of megapixels, got {self.decode_budget}")
        if self.max_dets is not None and self.max_dets < 1:
            raise InputError(f"--max-dets must be at least 1, got {self.max_dets}")
        self.tile_options()  # raises InputError naming the bad --tile/--tile-overlap/--merge value
        if self.resume and self.overwrite:
            raise InputError("--resume continues the run in --out and --overwrite replaces it; give one of them")
        if not self.use_classifier and (self.taxon or self.species_list):
            raise InputError("--taxon and --species-list restrict the species classifier; drop --no-classifier")
        if not self.formats:
            raise InputError(f"--format names no output; choose from {', '.join(OUTPUT_NAMES)}")
        unknown = [f for f in self.formats if f not in OUTPUT_NAMES]
        if unknown:
            raise InputError(f"unknown --format {', '.join(unknown)}; choose from {', '.join(OUTPUT_NAMES)}")


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> the first GPU when there is one, else the CPU; ``cuda[:i]`` must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise InputError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) (cuda:0..)")
    elif device.type != "cpu":
        raise InputError(f"--device {spec!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


# -- image loading in worker processes -----------------------------------------------------------------------


class ImageFiles(Dataset):
    """Dataset over file paths -> ``(index, uint8 [3, H, W] tensor, None)`` or ``(index, None, failure reason)``.

    Decoding happens in DataLoader workers; a bad file returns its reason instead of raising, because an
    exception in a worker would end the whole run for one corrupt JPEG.
    """

    def __init__(self, paths: Sequence[Path], *, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.paths = list(paths)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = load_image(self.paths[index], max_pixels=self.max_pixels)
            return index, TF.pil_to_tensor(image), None
        except InputError as exc:
            return index, None, " ".join(str(exc).split())
        except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not end a long run
            return index, None, f"{self.paths[index]}: cannot read image ({type(exc).__name__}: {exc})"


def _collate(
    batch: list[tuple[int, torch.Tensor | None, str | None]],
) -> list[tuple[int, torch.Tensor | None, str | None]]:
    return batch  # images differ in size; the detector takes a list


PREFETCH_FACTOR = 2  # batches each worker decodes ahead (torch's default, named because the decode budget counts it)


def image_loader(paths: Sequence[Path], options: PredictOptions, device: torch.device) -> DataLoader:
    """The loader that decodes ``paths`` in ``options.workers`` processes, its decoded pixels in flight bounded.

    The per-image cap (``MAX_IMAGE_PIXELS``, or ``TILED_MAX_IMAGE_PIXELS`` when tiling) refuses a decompression
    bomb; the global budget (``--decode-budget``, default from the available memory) bounds what several big images
    add up to across workers and prefetched batches, by how ``PixelBudgetBatches`` forms the batches. Tiled,
    ``--batch-size`` counts windows and images come one at a time.
    """
    max_pixels = MAX_IMAGE_PIXELS if options.tile is None else TILED_MAX_IMAGE_PIXELS
    budget = default_decode_budget(max_pixels) if options.decode_budget is None else int(options.decode_budget * 1e6)
    workers = options.workers
    sampler = PixelBudgetBatches(
        paths,
        batch_size=options.batch_size if options.tile is None else 1,
        budget=budget,
        slots=loader_slots(workers, PREFETCH_FACTOR if workers else None),
    )
    return DataLoader(
        ImageFiles(paths, max_pixels=min(max_pixels, budget)),  # an image over the whole budget can never fit
        batch_sampler=sampler,
        num_workers=workers,
        prefetch_factor=PREFETCH_FACTOR if workers else None,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )


# -- progress file -------------------------------------------------------------------------------------------


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
            if result.failure is None:  # failures are retried
                kept[result.path] = result
            else:
                kept.pop(result.path, None)
        return kept

    def append(self, results: Sequence[ImageResult]) -> None:
        """Append ``results`` in one write and fsync, so a kill loses at most this call's lines."""
        if not results:
            return
        append_text(self.path, "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in results))


# -- the run -------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What one batch needs: models, options and where to write annotated images."""

    detector: BirdDetector
    classifier: SpeciesClassifier | None
    options: PredictOptions
    out_dir: Path

    @property
    def taxonomy(self) -> Taxonomy | None:
        return None if self.classifier is None else self.classifier.taxonomy


def _load_classifier(detector: BirdDetector, options: PredictOptions, device: torch.device) -> SpeciesClassifier | None:
    """The explicit ``--classifier`` (errors are fatal), else the detector's own birder weights (errors warn)."""
    if not options.use_classifier:
        return None

    def load(source: str) -> SpeciesClassifier:
        return SpeciesClassifier.load(
            source,
            device=device,
            common_names=options.common_names,
            taxon=options.taxon,
            species_list=options.species_list,
            top_k=options.top_k,
            rollup_threshold=options.rollup_threshold,
            amp=options.amp,
            size=options.classifier_size,
        )

    if options.classifier:
        return load(options.classifier)
    source, why = default_classifier_source(detector.config.model.backbone.weights)
    if source is not None:
        try:
            return load(source)
        except InputError as exc:
            if options.taxon or options.species_list or options.common_names:
                raise  # the user asked for species options: a silent detection-only run would ignore them
            why = f"the detector's backbone weights {source} cannot be used as a classifier ({exc})"
    if options.taxon or options.species_list:
        raise InputError(f"--taxon/--species-list need a species classifier, but {why}; pass --classifier SOURCE")
    logger.warning("no species classifier: %s; writing detections with categories only", why)
    return None


def _process_batch(
    run: _Run, batch: list[tuple[int, torch.Tensor | None, str | None]], items: Sequence[SourceImage]
) -> list[ImageResult]:
    """Detect in every readable image of the batch, classify all their crops in one pass, build the results."""
    opts = run.options
    results: dict[int, ImageResult] = {}
    loaded = [(i, img) for i, img, _ in batch if img is not None]
    for i, _img, reason in batch:
        if reason is not None:
            src = items[i]
            results[i] = ImageResult(src.file, str(src.path), None, None, failure=reason)
    if loaded:
        predictions = run.detector.predict(
            [img for _, img in loaded],
            conf=opts.conf,
            batch_size=len(loaded) if opts.tile is None else opts.batch_size,
            amp=opts.amp,
            tile=opts.tile_options(),
            max_dets=opts.max_dets,
        )
        species: list[list[Any]] = [[] for _ in loaded]
        if run.classifier is not None:
            keep = [p.scores >= opts.classify_conf for p in predictions]
            boxes = [p.boxes[k] for p, k in zip(predictions, keep, strict=True)]
            per_image = run.classifier.classify_images([img for _, img in loaded], boxes)
            for n, (k, found) in enumerate(zip(keep, per_image, strict=True)):
                it = iter(found)
                species[n] = [next(it) if flag else None for flag in k.tolist()]
        for n, ((i, img), pred) in enumerate(zip(loaded, predictions, strict=True)):
            src = items[i]
            dets = []
            for j, (box, score, cat, name) in enumerate(
                zip(pred.boxes.tolist(), pred.scores.tolist(), pred.category_ids, pred.names, strict=True)
            ):
                sp = species[n][j] if species[n] else None
                dets.append(
                    Detection(
                        box_xyxy=(box[0], box[1], box[2], box[3]),
                        score=float(score),
                        category_id=int(cat),
                        category_name=name,
                        classifications=sp.classifications if sp else [],
                        rollup=sp.rollup if sp else None,
                    )
                )
            height, width = img.shape[-2:]
            results[i] = ImageResult(src.file, str(src.path), int(width), int(height), dets)
            if opts.save_images:
                _save_image(run, img, results[i])
    return [results[i] for i, _, _ in batch]


def _annotated_path(out_dir: Path, file: str) -> Path:
    """Where ``--save-images`` writes the annotated copy of ``file``: ``OUT/images/<file>`` (+ ``.jpg`` when
    Pillow cannot write that extension)."""
    target = out_dir / "images" / file
    if Image.registered_extensions().get(target.suffix.lower()) is None:
        target = target.with_name(target.name + ".jpg")
    return target


def _save_image(run: _Run, image: torch.Tensor, result: ImageResult) -> None:
    """Annotated copy at ``OUT/images/<file>`` of the boxes scoring at least ``draw_conf``; a failure here costs
    the picture, not the run."""
    target = _annotated_path(run.out_dir, result.file)
    try:
        shown = [d for d in result.detections if d.score >= run.options.draw_conf]
        save_annotated(TF.to_pil_image(image), shown, target, run.taxonomy)
    except (OSError, ValueError) as exc:
        logger.warning("could not write annotated image %s: %s", target, exc)


# -- the output folder: the user's photos, one run, an earlier run -------------------------------------------------


def _progress_files(out_dir: Path) -> list[Path]:
    """Every progress file in ``out_dir``: a one-process run's and each rank's of a torchrun run."""
    return [out_dir / PROGRESS_NAME, *sorted(out_dir.glob("progress.rank*-of-*.jsonl"))]


def _run_files(out_dir: Path) -> list[Path]:
    """The files of an earlier run in ``out_dir`` (progress, outputs, manifest) that exist."""
    names = (*OUTPUT_NAMES.values(), MANIFEST_NAME)
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


def _settings(
    checkpoint: Path, detector: BirdDetector, classifier: SpeciesClassifier | None, options: PredictOptions
) -> dict[str, Any]:
    """The options that change results (module docstring): a resumed run must use the same ones or its outputs
    would be mixed."""
    return {
        "checkpoint": str(checkpoint.resolve()),
        "classifier": None if classifier is None else classifier.name,
        "conf": options.conf,
        "classify_conf": options.classify_conf,
        "top_k": options.top_k,
        "taxon": options.taxon,
        "species_list": options.species_list,
        "common_names": options.common_names,
        "rollup_threshold": options.rollup_threshold,
        "classifier_size": options.classifier_size,
        "amp": bool(options.amp),
        "max_dets": detector.box_cap(options.max_dets),
        # Tiling keys appear only when tiling is on, so progress files from untiled runs stay resumable.
        **(tiling.settings() if (tiling := options.tile_options()) is not None else {"tile": None}),
    }


def run_prediction(
    checkpoint: str | os.PathLike[str],
    sources: Sequence[str | os.PathLike[str]],
    out_dir: Path,
    options: PredictOptions,
) -> str:
    """Run detection (+ classification) over ``sources`` and write the outputs into ``out_dir``.

    Returns a one-line summary. Raises :class:`InputError` for bad input found before the run starts (missing or
    unsafe checkpoint, missing source, bad option, a ``out_dir`` another run holds or an earlier run holds without
    ``resume``/``overwrite``, an output that would land on an input file); unreadable images during the run become
    failure entries. On KeyboardInterrupt the finished images are written to the output files, then the interrupt
    propagates. The folder's run lock is held from before the first write to the end, whatever ends the run.
    """
    started = time.perf_counter()
    options.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} exists and is not a folder")
    checkpoint = Path(checkpoint)
    device = resolve_device(options.device)
    listing = scan_sources(sources, exclude=[out_dir])
    items = listing.images
    if listing.skipped:
        logger.warning("%s", listing.skipped_note())
    shard = join(device)  # under torchrun: this rank's strided share and its own GPU (see pipeline/shards.py)
    lock = _claim_folder(out_dir, items, options, shard)
    try:
        return _predict(checkpoint, items, out_dir, options, shard, started, listing.skipped_note())
    finally:
        if lock is not None:
            lock.release()


def _predict(
    checkpoint: Path,
    items: Sequence[SourceImage],
    out_dir: Path,
    options: PredictOptions,
    shard: Shard,
    started: float,
    skipped_note: str,
) -> str:
    """The run itself, in a folder this run holds (see :func:`run_prediction`)."""
    device = shard.device
    mine = shard.select(range(len(items)))
    detector = load_detector(checkpoint, device)
    classifier = _load_classifier(detector, options, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_earlier_run(out_dir, options, shard)

    if options.resume:
        check_resume_layout(out_dir, shard)
    progress = ProgressLog(out_dir / shard.progress_name, _settings(checkpoint, detector, classifier, options))
    done = progress.start(resume=options.resume)
    finished: dict[str, ImageResult] = {}
    for src in (items[i] for i in mine):
        previous = done.get(str(src.path))
        if previous is not None:
            previous.file = src.file  # names follow this run's sources
            finished[str(src.path)] = previous
    todo = [i for i in mine if str(items[i].path) not in finished]
    skipped = len(finished)

    run = _Run(detector, classifier, options, out_dir)
    loader = image_loader([items[i].path for i in todo], options, device)
    pending: list[ImageResult] = []

    def write_final() -> tuple[dict[str, Path], list[ImageResult]]:
        # Rank 0 writes every shard's results in the order of the full list; other ranks get None.
        ordered = merge_results(shard, list(finished.values()), [str(src.path) for src in items])
        if ordered is None:
            return {}, list(finished.values())
        written = write_outputs(
            out_dir,
            ordered,
            options.formats,
            detection_categories=detector.categories,
            taxonomy=run.taxonomy,
            detector_name=checkpoint.name,
            classifier_name=None if classifier is None else classifier.name,
        )
        return written, ordered

    try:
        with tqdm(total=len(mine), initial=skipped, unit="img", desc="predict", disable=None) as bar:
            for batch in loader:
                # Dataset indices are positions in `todo`; map them back to positions in `items`.
                batch = [(todo[k], img, reason) for k, img, reason in batch]
                for result in _process_batch(run, batch, items):
                    finished[result.path] = result
                    pending.append(result)
                if len(pending) >= options.checkpoint_every:
                    progress.append(pending)
                    pending = []
                bar.update(len(batch))
    except KeyboardInterrupt:
        progress.append(pending)
        pending = []
        if not shard.distributed:  # the other ranks may be mid-batch; a --resume merges them all
            write_final()
        logger.warning("interrupted: wrote outputs for %d of %d images to %s", len(finished), len(items), out_dir)
        raise
    finally:
        progress.append(pending)

    written, results = write_final()
    leave(shard)
    failed = sum(r.failure is not None for r in results)
    n_det = sum(len(r.detections) for r in results)
    n_cls = sum(bool(d.classifications) for r in results for d in r.detections)
    elapsed = time.perf_counter() - started
    new = len(todo)
    rate = f", {new / elapsed:.2f} images/s" if new else ""
    resumed = f" ({skipped} from an earlier run)" if skipped else ""
    if not written:  # a rank other than 0: its shard only; rank 0 reports the merged run
        return f"rank {shard.rank} of {shard.world_size}: {len(results)} images{resumed}, {failed} failed{rate}"
    return (
        f"{len(results)} images{resumed}, {failed} failed, {n_det} detections, {n_cls} classified; "
        f"wrote {', '.join(p.name for p in written.values())} to {out_dir} in {elapsed:.1f} s{rate}"
        + (f"; {skipped_note}" if skipped_note else "")
    )
