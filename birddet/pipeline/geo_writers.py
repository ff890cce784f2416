"""Detections in map coordinates: `detections.gpkg` (the raster's CRS) and `detections.geojson` (RFC 7946, WGS84).

A survey's results go into QGIS or ArcGIS beside the orthomosaic, so each box of a georeferenced raster becomes a
polygon in map coordinates: its four pixel corners mapped through the raster's affine transform
(`shapely.transform`; a rotated raster gives a rotated box). The GeoPackage keeps the raster's own
CRS, one layer (`detections`) per CRS (`detections_<EPSG>` when the rasters of a run differ); the GeoJSON is
RFC 7946, longitude/latitude on WGS84, its corners reprojected with pyproj (corners only: a box is metres wide,
where the curvature of a projection's grid is far below a pixel). Both are written by GDAL through pyogrio, each
atomically. Every feature carries the file, the pixel box, the score, the detector's category and the species.

pyogrio, shapely and pyproj are imported here only (the `geo` extra). Rasters without georeferencing get no
polygons; their boxes stay in the pixel outputs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from birddet.data.rasters import Georef
from birddet.extras import require
from birddet.fileio import atomic_path
from birddet.pipeline.results import ImageResult
from birddet.pipeline.taxonomy import Taxonomy
from birddet.pipeline.writers import _species_fields

__all__ = ["GEOJSON_NAME", "GPKG_NAME", "box_polygons", "write_geo_outputs"]

GPKG_NAME = "detections.gpkg"
GEOJSON_NAME = "detections.geojson"
FIELDS = ("file", "x_min", "y_min", "x_max", "y_max", "score", "category", "species", "species_score")


def box_polygons(boxes_xyxy: np.ndarray, transform: Sequence[float]) -> list[Any]:
    """Shapely polygons of xyxy pixel boxes mapped through GDAL's affine `transform` (a, b, c, d, e, f)."""
    shapely = require("geo", "shapely")
    a, b, c, d, e, f = transform
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    pixel = shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], ccw=False)
    matrix, offset = np.array([[a, b], [d, e]]), np.array([c, f])
    return list(shapely.transform(pixel, lambda xy: xy @ matrix.T + offset))


def _rows(result: ImageResult, taxonomy: Taxonomy | None) -> tuple[np.ndarray, dict[str, list[Any]]]:
    fields: dict[str, list[Any]] = {name: [] for name in FIELDS}
    boxes = []
    for det in result.detections:
        _, species, _, species_score = _species_fields(det, taxonomy)
        x1, y1, x2, y2 = (float(v) for v in det.box_xyxy)
        boxes.append((x1, y1, x2, y2))
        for name, value in zip(
            FIELDS,
            (result.file, x1, y1, x2, y2, float(det.score), det.category_name, species, species_score),
            strict=True,
        ):
            fields[name].append(value)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), fields


def _arrays(fields: Mapping[str, list[Any]]) -> list[np.ndarray]:
    out = []
    for name in FIELDS:
        values = fields[name]
        if name in ("file", "category", "species"):
            out.append(np.asarray(values, dtype=object))
        else:
            out.append(np.asarray([np.nan if v is None else v for v in values], dtype=np.float64))
    return out


def _write_layer(path: Path, geometries: list[Any], fields: Mapping[str, list[Any]], **kw: Any) -> None:
    pyogrio = require("geo", "pyogrio")
    shapely = require("geo", "shapely")
    chatty = logging.getLogger("pyogrio")  # logs "Created N records" at INFO for every layer: not news to a user
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        pyogrio.raw.write(
            path,
            shapely.to_wkb(np.asarray(geometries, dtype=object)),
            _arrays(fields),
            list(FIELDS),
            geometry_type="Polygon",
            **kw,
        )
    finally:
        chatty.setLevel(level)


def write_geo_outputs(
    out_dir: str | os.PathLike[str],
    results: Sequence[ImageResult],
    georefs: Mapping[str, Georef],
    taxonomy: Taxonomy | None,
) -> dict[str, Path]:
    """Write `detections.gpkg` and `detections.geojson` for the results whose `path` has a georeference in
    `georefs`; return `{name: path}`. With none, nothing is written and earlier copies are removed (they belong to
    an earlier run)."""
    out = Path(out_dir)
    by_crs: dict[str, tuple[Georef, list[Any], dict[str, list[Any]]]] = {}
    wgs84: tuple[list[Any], dict[str, list[Any]]] = ([], {name: [] for name in FIELDS})
    for result in results:
        georef = georefs.get(result.path)
        if georef is None or result.failure is not None:
            continue
        boxes, fields = _rows(result, taxonomy)
        polygons = box_polygons(boxes, georef.transform)
        _, geoms, layer_fields = by_crs.setdefault(georef.crs_wkt, (georef, [], {name: [] for name in FIELDS}))
        geoms.extend(polygons)
        wgs84[0].extend(_to_wgs84(polygons, georef.crs_wkt))
        for name in FIELDS:
            layer_fields[name].extend(fields[name])
            wgs84[1][name].extend(fields[name])
    written: dict[str, Path] = {}
    if not by_crs:
        for name in (GPKG_NAME, GEOJSON_NAME):
            (out / name).unlink(missing_ok=True)
        return written
    with atomic_path(out / GPKG_NAME) as tmp:
        tmp.unlink()  # GDAL creates the file itself
        for n, (georef, geoms, fields) in enumerate(by_crs.values()):
            layer = "detections" if len(by_crs) == 1 else f"detections_{georef.epsg or n + 1}"
            _write_layer(tmp, geoms, fields, layer=layer, driver="GPKG", crs=georef.crs_wkt, append=n > 0)
    written["gpkg"] = out / GPKG_NAME
    with atomic_path(out / GEOJSON_NAME) as tmp:
        tmp.unlink()
        _write_layer(
            tmp,
            wgs84[0],
            wgs84[1],
            layer="detections",
            driver="GeoJSON",
            crs="EPSG:4326",
            layer_options={"RFC7946": "YES"},
        )
    written["geojson"] = out / GEOJSON_NAME
    return written


def _to_wgs84(polygons: list[Any], crs_wkt: str) -> list[Any]:
    """The polygons reprojected from `crs_wkt` to WGS84 longitude/latitude (pyproj, traditional x/y order)."""
    pyproj = require("geo", "pyproj")
    shapely = require("geo", "shapely")
    transformer = pyproj.Transformer.from_crs(pyproj.CRS.from_wkt(crs_wkt), "EPSG:4326", always_xy=True)
    if not polygons:
        return []
    return list(
        shapely.transform(
            np.asarray(polygons, dtype=object), lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
        )
    )
