"""GeoTIFF orthomosaics: read window by window (never decoded whole), bands and 16-bit stretch, nodata windows
skipped, detections in map coordinates (GeoPackage in the raster's CRS, RFC 7946 GeoJSON), tiled eval and training.

The rasters are small, tiled and compressed GeoTIFFs in UTM with a known transform and white "birds" at known
pixels; the detector's network is replaced by a blob finder, so every expected box is known exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_tiled_predict import CATEGORIES, TINY, blob_boxes

import birddet.data.images
from birddet.cli import main
from birddet.config import config_from_dict
from birddet.data.rasters import RasterImage
from birddet.engine.checkpoint import save_checkpoint
from birddet.models.detector import BirdDetector, build_detector
from birddet.pipeline import predict as predict_module

rasterio = pytest.importorskip("rasterio")
pyogrio = pytest.importorskip("pyogrio")
pyproj = pytest.importorskip("pyproj")
from rasterio.transform import from_origin  # noqa: E402

WIDTH, HEIGHT = 640, 480
EPSG = 32633  # UTM zone 33N
ORIGIN = (500_000.0, 6_100_000.0)  # top-left corner, metres
GSD = 0.05  # metres per pixel
TRANSFORM = from_origin(*ORIGIN, GSD, GSD)
NODATA_FROM_X = 384  # columns from here on hold no data: with 128 px tiles at 25 % overlap, 3 x 5 windows are empty
BIRD = 24
BIRDS = [(40, 40), (150, 60), (262, 30), (20, 200), (140, 180), (300, 210), (60, 330), (180, 400), (310, 420)]
EXPECTED = sorted((x, y, x + BIRD, y + BIRD) for x, y in BIRDS)
FAST = ["--workers", "0", "--device", "cpu", "--no-classifier", "--tile", "128", "--no-full-image"]


def to_map(col: float, row: float) -> tuple[float, float]:
    """Pixel corner -> UTM metres, written out (north-up: x grows with columns, y falls with rows)."""
    return ORIGIN[0] + col * GSD, ORIGIN[1] - row * GSD


def corners(x1: float, y1: float, x2: float, y2: float) -> list[tuple[float, float]]:
    return sorted(to_map(x, y) for x, y in ((x1, y1), (x2, y1), (x2, y2), (x1, y2)))


def bird_plane(background: float, bird: float, dtype: str) -> np.ndarray:
    plane = np.full((HEIGHT, WIDTH), background, dtype=dtype)
    for x, y in BIRDS:
        plane[y : y + BIRD, x : x + BIRD] = bird
    return plane


def write_raster(path: Path, bands: np.ndarray, *, georeferenced: bool = True, **profile: Any) -> Path:
    """A tiled (128 px blocks), DEFLATE-compressed GeoTIFF of `bands` [count, H, W]."""
    meta = {
        "driver": "GTiff",
        "width": WIDTH,
        "height": HEIGHT,
        "count": bands.shape[0],
        "dtype": str(bands.dtype),
        "tiled": True,
        "blockxsize": 128,
        "blockysize": 128,
        "compress": "deflate",
        **profile,
    }
    if georeferenced:
        meta.update(crs=f"EPSG:{EPSG}", transform=TRANSFORM)
    with rasterio.open(path, "w", **meta) as ds:
        ds.write(bands)
    return path


def rgb_raster(path: Path, **kw: Any) -> Path:
    """8-bit RGB, birds white on grey, no data (0) from `NODATA_FROM_X` on."""
    plane = bird_plane(60, 255, "uint8")
    plane[:, NODATA_FROM_X:] = 0
    return write_raster(path, np.stack([plane] * 3), nodata=0, **kw)


def blob_model(images: list[torch.Tensor], targets: Any = None) -> list[dict[str, torch.Tensor]]:
    """Stands in for the network: one box per bright blob of each (resized) window, score 0.9, label 1."""
    outs = []
    for image in images:
        boxes = blob_boxes(image.cpu(), min_side=4)
        outs.append({"boxes": boxes, "scores": torch.full((len(boxes),), 0.9), "labels": torch.ones(len(boxes)).long()})
    return outs


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "tiny.pt", build_detector(config_from_dict(TINY), CATEGORIES)
    )


@pytest.fixture
def blob_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    """Predict and eval load the checkpoint as usual, then find blobs instead of running the random network; and
    decoding any raster whole (`load_image`) fails the test."""
    load = predict_module.load_detector

    def patched(det: BirdDetector) -> BirdDetector:
        det.model.forward = lambda images, targets=None: blob_model(images, targets)  # type: ignore[method-assign]
        return det

    monkeypatch.setattr(predict_module, "load_detector", lambda *a, **k: patched(load(*a, **k)))
    import birddet.engine.checkpoint as checkpoint

    build = checkpoint.detector_from_checkpoint
    monkeypatch.setattr(checkpoint, "detector_from_checkpoint", lambda *a, **k: patched(build(*a, **k)))

    def refuse(path: Any, **_: Any) -> Any:
        raise AssertionError(f"{path} was decoded whole")

    import birddet.data.coco

    for module in (birddet.data.images, birddet.data.coco, predict_module):
        monkeypatch.setattr(module, "load_image", refuse)


def coco_boxes(out: Path) -> list[tuple[float, ...]]:
    coco = json.loads((out / "coco.json").read_text())
    return sorted(
        tuple(round(v, 6) for v in (x, y, x + w, y + h)) for x, y, w, h in (a["bbox"] for a in coco["annotations"])
    )


def predict(ckpt: Path, raster: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code = main(["predict", str(ckpt), str(raster), "--out", str(out), *FAST, *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert " 0 failed" in captured.out, captured.out
    return captured.out


def test_geotiff_detections_land_on_the_map_in_the_rasters_crs_and_in_wgs84(
    ckpt: Path, tmp_path: Path, blob_detector: None, capsys: pytest.CaptureFixture[str]
) -> None:
    raster = rgb_raster(tmp_path / "ortho.tif")
    out = tmp_path / "out"
    summary = predict(ckpt, raster, out, capsys)
    assert coco_boxes(out) == EXPECTED  # pixel outputs stay, exact

    info = pyogrio.read_info(out / "detections.gpkg", layer="detections")
    assert pyproj.CRS.from_user_input(info["crs"]).to_epsg() == EPSG
    assert info["features"] == len(BIRDS)
    meta, _, wkb, fields = pyogrio.raw.read(out / "detections.gpkg")
    import shapely

    polygons = shapely.from_wkb(wkb)
    names = list(meta["fields"])
    pixel = np.stack([fields[names.index(k)] for k in ("x_min", "y_min", "x_max", "y_max")], axis=1).astype(float)
    assert sorted(map(tuple, pixel)) == EXPECTED
    assert set(fields[names.index("category")]) == {"songbird"}  # label 1 is the first category
    for poly, (x1, y1, x2, y2) in zip(polygons, pixel, strict=True):
        ring = shapely.get_coordinates(poly)
        assert len(ring) == 5 and tuple(ring[0]) == tuple(ring[-1])  # a closed box
        np.testing.assert_allclose(sorted(map(tuple, ring[:4])), corners(x1, y1, x2, y2), rtol=0, atol=1e-6)  # m

    geojson = json.loads((out / "detections.geojson").read_text())
    assert "crs" not in geojson  # RFC 7946: always WGS84 longitude/latitude
    to_wgs84 = pyproj.Transformer.from_crs(f"EPSG:{EPSG}", "EPSG:4326", always_xy=True)
    by_box = {
        (f["properties"]["x_min"], f["properties"]["y_min"]): f["geometry"]["coordinates"][0]
        for f in geojson["features"]
    }
    assert len(by_box) == len(BIRDS)
    for x1, y1, x2, y2 in EXPECTED:
        ring = np.array(by_box[(x1, y1)])[:4]
        expected = sorted(to_wgs84.transform(x, y) for x, y in corners(x1, y1, x2, y2))
        assert 14.9 < ring[0][0] < 15.1 and 55 < ring[0][1] < 55.1  # lon, lat: UTM 33N's central meridian is 15 E
        # degrees; RFC 7946 writers keep 7 decimals (about 1 cm)
        np.testing.assert_allclose(sorted(map(tuple, ring)), expected, rtol=0, atol=1e-7)

    record = json.loads((out / "rasters.json").read_text())["rasters"][0]
    assert record["crs"] == f"EPSG:{EPSG}" and record["detections"] == {"songbird": len(BIRDS)}
    assert "ortho.tif: 9 songbird" in summary


def test_all_nodata_windows_are_skipped_without_running_the_model_and_counted(
    ckpt: Path, tmp_path: Path, blob_detector: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    raster = rgb_raster(tmp_path / "ortho.tif")
    seen: list[int] = []
    forward = blob_model

    def counting(images: list[torch.Tensor], targets: Any = None) -> Any:
        seen.extend(int(img[0].sum() > 0) for img in images)
        return forward(images)

    monkeypatch.setattr(__name__ + ".blob_model", counting)
    summary = predict(ckpt, raster, tmp_path / "out", capsys)
    record = json.loads((tmp_path / "out" / "rasters.json").read_text())["rasters"][0]
    # x starts 0, 96, 192, 288, 384, 480, 512 and y starts 0, 96, 192, 288, 352: 35 windows, the 15 from x=384 empty
    assert record["windows_read"] == 35 and record["windows_skipped_nodata"] == 15
    assert len(seen) == 20 and all(seen)  # the model saw only the 20 windows with data
    assert "35 windows, 15 skipped as nodata" in summary


def test_rgbn_raster_with_bands_and_rgba_alpha_mask(
    ckpt: Path, tmp_path: Path, blob_detector: None, capsys: pytest.CaptureFixture[str]
) -> None:
    plane = bird_plane(60, 255, "uint8")
    nir = np.full_like(plane, 250)  # vegetation glows in near-infrared: as a colour band it hides the birds
    rgbn = write_raster(tmp_path / "nrgb.tif", np.stack([nir, plane, plane, plane]))
    predict(ckpt, rgbn, tmp_path / "chosen", capsys, "--bands", "2,3,4")
    assert coco_boxes(tmp_path / "chosen") == EXPECTED
    predict(ckpt, rgbn, tmp_path / "first3", capsys)  # the default takes bands 1-3: NIR in red, one blob per window
    assert coco_boxes(tmp_path / "first3") != EXPECTED

    alpha = np.where(np.arange(WIDTH)[None, :] < NODATA_FROM_X, 255, 0).astype(np.uint8).repeat(HEIGHT, axis=0)
    rgba = write_raster(tmp_path / "rgba.tif", np.stack([plane, plane, plane, alpha]), photometric="RGB", alpha="YES")
    predict(ckpt, rgba, tmp_path / "rgba", capsys)
    record = json.loads((tmp_path / "rgba" / "rasters.json").read_text())["rasters"][0]
    assert record["bands"] == [1, 2, 3] and record["windows_skipped_nodata"] == 15
    assert coco_boxes(tmp_path / "rgba") == EXPECTED


def test_16_bit_raster_is_stretched_by_recorded_percentiles(
    ckpt: Path, tmp_path: Path, blob_detector: None, capsys: pytest.CaptureFixture[str]
) -> None:
    plane = bird_plane(1000, 20000, "uint16")
    plane[:, NODATA_FROM_X:] = 0  # nodata is left out of the percentiles: birds are then 2.8 % of the data pixels,
    raster = write_raster(tmp_path / "thermal.tif", np.stack([plane]), nodata=0)  # so the 98th is a bird
    predict(ckpt, raster, tmp_path / "out", capsys)
    assert coco_boxes(tmp_path / "out") == EXPECTED
    record = json.loads((tmp_path / "out" / "rasters.json").read_text())["rasters"][0]
    assert record["dtypes"] == ["uint16"] * 3 and record["bands"] == [1, 1, 1]
    assert record["scaling"][0] == {"band": 1, "percentiles": [2.0, 98.0], "low": 1000.0, "high": 20000.0}


def test_percentiles_come_from_a_decimated_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import birddet.data.rasters as rasters

    monkeypatch.setattr(rasters, "PERCENTILE_SIDE", 160)
    ramp = np.tile(np.arange(WIDTH, dtype=np.uint16) * 100, (HEIGHT, 1))
    raster = RasterImage(write_raster(tmp_path / "ramp.tif", np.stack([ramp])))
    assert raster.largest_read == 160 * 120  # the percentiles never read the raster at full size
    low, high = raster.scaling[0]["low"], raster.scaling[0]["high"]
    step = 4 * 100  # one decimated column of the ramp
    assert abs(low - np.percentile(ramp, 2)) <= step and abs(high - np.percentile(ramp, 98)) <= step
    window = raster.read_window((0, 0, 128, 128))
    expected = np.clip(np.rint((ramp[:128, :128].astype(np.float32) - low) * 255 / (high - low)), 0, 255)
    assert np.abs(window[0].numpy().astype(int) - expected).max() <= 1  # float rounding only


def test_raster_bigger_than_the_pixel_cap_is_read_only_in_windows(
    ckpt: Path, tmp_path: Path, blob_detector: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the decode caps far below the raster, and `load_image` refusing, a tiled pass with its full-image
    pass still runs: no read is bigger than a tile or the full-image pass's input size."""
    monkeypatch.setattr(birddet.data.images, "TILED_MAX_IMAGE_PIXELS", 10_000)
    monkeypatch.setattr(birddet.data.images, "MAX_IMAGE_PIXELS", 10_000)
    raster = RasterImage(rgb_raster(tmp_path / "ortho.tif"))
    det = predict_module.load_detector(ckpt, "cpu")
    pred = det.predict([raster], conf=0.5, tile=128, batch_size=4)[0]
    assert raster.largest_read <= 128 * 128
    assert raster.windows_read == 35 and pred.image_size == (WIDTH, HEIGHT)
    assert sorted(tuple(round(v) for v in b) for b in pred.boxes.tolist()) == EXPECTED


def test_raster_without_georeferencing_predicts_in_pixels_with_a_note(
    ckpt: Path, tmp_path: Path, blob_detector: None, capsys: pytest.CaptureFixture[str]
) -> None:
    raster = rgb_raster(tmp_path / "scan.tif", georeferenced=False)
    summary = predict(ckpt, raster, tmp_path / "out", capsys)
    assert coco_boxes(tmp_path / "out") == EXPECTED
    assert (
        not (tmp_path / "out" / "detections.gpkg").exists() and not (tmp_path / "out" / "detections.geojson").exists()
    )
    assert "not georeferenced: pixel coordinates only" in summary


def raster_coco(tmp_path: Path, raster: Path) -> Path:
    ann = [
        {"id": i + 1, "image_id": 1, "category_id": 5, "bbox": [x, y, BIRD, BIRD], "area": BIRD * BIRD, "iscrowd": 0}
        for i, (x, y) in enumerate(BIRDS)
    ]
    coco = {
        "images": [{"id": 1, "file_name": raster.name, "width": WIDTH, "height": HEIGHT}],
        "annotations": ann,
        "categories": [{"id": k, "name": v} for k, v in CATEGORIES.items()],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    return path


def test_eval_tile_scores_a_geotiff_read_window_by_window(
    ckpt: Path, tmp_path: Path, blob_detector: None, capsys: pytest.CaptureFixture[str]
) -> None:
    raster = rgb_raster(tmp_path / "ortho.tif")
    gt = raster_coco(tmp_path, raster)
    argv = ["eval", str(ckpt), "--ann", str(gt), "--images", str(tmp_path), "--out", str(tmp_path / "eval")]
    code = main([*argv, "--tile", "128", "--no-full-image", "--workers", "0", "--no-plots", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert sorted((r["bbox"][0], r["bbox"][1]) for r in results) == sorted(map(tuple, map(list, BIRDS)))
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["stats"]["AP50"] == pytest.approx(1.0)


def test_tiled_training_reads_each_window_from_the_geotiff(tmp_path: Path, blob_detector: None) -> None:
    from birddet.data.coco import CocoDetection
    from birddet.data.tiled import TiledCocoDetection

    raster = rgb_raster(tmp_path / "ortho.tif")
    base = CocoDetection(raster_coco(tmp_path, raster), tmp_path)
    tiled = TiledCocoDetection(base, size=128, overlap=0.25, min_visibility=1.0, negatives=0.0)
    assert len(tiled) > 0 and not base.skipped
    for i in range(len(tiled)):
        image, target = tiled[i]
        x0, y0, x1, y1 = target["window"]
        inside = sorted(
            (bx - x0, by - y0, bx + BIRD - x0, by + BIRD - y0)
            for bx, by in BIRDS
            if bx >= x0 and by >= y0 and bx + BIRD <= x1 and by + BIRD <= y1
        )
        assert sorted(map(tuple, target["boxes"].tolist())) == inside
        assert image.shape == (3, y1 - y0, x1 - x0)
        assert sorted(map(tuple, blob_boxes(image).tolist())) == inside  # the window's own pixels
    assert max(r.largest_read for r in tiled._rasters.values()) <= 128 * 128


def test_dropping_cut_duplicates_of_many_boxes_compares_a_bounded_number_of_pairs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An orthomosaic gives tens of thousands of boxes: 1,024 cut boxes against all of them at once raised the peak
    RSS of a 1.6 Gpx run from 1.21 to 1.76 GB."""
    import birddet.pipeline.tiling as tiling

    pairs: list[int] = []
    real = tiling.match_matrix

    def spy(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
        pairs.append(len(a) * len(b))
        return real(a, b, metric)

    monkeypatch.setattr(tiling, "match_matrix", spy)
    monkeypatch.setattr(tiling, "MAX_PAIRS", 1000)
    xy = torch.arange(300, dtype=torch.float32)[:, None] * 10
    boxes = torch.cat([xy, xy, xy + 8, xy + 8], dim=1)
    cut = torch.arange(300) % 3 == 0  # 100 cut boxes, each alone: none is a duplicate
    keep = tiling.drop_cut_duplicates(boxes, torch.ones(300, dtype=torch.int64), cut)
    assert keep.all() and max(pairs) <= 1000 and sum(pairs) == 100 * 200


def test_resume_keeps_the_raster_record_and_rewrites_the_map_outputs(
    ckpt: Path, tmp_path: Path, blob_detector: None, capsys: pytest.CaptureFixture[str]
) -> None:
    raster = rgb_raster(tmp_path / "ortho.tif")
    out = tmp_path / "out"
    predict(ckpt, raster, out, capsys)
    first = json.loads((out / "rasters.json").read_text())
    (out / "detections.gpkg").unlink()
    summary = predict(ckpt, raster, out, capsys, "--resume")
    assert "1 from an earlier run" in summary and "35 windows, 15 skipped as nodata" in summary
    assert json.loads((out / "rasters.json").read_text()) == first
    assert pyogrio.read_info(out / "detections.gpkg")["features"] == len(BIRDS)


def test_without_the_geo_extra_a_tiled_raster_run_stops_naming_the_install(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    raster = rgb_raster(tmp_path / "ortho.tif")
    monkeypatch.setitem(__import__("sys").modules, "rasterio", None)  # `import rasterio` now raises ImportError
    code = main(["predict", str(ckpt), str(raster), "--out", str(tmp_path / "out"), *FAST])
    assert code == 2
    assert "pip install 'birddet[geo]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing started
