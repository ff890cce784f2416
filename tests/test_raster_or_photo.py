"""Which TIFFs `--tile` reads window by window through GDAL, and which stay photos (EXIF orientation applied).

A camera's TIFF photo, EXIF-rotated, must keep its orientation under `--tile` as a JPEG does; orthomosaics and GIS
exports (GeoTIFF tags, internal tiles, 16-bit) are rasters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from test_geotiff import rgb_raster, write_raster

from birddet.data.rasters import is_raster_path


def test_a_camera_tiff_photo_is_a_photo_and_map_rasters_are_rasters(tmp_path: Path) -> None:
    photo = tmp_path / "photo.tif"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: displayed upright only with the orientation applied
    Image.fromarray(np.zeros((90, 160, 3), np.uint8)).save(photo, exif=exif.tobytes())
    assert not is_raster_path(photo)
    assert not is_raster_path(tmp_path / "photo.jpg")

    assert is_raster_path(rgb_raster(tmp_path / "ortho.tif"))  # georeferenced
    assert is_raster_path(rgb_raster(tmp_path / "scan.tif", georeferenced=False))  # tiled, no map
    sixteen = np.zeros((3, 512, 640), np.uint16)
    assert is_raster_path(write_raster(tmp_path / "strip16.tif", sixteen, georeferenced=False, tiled=False))
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00garbage")
    assert is_raster_path(broken)  # GDAL gets to read it, or to say why not
