"""``birddet predict``: detect birds in many images, name their species, write MegaDetector/COCO/CSV outputs.

Flow per batch of ``batch_size`` images: DataLoader workers decode files (EXIF orientation applied, every mode
converted to 8-bit RGB, failures turned into a reason string) -> the detector runs on the batch -> every box with
a score of at least ``classify_conf`` in the batch is cropped, and all crops go through the classifier in one pass
-> :class:`ImageResult` per image. Boxes are in the pixels of the image as displayed.

Long runs never lose finished work: finished images are appended to ``OUT/progress.jsonl`` as the run goes
(`birddet.pipeline.progress`), ``--resume`` keeps the ones that succeeded and retries the failures, and Ctrl-C
writes the final output files for the finished images before exiting. The output folder belongs to one run and
the user's photos are never written over (`birddet.pipeline.run_folder`).

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

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
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
from birddet.data.rasters import RasterImage, is_raster_path
from birddet.engine.checkpoint import load_detector
from birddet.errors import InputError
from birddet.extras import require
from birddet.models.detector import BirdDetector
from birddet.models.tta import override_tta
from birddet.pipeline.event_writers import check_event_inputs, event_output_texts
from birddet.pipeline.predict_options import PredictOptions  # re-exported (lived here): the CLI and tests use it
from birddet.pipeline.progress import PROGRESS_NAME, ProgressLog  # PROGRESS_NAME re-exported (lived here)
from birddet.pipeline.raster_runs import RasterLedger, classify_boxes
from birddet.pipeline.results import Detection, ImageResult
from birddet.pipeline.run_folder import _annotated_path, _claim_folder, _clear_earlier_run
from birddet.pipeline.shards import Shard, check_resume_layout, join, leave, merge_results
from birddet.pipeline.sources import SourceImage, scan_sources
from birddet.pipeline.species import SpeciesClassifier, default_classifier_source
from birddet.pipeline.taxonomy import Taxonomy
from birddet.pipeline.timestamps import stamp_results
from birddet.pipeline.video import clips_summary, is_video, predict_clip, require_av
from birddet.pipeline.video_writers import annotated_video, annotated_video_path
from birddet.pipeline.visualize import save_annotated
from birddet.pipeline.writers import OUTPUT_NAMES, write_outputs

__all__ = ["PROGRESS_NAME", "PredictOptions", "run_prediction"]

logger = logging.getLogger(__name__)


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
    """Dataset over file paths -> ``(index, uint8 [3, H, W] tensor, None)`` or ``(index, None, failure reason)``;
    with ``windowed`` (tiling) a raster comes as ``(index, RasterImage, None)``, opened but not read.

    Decoding happens in DataLoader workers; a bad file returns its reason instead of raising, because an
    exception in a worker would end the whole run for one corrupt JPEG.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        max_pixels: int = MAX_IMAGE_PIXELS,
        windowed: bool = False,
        bands: Sequence[int] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.max_pixels = max_pixels
        self.windowed = windowed  # tiled: rasters come as RasterImages, read window by window (birddet.data.rasters)
        self.bands = bands

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | RasterImage | None, str | None]:
        try:
            if self.windowed and is_raster_path(self.paths[index]):
                return index, RasterImage(self.paths[index], self.bands), None
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
        ImageFiles(  # an image over the whole budget can never fit
            paths, max_pixels=min(max_pixels, budget), windowed=options.tile is not None, bands=options.bands
        ),
        batch_sampler=sampler,
        num_workers=workers,
        prefetch_factor=PREFETCH_FACTOR if workers else None,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )


# -- the run -------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What one batch needs: models, options and where to write annotated images."""

    detector: BirdDetector
    classifier: SpeciesClassifier | None
    options: PredictOptions
    out_dir: Path
    rasters: RasterLedger = field(default_factory=RasterLedger)  # rasters of this run (rasters.json, map outputs)

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
            per_image = classify_boxes(run.classifier, [img for _, img in loaded], boxes)
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
            if isinstance(img, RasterImage):
                run.rasters.record(str(src.path), src.file, img, save_images=opts.save_images)
            elif opts.save_images:
                _save_image(run, img, results[i])
    stamp_results(results.values())  # the photo's time (EXIF, else the file's), saved with the result
    return [results[i] for i, _, _ in batch]


def _save_image(run: _Run, image: torch.Tensor, result: ImageResult) -> None:
    """Annotated copy at ``OUT/images/<file>`` of the boxes scoring at least ``draw_conf``; a failure here costs
    the picture, not the run."""
    target = _annotated_path(run.out_dir, result.file)
    try:
        shown = [d for d in result.detections if d.score >= run.options.draw_conf]
        save_annotated(TF.to_pil_image(image), shown, target, run.taxonomy)
    except (OSError, ValueError) as exc:
        logger.warning("could not write annotated image %s: %s", target, exc)


def _predict_clip(run: _Run, src: SourceImage) -> ImageResult:
    """A video clip: its sampled frames go through the same batch step as photos, ``--batch-size`` at a time
    (`birddet.pipeline.video`); ``--save-video`` encodes them with their boxes as they pass."""
    opts = run.options
    frame_run = replace(run, options=replace(opts, save_images=False))

    def detect(images: Sequence[torch.Tensor]) -> list[list[Detection]]:
        batch = [(k, img, None) for k, img in enumerate(images)]
        return [r.detections for r in _process_batch(frame_run, batch, [src] * len(images))]

    max_pixels = MAX_IMAGE_PIXELS if opts.tile is None else TILED_MAX_IMAGE_PIXELS
    clip = dict(sampling=opts.sampling(), detect=detect, batch_size=opts.batch_size, max_pixels=max_pixels)
    if not opts.save_video:
        return predict_clip(src.path, src.file, **clip)
    target = annotated_video_path(run.out_dir, src.file)
    with annotated_video(target, run.taxonomy, draw_conf=opts.draw_conf) as add:
        return predict_clip(
            src.path, src.file, **clip, on_frame=lambda f, dets: add(TF.to_pil_image(f.image), dets, f.time_s)
        )


def _settings(
    checkpoint: Path,
    detector: BirdDetector,
    classifier: SpeciesClassifier | None,
    options: PredictOptions,
    has_clips: bool = False,
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
        **({"bands": options.bands} if options.bands else {}),
        # Frame sampling only in runs with clips, so progress files of photo runs stay resumable.
        **(options.sampling().settings() if has_clips else {}),
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
    if options.tile is not None and any(is_raster_path(src.path) for src in items):
        require("geo", "rasterio")  # a missing extra stops here, naming the install, not as one failure per raster
    if listing.skipped:
        logger.warning("%s", listing.skipped_note())
    check_event_inputs(items, options)
    if any(is_video(src.path) for src in items):
        require_av()  # a missing optional extra stops here, naming its install, not clip by clip
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
    override_tta(detector.config.model, options.tta)  # this run only; the checkpoint keeps its own
    classifier = _load_classifier(detector, options, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_earlier_run(out_dir, options, shard)

    if options.resume:
        check_resume_layout(out_dir, shard)
    has_clips = any(is_video(src.path) for src in items)
    settings = _settings(checkpoint, detector, classifier, options, has_clips)
    progress = ProgressLog(out_dir / shard.progress_name, settings)
    done = progress.start(resume=options.resume)
    finished: dict[str, ImageResult] = {}
    for src in (items[i] for i in mine):
        previous = done.get(str(src.path))
        if previous is not None:
            previous.file = src.file  # names follow this run's sources
            finished[str(src.path)] = previous
    todo = [i for i in mine if str(items[i].path) not in finished]
    clips = [i for i in todo if is_video(items[i].path)]  # decoded one by one below, after the photos
    photos = [i for i in todo if not is_video(items[i].path)]
    skipped = len(finished)

    run = _Run(detector, classifier, options, out_dir, RasterLedger())
    if options.resume:
        run.rasters.load_earlier(out_dir)
    loader = image_loader([items[i].path for i in photos], options, device)
    pending: list[ImageResult] = []

    def write_final() -> tuple[dict[str, Path], list[ImageResult]]:
        # Rank 0 writes every shard's results in the order of the full list; other ranks get None.
        ordered = merge_results(shard, list(finished.values()), [str(src.path) for src in items])
        if ordered is None:
            return {}, list(finished.values())
        classifier_name = None if classifier is None else classifier.name
        # Events come from the merged results of the whole run, never from one shard (pipeline/event_writers.py).
        events = event_output_texts(
            ordered, options, taxonomy=run.taxonomy, detector_name=checkpoint.name, classifier_name=classifier_name
        )
        written = write_outputs(
            out_dir,
            ordered,
            [f for f in options.formats if f in OUTPUT_NAMES],
            detection_categories=detector.categories,
            taxonomy=run.taxonomy,
            detector_name=checkpoint.name,
            classifier_name=classifier_name,
            extra=events,
        )
        written.update(run.rasters.write(out_dir, ordered, run.taxonomy))  # rasters.json, map outputs
        return written, ordered

    try:
        with tqdm(total=len(mine), initial=skipped, unit="img", desc="predict", disable=None) as bar:
            for batch in loader:
                # Dataset indices are positions in `photos`; map them back to positions in `items`.
                batch = [(photos[k], img, reason) for k, img, reason in batch]
                for result in _process_batch(run, batch, items):
                    finished[result.path] = result
                    pending.append(result)
                if len(pending) >= options.checkpoint_every:
                    progress.append(pending)
                    pending = []
                bar.update(len(batch))
            for i in clips:
                result = _predict_clip(run, items[i])
                finished[result.path] = result
                pending.append(result)
                progress.append(pending)  # a clip is many frames' work: never lose one
                pending = []
                bar.update(1)
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
        f"{sum(r.video is None for r in results)} images{clips_summary(results)}{resumed}, {failed} failed, "
        f"{n_det} detections, "
        f"{n_cls} classified; "
        f"wrote {', '.join(p.name for p in written.values())} to {out_dir} in {elapsed:.1f} s{rate}"
        + (f"; {skipped_note}" if skipped_note else "")
        + run.rasters.summary(results)
    )
