"""`birddet convert gis`: box polygons and points of a GeoPackage or shapefile, on a georeferenced orthomosaic,
become COCO pixel boxes through the raster's transform (reprojected first when their CRS differs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_geotiff import BIRD, BIRDS, EPSG, EXPECTED, TRANSFORM, blob_detector, ckpt, predict, rgb_raster  # noqa: F401

from birddet.cli import main
from birddet.pipeline.geo_writers import box_polygons

pyogrio = pytest.importorskip("pyogrio")
pyproj = pytest.importorskip("pyproj")
shapely = pytest.importorskip("shapely")


def write_labels(path: Path, geometries: list, species: list[str], crs: str | None, **kw) -> Path:
    pyogrio.raw.write(
        path,
        shapely.to_wkb(np.asarray(geometries, dtype=object)),
        [np.asarray(species, dtype=object)],
        ["species"],
        crs=crs,
        geometry_type=kw.pop("geometry_type", "Polygon"),
        **kw,
    )
    return path


def convert(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["convert", "gis", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def coco_boxes(path: Path) -> list[tuple[float, ...]]:
    coco = json.loads(path.read_text())
    return sorted(tuple(v) for v in ([x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in coco["annotations"])))


@pytest.mark.parametrize("suffix", [".gpkg", ".shp"])
def test_box_polygons_round_trip_through_a_gis_file_to_the_same_pixel_boxes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    raster = rgb_raster(tmp_path / "ortho.tif")
    t = TRANSFORM
    polygons = box_polygons(np.array(EXPECTED, dtype=float), (t.a, t.b, t.c, t.d, t.e, t.f))
    polygons.append(box_polygons(np.array([[5000, 5000, 5024, 5024]]), (t.a, t.b, t.c, t.d, t.e, t.f))[0])  # outside
    labels = write_labels(
        tmp_path / f"labels{suffix}", polygons, ["Larus argentatus"] * 9 + ["Sterna hirundo"], f"EPSG:{EPSG}"
    )
    code, out, err = convert(capsys, str(labels), "--raster", str(raster), "--out", str(tmp_path / "coco.json"))
    assert code == 0, err
    coco = json.loads((tmp_path / "coco.json").read_text())
    assert coco["images"] == [{"id": 1, "file_name": "ortho.tif", "width": 640, "height": 480}]
    assert [c["name"] for c in coco["categories"]] == ["Larus argentatus"]
    np.testing.assert_allclose(coco_boxes(tmp_path / "coco.json"), EXPECTED, rtol=0, atol=1e-6)
    assert "1 feature(s) outside the raster, dropped: [feature 10]" in out


def test_points_in_another_crs_become_boxes_of_point_box_metres(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raster = rgb_raster(tmp_path / "ortho.tif")
    to_wgs84 = pyproj.Transformer.from_crs(f"EPSG:{EPSG}", "EPSG:4326", always_xy=True)
    centres = [(500_000.0 + (x + BIRD / 2) * 0.05, 6_100_000.0 - (y + BIRD / 2) * 0.05) for x, y in BIRDS]
    points = [shapely.Point(*to_wgs84.transform(x, y)) for x, y in centres]
    labels = write_labels(tmp_path / "points.gpkg", points, ["gull"] * len(points), "EPSG:4326", geometry_type="Point")
    argv = [str(labels), "--raster", str(raster), "--out", str(tmp_path / "coco.json")]
    code, _, err = convert(capsys, *argv)
    assert code == 2 and "--point-box" in err  # points need a size
    code, out, err = convert(capsys, *argv, "--point-box", str(BIRD * 0.05))  # 1.2 m = the birds' 24 px
    assert code == 0, err
    assert "reprojected from EPSG:4326" in out
    np.testing.assert_allclose(coco_boxes(tmp_path / "coco.json"), EXPECTED, rtol=0, atol=1e-4)  # pixels


def test_predicted_geopackage_converts_back_to_the_predicted_boxes(
    ckpt: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    blob_detector: None,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """predict -> detections.gpkg -> convert gis: the same boxes, with the detector's category as the label."""
    raster = rgb_raster(tmp_path / "ortho.tif")
    predict(ckpt, raster, tmp_path / "out", capsys)
    gpkg = tmp_path / "out" / "detections.gpkg"
    code, _, err = convert(capsys, str(gpkg), "--raster", str(raster), "--out", str(tmp_path / "again.json"))
    assert code == 0, err
    again = json.loads((tmp_path / "again.json").read_text())
    assert [c["name"] for c in again["categories"]] == ["songbird"]
    np.testing.assert_allclose(coco_boxes(tmp_path / "again.json"), EXPECTED, rtol=0, atol=1e-6)


def test_labels_on_a_raster_without_georeferencing_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raster = rgb_raster(tmp_path / "scan.tif", georeferenced=False)
    labels = write_labels(tmp_path / "l.gpkg", [shapely.box(0, 0, 1, 1)], ["gull"], f"EPSG:{EPSG}")
    code, _, err = convert(capsys, str(labels), "--raster", str(raster), "--out", str(tmp_path / "c.json"))
    assert code == 2 and "no georeferencing" in err
