"""`birddet predict --tile` on rasters: what predict does differently for a GeoTIFF orthomosaic.

A raster source (`birddet.data.rasters.is_raster_path`) reaches the detector as a `RasterImage`, read window by
window, never decoded whole. Three steps of predict then need it handled apart, and they live here:

- species crops (`classify_boxes`): each box's crop comes from a small region read around it, not from a decoded
  image;
- the record of each raster (`RasterLedger`, written to `OUT/rasters.json`): size, bands, the percentile stretch
  of a 16-bit raster, georeferencing, windows read and windows skipped as nodata, and detections per category;
  on `--resume` the records of rasters finished earlier are read back from the earlier `rasters.json`;
- the map outputs (`birddet.pipeline.geo_writers`) for the georeferenced ones, and a note for the others.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from birddet.data.rasters import Georef, RasterImage
from birddet.fileio import atomic_write_json
from birddet.pipeline.geo_writers import GPKG_NAME, write_geo_outputs
from birddet.pipeline.results import ImageResult
from birddet.pipeline.taxonomy import Taxonomy

__all__ = ["RASTERS_NAME", "RasterLedger", "classify_boxes"]

logger = logging.getLogger(__name__)

RASTERS_NAME = "rasters.json"


def _region(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """A window around `box` wide enough for any classifier crop of it: the box grown by its longest side each way
    (the crop rule adds 15 %), clipped to the raster."""
    x1, y1, x2, y2 = box
    grow = max(x2 - x1, y2 - y1, 1.0)
    return (
        max(0, int(x1 - grow)),
        max(0, int(y1 - grow)),
        min(width, int(x2 + grow) + 1),
        min(height, int(y2 + grow) + 1),
    )


def classify_boxes(classifier: Any, images: Sequence[Any], boxes: Sequence[torch.Tensor]) -> list[list[Any]]:
    """`classifier.classify_images(images, boxes)`, where a `RasterImage`'s boxes are cropped from a region read
    around each box. One classifier pass over all crops, as for photos."""
    regions: list[torch.Tensor] = []
    local: list[torch.Tensor] = []
    owners: list[int] = []
    for n, (image, b) in enumerate(zip(images, boxes, strict=True)):
        if not isinstance(image, RasterImage):
            regions.append(image)
            local.append(b)
            owners.append(n)
            continue
        for box in b.tolist():
            x0, y0, x1, y1 = _region(box, image.width, image.height)
            regions.append(torch.from_numpy(image.read_array((x0, y0, x1, y1))).permute(2, 0, 1))
            local.append(torch.tensor([box]) - torch.tensor([x0, y0, x0, y0], dtype=torch.float32))
            owners.append(n)
    found = classifier.classify_images(regions, local) if regions else []
    out: list[list[Any]] = [[] for _ in images]
    for owner, species in zip(owners, found, strict=True):
        out[owner].extend(species)
    return out


class RasterLedger:
    """The record of every raster of a run, by absolute path (see the module docstring)."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def load_earlier(self, out_dir: Path) -> None:
        """On `--resume`: the records of the earlier run's `rasters.json`, for rasters it finished."""
        path = out_dir / RASTERS_NAME
        if not path.is_file():
            return
        try:
            for entry in json.loads(path.read_text()).get("rasters", []):
                self.records[str(entry["path"])] = entry
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("%s is damaged (%s); the records of rasters finished earlier are lost", path, exc)

    def record(self, path: str, file: str, raster: RasterImage, *, save_images: bool = False) -> None:
        """Keep `raster`'s report (after its windows were read) and close it; `--save-images` draws no raster."""
        self.records[path] = {"file": file, "path": path, **raster.report()}
        raster.close()
        if save_images:
            logger.warning(
                "%s: no annotated copy of a raster (it would be drawn whole); open %s over it", file, GPKG_NAME
            )

    def georefs(self) -> dict[str, Georef]:
        return {
            path: Georef(r["crs_wkt"], tuple(r["transform"]), None if not r["crs"] else int(r["crs"].split(":")[1]))
            for path, r in self.records.items()
            if r.get("crs_wkt") and r.get("transform")
        }

    def write(self, out_dir: Path, results: Sequence[ImageResult], taxonomy: Taxonomy | None) -> dict[str, Path]:
        """`rasters.json` (with detections per category) and the map outputs; `{name: path}` of what was written."""
        mine = [r for r in results if r.path in self.records]
        if not mine:
            return {}
        entries = []
        for result in mine:
            counts = Counter(d.category_name for d in result.detections)
            entries.append(
                {**self.records[result.path], "file": result.file, "detections": dict(sorted(counts.items()))}
            )
        written = {"rasters": atomic_write_json(out_dir / RASTERS_NAME, {"rasters": entries}, indent=1)}
        written.update(write_geo_outputs(out_dir, mine, self.georefs(), taxonomy))
        return written

    def summary(self, results: Sequence[ImageResult]) -> str:
        """`"; ortho.tif: 12 gull, 3 tern (2431 windows, 1100 skipped as nodata)"` per raster, and a note for a
        raster with no georeferencing; empty without rasters."""
        parts = []
        for result in results:
            rec = self.records.get(result.path)
            if rec is None or result.failure is not None:
                continue
            counts = Counter(d.category_name for d in result.detections)
            found = ", ".join(f"{n} {name}" for name, n in sorted(counts.items())) or "no detections"
            text = (
                f"{result.file}: {found} ({rec['windows_read']} windows, {rec['windows_skipped_nodata']} skipped as "
                "nodata)"
            )
            if not rec.get("crs_wkt"):
                text += " - not georeferenced: pixel coordinates only, no map outputs"
            parts.append(text)
        return "".join(f"; {p}" for p in parts)
