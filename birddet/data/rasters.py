"""Rasters (GeoTIFF orthomosaics, or any raster GDAL reads) read window by window, never decoded whole.

An orthomosaic of a seabird colony is 1-50 Gpx: decoding it whole (as `load_image` does for photos) would need
3-150 GB. `RasterImage` opens the file with rasterio (GDAL) and reads only the window asked for, so memory is set by
the windows in flight, not by the raster. It is the `WindowSource` tiled prediction takes
(`birddet.pipeline.tiling`), what tiled `birddet eval` hands the detector for a raster (`windowed_coco`), and what
tiled training cuts its windows from (`birddet.data.tiled`).

Pixels are turned into the 8-bit RGB the detector expects, the same way for every window:

- **Bands**: `bands` (1-based, as GDAL numbers them; `--bands 1,2,3`) picks three bands, or one repeated as grey.
  By default the bands GDAL tags red, green and blue, else the first three, else the first repeated: an RGBA or
  RGBN (near-infrared) orthomosaic gives its RGB.
- **Bit depth**: 8-bit bands are used as they are. Any other type (16-bit from multispectral and thermal cameras,
  float) is stretched linearly from its 2nd to its 98th percentile to 0..255 per band. The percentiles come from a
  decimated read (GDAL uses the file's overviews when it has them, at most `PERCENTILE_SIDE` px on the longest
  side), never from the full raster, and they are recorded (`report()`), so the stretch can be repeated.
- **Nodata**: GDAL's dataset mask (the nodata value, an alpha band or an internal mask) says which pixels hold
  data. A window with none is skipped without running the model (`read_window` returns None, counted in
  `windows_skipped`); masked pixels of a partly valid window are set to 0.

rasterio is imported from here only, through `birddet.extras.require("geo", ...)`, so a missing extra is an
`InputError` naming `pip install 'birddet[geo]'`. A `RasterImage` pickles without its open file (DataLoader workers
build it, the main process reads from it) and reopens it on first use.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from birddet.data.images import ImageLoadError
from birddet.errors import InputError
from birddet.extras import require

__all__ = [
    "GDAL_CACHE_MB",
    "PERCENTILE_SIDE",
    "RASTER_SUFFIXES",
    "Georef",
    "RasterImage",
    "is_raster_path",
    "parse_bands",
    "raster_georef",
    "windowed_coco",
]

#: Files that may be read window by window when tiling: GeoTIFF and the raster formats GDAL reads that photos never
#: use. A TIFF is a raster only when it looks like one (`is_raster_path`); a TIFF photo stays a photo.
RASTER_SUFFIXES: frozenset[str] = frozenset({".tif", ".tiff", ".vrt", ".img", ".jp2"})
_TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
#: TIFF tags that mark a GeoTIFF (ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory) and tiling.
_GEOTIFF_TAGS = (33550, 33922, 34264, 34735)
_TILE_WIDTH_TAG = 322
#: A TIFF over this many pixels is read by window whatever it is: decoding it whole is what windows avoid.
_PHOTO_MAX_PIXELS = 150_000_000
#: GDAL's block cache, in MB. Its default (5 % of the RAM) would let the cache alone grow past a 3 GB budget on a
#: big machine; windows are read once each, so a small cache costs nothing.
GDAL_CACHE_MB = 256
#: Longest side of the decimated read that the percentiles of a non-8-bit raster are taken from.
PERCENTILE_SIDE = 2048
PERCENTILES = (2.0, 98.0)


def is_raster_path(path: str | os.PathLike[str]) -> bool:
    """Whether tiled prediction, eval and training read `path` window by window through GDAL.

    `.vrt`, `.img` and `.jp2` always are. A `.tif`/`.tiff` is when it looks like a raster rather than a photo: it
    has GeoTIFF tags, is tiled internally (as orthomosaics and GIS exports are; cameras write strips), is not 8-bit
    RGB(A)/grey, holds more than 150 Mpx, or Pillow cannot read its header. A TIFF photo (8-bit, striped, no map
    tags) stays a photo, decoded whole with its EXIF orientation applied like a JPEG; rasters are north-up by their
    transform and have no orientation to apply. Only the header is read (Pillow parses TIFF tags lazily).
    """
    suffix = Path(path).suffix.lower()
    if suffix not in RASTER_SUFFIXES:
        return False
    if suffix not in _TIFF_SUFFIXES:
        return True
    from PIL import Image

    try:
        with Image.open(path) as img:
            tags = getattr(img, "tag_v2", {})
            if any(t in tags for t in _GEOTIFF_TAGS) or _TILE_WIDTH_TAG in tags:
                return True
            return img.mode not in ("RGB", "RGBA", "L", "P", "CMYK") or img.width * img.height > _PHOTO_MAX_PIXELS
    except (OSError, ValueError, Image.DecompressionBombError):
        return True  # let GDAL read it, or say why it cannot


def parse_bands(text: str | None) -> list[int] | None:
    """`"1,2,3"` -> `[1, 2, 3]`; one band (grey) or three; None for the default choice."""
    if text is None or not text.strip():
        return None
    try:
        bands = [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"--bands {text!r}: give band numbers separated by commas, e.g. --bands 1,2,3") from None
    if len(bands) not in (1, 3) or min(bands) < 1:
        raise InputError(f"--bands {text!r}: give three band numbers (R,G,B) or one (grey), counted from 1")
    return bands


@dataclass(frozen=True)
class Georef:
    """Where a raster lies on the map: its CRS (WKT) and the affine transform pixel (col, row) -> map (x, y).

    `transform` is GDAL's order `(a, b, c, d, e, f)`: `x = a*col + b*row + c`, `y = d*col + e*row + f`.
    """

    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]
    epsg: int | None = None


def _rasterio() -> Any:
    return require("geo", "rasterio")


def _env() -> Any:
    return _rasterio().Env(GDAL_CACHEMAX=GDAL_CACHE_MB)


def _open(path: Path) -> Any:
    rasterio = _rasterio()
    if not path.is_file():
        raise ImageLoadError(f"{path}: raster file not found; check the path")
    try:
        with _env(), warnings.catch_warnings():
            # A raster without georeferencing is fine: its boxes stay in pixels, and the run's summary says so.
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise ImageLoadError(f"{path}: not a raster GDAL can read ({e}); re-export it as a GeoTIFF") from e


def _georef(ds: Any) -> Georef | None:
    """The dataset's georeferencing, or None when it has no CRS or only the identity transform."""
    if ds.crs is None or ds.transform.is_identity:
        return None
    t = ds.transform
    return Georef(ds.crs.to_wkt(), (t.a, t.b, t.c, t.d, t.e, t.f), ds.crs.to_epsg())


def raster_georef(path: str | os.PathLike[str]) -> Georef | None:
    """The georeferencing of the raster at `path` (header only), None when it is not georeferenced."""
    with _env(), _open(Path(path)) as ds:
        return _georef(ds)


def raster_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """`(width, height)` of the raster at `path`, from its header."""
    with _env(), _open(Path(path)) as ds:
        return int(ds.width), int(ds.height)


def _default_bands(ds: Any) -> list[int]:
    """The bands GDAL tags red, green, blue; else the first three; else the first, as grey."""
    ColorInterp = _rasterio().enums.ColorInterp
    interp = list(ds.colorinterp)
    rgb = [interp.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue) if c in interp]
    if len(rgb) == 3:
        return rgb
    return [1, 2, 3] if ds.count >= 3 else [1]


class RasterImage:
    """A raster as a `[3, H, W]` image read a window at a time (the module docstring has the pixel rules).

    `read_window((x0, y0, x1, y1))` -> uint8 `[3, h, w]`, or None when the window holds no data; `overview(longest)`
    -> the whole raster decimated to `longest` px (the full-image pass); `read_array(window)` -> uint8 HWC for
    training. Counters: `windows_read`, `windows_skipped`, `largest_read` (most pixels one read returned), which
    tests use to prove nothing is ever decoded whole.
    """

    def __init__(self, path: str | os.PathLike[str], bands: Sequence[int] | None = None) -> None:
        self.path = Path(path)
        self._ds: Any = None
        ds = self._dataset()
        self.width, self.height, self.count = int(ds.width), int(ds.height), int(ds.count)
        chosen = list(bands) if bands else _default_bands(ds)
        bad = [b for b in chosen if not 1 <= b <= self.count]
        if bad:
            raise InputError(f"{self.path}: --bands {bad} not in this raster, which has bands 1..{self.count}")
        self.bands = chosen * 3 if len(chosen) == 1 else chosen
        self.dtypes = [ds.dtypes[b - 1] for b in self.bands]
        self.georef = _georef(ds)
        self.windows_read = 0
        self.windows_skipped = 0
        self.largest_read = 0
        self.scaling = None if all(d == "uint8" for d in self.dtypes) else self._percentiles()

    @property
    def shape(self) -> tuple[int, int, int]:
        return 3, self.height, self.width

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ds": None}  # an open GDAL handle does not cross processes

    def _dataset(self) -> Any:
        if self._ds is None:
            self._ds = _open(self.path)
        return self._ds

    def close(self) -> None:
        if self._ds is not None:
            self._ds.close()
            self._ds = None

    def _read(self, window: Sequence[int], out_side: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Bands `[3, h, w]` and the data mask `[h, w]` (bool) of `window` (x0, y0, x1, y1), decimated to
        `out_side` (w, h) when given."""
        rasterio = _rasterio()
        x0, y0, x1, y1 = (int(v) for v in window)
        win = rasterio.windows.Window(x0, y0, x1 - x0, y1 - y0)
        unique = list(dict.fromkeys(self.bands))
        kw: dict[str, Any] = {"window": win}
        if out_side is not None:
            kw["out_shape"] = (out_side[1], out_side[0])
            kw["resampling"] = rasterio.enums.Resampling.nearest
        ds = self._dataset()
        with _env():
            data = ds.read(unique, **kw)
            mask = ds.dataset_mask(**kw) > 0
        self.largest_read = max(self.largest_read, int(data.shape[-1] * data.shape[-2]))
        return data[[unique.index(b) for b in self.bands]], mask

    def _percentiles(self) -> list[dict[str, float]]:
        """Per-band 2nd/98th percentiles of the data pixels of a decimated read (module docstring)."""
        scale = min(1.0, PERCENTILE_SIDE / max(self.width, self.height))
        side = (max(1, round(self.width * scale)), max(1, round(self.height * scale)))
        data, mask = self._read((0, 0, self.width, self.height), side)
        out = []
        for band, plane in zip(self.bands, data, strict=True):
            values = plane[mask & np.isfinite(plane)] if mask.any() else plane.ravel()[:0]
            low, high = (float(v) for v in np.percentile(values, PERCENTILES)) if values.size else (0.0, 1.0)
            out.append({"band": band, "percentiles": list(PERCENTILES), "low": low, "high": high})
        return out

    def _to_uint8(self, data: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.scaling is None:
            out = data.astype(np.uint8, copy=False)
        else:
            out = np.empty(data.shape, dtype=np.uint8)
            for i, s in enumerate(self.scaling):
                low, high = s["low"], s["high"]
                stretched = (data[i].astype(np.float32) - low) * (255.0 / max(high - low, 1e-12))
                out[i] = np.clip(np.rint(np.nan_to_num(stretched)), 0, 255)
        out[:, ~mask] = 0
        return out

    def read_window(self, window: Sequence[int]) -> torch.Tensor | None:
        """uint8 `[3, h, w]` of `window` (x0, y0, x1, y1), or None (counted as skipped) when it holds no data."""
        data, mask = self._read(window)
        self.windows_read += 1
        if not mask.any():
            self.windows_skipped += 1
            return None
        return torch.from_numpy(self._to_uint8(data, mask))

    def read_array(self, window: Sequence[int]) -> np.ndarray:
        """uint8 HWC of `window` (masked pixels 0), for training crops."""
        data, mask = self._read(window)
        return np.ascontiguousarray(self._to_uint8(data, mask).transpose(1, 2, 0))

    def overview(self, longest: int) -> torch.Tensor:
        """The whole raster decimated to at most `longest` px on its longest side (GDAL picks an overview when the
        file has them), uint8 `[3, h, w]`."""
        scale = min(1.0, longest / max(self.width, self.height))
        side = (max(1, round(self.width * scale)), max(1, round(self.height * scale)))
        data, mask = self._read((0, 0, self.width, self.height), side)
        return torch.from_numpy(self._to_uint8(data, mask))

    def report(self) -> dict[str, Any]:
        """What a run records for this raster: size, bands, types, the stretch, georeferencing, windows."""
        return {
            "width": self.width,
            "height": self.height,
            "bands": self.bands,
            "dtypes": self.dtypes,
            "scaling": self.scaling,
            "crs": None if self.georef is None else (f"EPSG:{self.georef.epsg}" if self.georef.epsg else None),
            "crs_wkt": None if self.georef is None else self.georef.crs_wkt,
            "transform": None if self.georef is None else list(self.georef.transform),
            "windows_read": self.windows_read,
            "windows_skipped_nodata": self.windows_skipped,
        }


class _WindowedCoco(torch.utils.data.Dataset):
    """A `CocoDetection` (no transforms) whose raster images come as `RasterImage`s instead of decoded pixels."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str) -> Any:  # ann_file, image_ids, skip_bad_images, ... of the base
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        path = self.base.image_path(index)
        if not is_raster_path(path):
            return self.base[index]
        frame_h, frame_w = self.base.frame(index)
        return RasterImage(path), {"image_id": int(self.base.image_ids[index]), "orig_size": (frame_h, frame_w)}


def windowed_coco(dataset: Any) -> Any:
    """`dataset` for tiled eval: raster files are handed over as `RasterImage`s, other images decoded as before."""
    return _WindowedCoco(dataset)
