"""load_image turns every odd-but-valid image into 8-bit RGB and every broken file into a clear ImageLoadError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from birddet.data.images import IMAGE_EXTENSIONS, ImageLoadError, load_image
from birddet.errors import InputError


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_image_load_error_is_an_input_error():
    assert issubclass(ImageLoadError, InputError)
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"} <= IMAGE_EXTENSIONS


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = _save(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (20, 10)
    r, g, b = img.getpixel((10, 5))
    assert r > 200 and g < 60 and b < 60  # cyan/magenta/yellow = (0, 255, 255) is red


def test_greyscale_and_bilevel_become_rgb(tmp_path):
    grey = load_image(_save(Image.new("L", (8, 6), 77), tmp_path / "grey.png"))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (77, 77, 77)
    bilevel = load_image(_save(Image.new("1", (8, 6), 1), tmp_path / "one.png"))
    assert bilevel.getpixel((3, 3)) == (255, 255, 255)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I;16")
    img = load_image(path)
    assert img.mode == "RGB"
    assert [img.getpixel((x, 0))[0] for x in range(3)] == [0, 100, 255]


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 255  # red
    arr[:, :2, 3] = 255  # left half opaque, right half fully transparent
    img = load_image(_save(Image.fromarray(arr, "RGBA"), tmp_path / "alpha.png"))
    assert img.getpixel((0, 0)) == (255, 0, 0)
    assert img.getpixel((3, 0)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 1)
    path = _save(pal, tmp_path / "pal.png", transparency=0)
    img = load_image(path)
    assert img.getpixel((0, 0)) == (0, 255, 0)
    assert img.getpixel((2, 2)) == (255, 255, 255)  # transparent index -> white


def test_exif_orientation_6_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)  # stored landscape 40x20
    arr[:, :20] = (255, 0, 0)  # left half red, right half blue
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(Image.fromarray(arr), tmp_path / "rot.jpg", exif=exif, quality=95)
    img = load_image(path)
    assert img.size == (20, 40)  # displayed portrait
    top = img.getpixel((10, 5))
    assert top[0] > 200 and top[2] < 60  # the stored left (red) half is on top after a clockwise turn
    assert load_image(path, apply_exif=False).size == (40, 20)


def _truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def test_truncated_jpeg_raises_clear_error(tmp_path):
    path = _truncated_jpeg(tmp_path)
    with pytest.raises(ImageLoadError, match=r"cut\.jpg.*truncated"):
        load_image(path)


def test_truncated_jpeg_is_refused_even_when_another_library_lets_pillow_load_it(tmp_path, monkeypatch):
    # MegaDetector's visualisation module sets this global at import; birddet in the same process must still refuse
    # a truncated photo rather than decode it with a grey band, and leave the other library's setting as it was.
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = _truncated_jpeg(tmp_path)
    with pytest.raises(ImageLoadError, match=r"cut\.jpg.*truncated"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty\.jpg.*0 bytes"):
        load_image(path)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n")
    with pytest.raises(ImageLoadError, match=r"notes\.jpg.*not an image"):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match=r"nope\.png.*not found"):
        load_image(tmp_path / "nope.png")


def test_decompression_bomb_refused_before_decoding(tmp_path):
    path = _save(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match=r"big\.png.*100x100.*exceeds the limit of 5000"):
        load_image(path, max_pixels=5000)
    assert load_image(path, max_pixels=10_000).size == (100, 100)


def test_a_raised_pixel_limit_also_lifts_pillows_own_stop(tmp_path, monkeypatch):
    # Pillow refuses images over 2 x Image.MAX_IMAGE_PIXELS by itself; tiled predict asks for far more than that.
    from PIL import Image as PILImage

    from birddet.data.images import ImageLoadError, load_image
    from birddet.pipeline.predict import ImageFiles

    path = tmp_path / "survey.png"
    PILImage.new("RGB", (100, 100), (10, 20, 30)).save(path)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1_000)  # 100x100 = 10,000 px is a "bomb" to Pillow now
    with pytest.raises(ImageLoadError, match="exceeds the limit of 5000"):
        load_image(path, max_pixels=5_000)
    assert load_image(path, max_pixels=20_000).size == (100, 100)
    assert PILImage.MAX_IMAGE_PIXELS == 1_000  # restored afterwards
    _, pixels, reason = ImageFiles([path], max_pixels=20_000)[0]
    assert reason is None and tuple(pixels.shape) == (3, 100, 100)
    _, pixels, reason = ImageFiles([path], max_pixels=5_000)[0]
    assert pixels is None and "exceeds the limit" in reason
