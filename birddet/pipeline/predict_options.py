"""``birddet predict``'s options: every knob of a prediction run, checked before any model is loaded.

Apart from the run (`birddet.pipeline.predict`) because the output-folder checks (`birddet.pipeline.run_folder`)
read them too, and they sit below the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from birddet.errors import InputError
from birddet.pipeline.events import DEFAULT_EVENT_GAP_S, EventOptions
from birddet.pipeline.tiling import TileOptions
from birddet.pipeline.video import Sampling
from birddet.pipeline.writers import OUTPUT_NAMES

# Formats written from the whole run's events rather than per image (birddet.pipeline.event_writers).
PACKAGE_FORMATS = ("camtrap-dp",)

__all__ = ["PredictOptions"]


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
    # Test-time augmentation ("none" or "flip"); None = the checkpoint's model.tta.
    tta: str | None = None
    # Lowest score drawn by --save-images (the files get everything >= conf): weak boxes make a picture unreadable.
    draw_conf: float = 0.3
    # Megapixels decoded and waiting at once, over all workers (birddet.data.images.PixelBudgetBatches); None = a
    # quarter of the available memory, never less than one image at the per-image cap.
    decode_budget: float | None = None
    # Raster bands (1-based) read as R,G,B, or one as grey, when tiling a GeoTIFF (birddet.data.rasters); None =
    # the bands tagged red/green/blue, else the first three.
    bands: list[int] | None = None
    # Events (birddet.pipeline.events): the longest gap inside one event, and how many folders name a camera.
    event_gap: float = DEFAULT_EVENT_GAP_S
    deployment_depth: int | None = None
    # --format camtrap-dp: CSV of each camera's deploymentID, latitude, longitude (+ other Camtrap DP columns).
    deployments: str | None = None
    # Video clips (birddet.pipeline.video): frames a second looked at, or every N-th frame when set (wins over fps).
    video_fps: float = 1.0
    every_n_frames: int | None = None
    # An annotated MP4 of each clip's sampled frames in OUT/videos/.
    save_video: bool = False

    def event_options(self) -> EventOptions:
        """The event settings as `EventOptions` (the species rule uses this run's classify_conf and roll-up)."""
        return EventOptions(
            gap_s=self.event_gap,
            deployment_depth=self.deployment_depth,
            classify_conf=self.classify_conf,
            rollup_threshold=self.rollup_threshold,
        )

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

    def sampling(self) -> Sampling:
        """The frames of a clip that are looked at (validated)."""
        return Sampling(fps=self.video_fps, every_n_frames=self.every_n_frames)

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
        if self.bands is not None and (len(self.bands) not in (1, 3) or min(self.bands) < 1):
            raise InputError(f"--bands {self.bands}: give three band numbers (R,G,B) or one (grey), counted from 1")
        if self.bands is not None and self.tile is None:
            raise InputError("--bands chooses the bands of rasters read window by window; add --tile SIZE")
        self.sampling()  # raises InputError naming the bad --video-fps/--every-n-frames value
        if self.resume and self.overwrite:
            raise InputError("--resume continues the run in --out and --overwrite replaces it; give one of them")
        if not self.use_classifier and (self.taxon or self.species_list):
            raise InputError("--taxon and --species-list restrict the species classifier; drop --no-classifier")
        known = (*OUTPUT_NAMES, *PACKAGE_FORMATS)
        if not self.formats:
            raise InputError(f"--format names no output; choose from {', '.join(known)}")
        unknown = [f for f in self.formats if f not in known]
        if unknown:
            raise InputError(f"unknown --format {', '.join(unknown)}; choose from {', '.join(known)}")
        self.event_options().validate()
        if "camtrap-dp" in self.formats and not self.deployments:
            raise InputError(
                "--format camtrap-dp needs --deployments FILE: Camtrap DP requires every camera's latitude and "
                "longitude; give a CSV with columns deploymentID,latitude,longitude, one row per camera folder"
            )
