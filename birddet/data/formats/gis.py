"""GIS labels (GeoPackage, shapefile, anything GDAL reads as vectors) on an orthomosaic -> COCO.

Survey teams label birds in QGIS over the orthomosaic: box polygons, or points at each bird. `convert_gis` turns
them into a COCO file whose one image is the raster, so `birddet train` (with `data.tile`, which reads the raster
window by window) can learn from them:

- a polygon becomes the pixel box that holds its vertices, mapped through the inverse of the raster's affine
  transform;
- a point becomes a square of `point_box` map units (metres in a projected CRS) centred on it, then the same;
- labels in another CRS than the raster's are reprojected (pyproj) first; labels with no CRS are taken to be in
  the raster's, and the summary says so;
- a feature wholly outside the raster is listed and dropped; one partly outside is clipped to the raster (the
  builder's rule, listed too).

The category is the `label_field` attribute (default: the first of species, label, category, class, name that the
layer has with any value), else "bird" for all; a feature with an empty label is listed and dropped. pyogrio, shapely and pyproj are imported here only (the `geo` extra).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from birddet.data.formats.builder import CocoBuilder, ConversionResult, relative_to_root
from birddet.data.rasters import raster_georef, raster_size
from birddet.errors import InputError
from birddet.extras import require

__all__ = ["LABEL_FIELDS", "convert_gis"]

#: Attribute names taken as the category, in this order, when `label_field` is not given.
LABEL_FIELDS = ("species", "label", "category", "class", "name")
DEFAULT_LABEL = "bird"


def _label_column(fields: list[str], data: list[Any], label_field: str | None, where: str) -> int | None:
    """The attribute holding the category: `label_field`, else the first of `LABEL_FIELDS` with any value (a
    birddet `detections.gpkg` has an empty `species` without a classifier, and its `category` then names them)."""
    lower = [f.lower() for f in fields]
    if label_field is not None:
        if label_field.lower() not in lower:
            raise InputError(f"{where}: no attribute {label_field!r} (it has {', '.join(fields) or 'none'})")
        return lower.index(label_field.lower())
    for name in LABEL_FIELDS:
        if name in lower and any(v is not None and str(v).strip() for v in data[lower.index(name)]):
            return lower.index(name)
    return None


def _to_pixels(xy: np.ndarray, transform: tuple[float, ...]) -> np.ndarray:
    """Map coordinates `[N, 2]` -> pixel (col, row) through the inverse of GDAL's affine (a, b, c, d, e, f)."""
    a, b, c, d, e, f = transform
    inverse = np.linalg.inv(np.array([[a, b], [d, e]]))
    return (xy - np.array([c, f])) @ inverse.T


def convert_gis(
    labels: str | os.PathLike[str],
    raster: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    point_box: float | None = None,
    label_field: str | None = None,
    layer: str | None = None,
    images: str | os.PathLike[str] | None = None,
    classes: list[str] | None = None,
) -> ConversionResult:
    """Write the COCO file `out` for the boxes and points of `labels` on `raster` (module docstring).

    `images` is the image root recorded (default: the raster's folder); `classes` fixes category ids.
    """
    pyogrio = require("geo", "pyogrio")
    shapely = require("geo", "shapely")
    pyproj = require("geo", "pyproj")
    labels, raster = Path(labels), Path(raster)
    where = str(labels)
    if not labels.exists():
        raise InputError(f"{labels}: labels file not found; give a GeoPackage (.gpkg) or a shapefile (.shp)")
    if point_box is not None and not point_box > 0:
        raise InputError(f"--point-box must be a positive size in map units (metres), got {point_box}")
    georef = raster_georef(raster)
    if georef is None:
        raise InputError(
            f"{raster}: the raster has no georeferencing (CRS and transform), so map coordinates cannot be placed on "
            "it; georeference it (e.g. QGIS Georeferencer) or label its pixels instead"
        )
    width, height = raster_size(raster)
    try:
        meta, _, geometry, field_data = pyogrio.raw.read(labels, layer=layer)
    except Exception as e:  # noqa: BLE001 - pyogrio raises its own DataSourceError/DataLayerError and OSError
        raise InputError(f"{labels}: cannot read it as a GIS vector file ({e}); export a GeoPackage from QGIS") from e
    fields = [str(f) for f in meta["fields"]]
    column = _label_column(fields, field_data, label_field, where)
    geoms = shapely.from_wkb(geometry)

    raster_crs = pyproj.CRS.from_wkt(georef.crs_wkt)
    notes: list[str] = []
    if meta.get("crs") is None:
        notes.append(f"{labels}: no CRS recorded; its coordinates were taken to be in the raster's CRS")
    else:
        label_crs = pyproj.CRS.from_user_input(meta["crs"])
        if not label_crs.equals(raster_crs, ignore_axis_order=True):
            transformer = pyproj.Transformer.from_crs(label_crs, raster_crs, always_xy=True)
            geoms = shapely.transform(geoms, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))
            notes.append(f"{labels}: reprojected from {label_crs.to_string()} to the raster's {raster_crs.to_string()}")
    points = [i for i, g in enumerate(geoms) if g is not None and shapely.get_type_id(g) in (0, 4)]
    if points and point_box is None:
        raise InputError(f"{labels}: {len(points)} point feature(s); give their box size with --point-box METRES")
    if points and raster_crs.is_geographic:
        raise InputError(
            f"{raster}: --point-box is in map units, and the raster's CRS is geographic (degrees); reproject the "
            "raster to a projected CRS (UTM) first"
        )

    builder = CocoBuilder(where=where, classes=classes)
    root = Path(images) if images is not None else raster.parent
    image_id = builder.add_image(relative_to_root(raster, root), width, height)
    outside, empty, unlabelled = [], [], []
    for n, geom in enumerate(geoms):
        name = f"feature {n + 1}"
        if geom is None or geom.is_empty:
            empty.append(name)
            continue
        label = DEFAULT_LABEL if column is None else field_data[column][n]
        if column is not None and (label is None or not str(label).strip()):
            unlabelled.append(name)
            continue
        if n in points:
            x, y = shapely.get_coordinates(geom)[0]
            half = point_box / 2  # type: ignore[operator]
            coords = np.array([[x - half, y - half], [x + half, y + half]])
        else:
            coords = shapely.get_coordinates(geom)
        px = _to_pixels(coords, georef.transform)
        x1, y1 = px.min(axis=0)
        x2, y2 = px.max(axis=0)
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            outside.append(name)
            continue
        builder.add_box(image_id, str(label).strip(), (x1, y1, x2, y2), source=name)
    builder.note("feature(s) outside the raster, dropped", outside)
    builder.note("feature(s) without geometry, dropped", empty)
    builder.note(f"feature(s) with an empty {fields[column] if column is not None else ''} label, dropped", unlabelled)
    builder.notes.extend(notes)
    return builder.write(out, root, source=f"GIS labels {labels.name} on {raster.name}")
