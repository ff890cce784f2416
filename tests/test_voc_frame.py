"""`convert voc` on EXIF-rotated photos: boxes drawn on the stored pixels or on the displayed image land on the birds.

Every photo is a real JPEG written by Pillow with an orientation tag; a red "bird" is painted on the stored pixels,
and the test reads the converted box back through `CocoDetection` (the pixels training sees) to check it is red.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from birddet import cli
from birddet.data.coco import CocoDetection
from birddet.data.formats.voc import convert_voc
from birddet.data.images import stored_size_and_orientation, stored_to_displayed
from birddet.errors import InputError

RED, GREY = (220, 20, 20), (90, 110, 90)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_stored_to_displayed_matches_exif_transpose(orientation: int) -> None:
    """All 8 orientations, on a 40x25 image and an off-centre box, against what Pillow does to the pixels."""
    stored = Image.new("L", (40, 25), 0)
    stored.paste(255, (3, 2, 12, 9))  # x 3..11, y 2..8: the continuous box (3, 2)-(12, 9)
    exif = stored.getexif()
    exif[0x0112] = orientation
    stored.info["exif"] = exif.tobytes()
    shown = ImageOps.exif_transpose(stored)
    boxes, size = stored_to_displayed(np.array([[3.0, 2.0, 12.0, 9.0], [0.0, 0.0, 40.0, 25.0]]), (40, 25), orientation)
    assert size == shown.size
    assert tuple(boxes[0]) == shown.getbbox()
    assert tuple(boxes[1]) == (0, 0, *shown.size)  # the whole image stays the whole image


def _photo(path: Path, size: tuple[int, int], bird: tuple[int, int, int, int], orientation: int) -> Path:
    """A JPEG whose *stored* pixels have a red bird at `bird` (continuous xyxy), tagged with `orientation`."""
    img = Image.new("RGB", size, GREY)
    img.paste(RED, bird)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=95, exif=exif)
    return path


def _xml(path: Path, filename: str, size: tuple[int, int] | None, box: tuple[float, float, float, float]) -> None:
    """A VOC file with one bird at the continuous box `box` (written 1-based, as the devkit does)."""
    x1, y1, x2, y2 = box
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    path.write_text(
        f"<annotation><filename>{filename}</filename>{size_xml}<object><name>bird</name><difficult>0</difficult>"
        f"<bndbox><xmin>{x1 + 1:g}</xmin><ymin>{y1 + 1:g}</ymin><xmax>{x2:g}</xmax><ymax>{y2:g}</ymax></bndbox>"
        "</object></annotation>"
    )


def _redness_in_boxes(ann: Path, root: Path) -> dict[str, float]:
    """file name -> share of red pixels inside its (only) box, read as training reads it (`CocoDetection`)."""
    ds = CocoDetection(ann, root)
    out = {}
    for i in range(len(ds)):
        image, target = ds[i]
        assert target["boxes"].shape == (1, 4)
        x1, y1, x2, y2 = (int(round(v)) for v in target["boxes"][0].tolist())
        patch = (image[:, y1:y2, x1:x2] * 255).numpy()
        red = (patch[0] > 160) & (patch[1] < 80) & (patch[2] < 80)
        out[ds.images[ds.image_ids[i]]["file_name"]] = float(red.mean())
    return out


# stored size, bird on the stored pixels, orientation: 16:9, portrait and square photos
PHOTOS = {
    "turned180.jpg": ((160, 90), (10, 8, 50, 40), 3),
    "cw90.jpg": ((160, 90), (100, 10, 150, 35), 6),
    "ccw90.jpg": ((72, 128), (8, 90, 40, 120), 8),
    "square.jpg": ((96, 96), (6, 60, 30, 90), 6),
    "mirrored.jpg": ((120, 68), (80, 5, 115, 30), 2),
}


def _dataset(tmp_path: Path, frame_of_boxes: str, with_size: bool = True) -> Path:
    """The photos with VOC files whose boxes are drawn in `frame_of_boxes` (<size> describing that frame)."""
    src = tmp_path / "voc"
    for name, (size, bird, orientation) in PHOTOS.items():
        path = _photo(src / name, size, bird, orientation)
        declared: tuple[int, int] = size
        box: tuple[float, float, float, float] = bird
        if frame_of_boxes == "displayed":
            assert stored_size_and_orientation(path) == (size, orientation)
            shown, declared = stored_to_displayed(np.array([bird], dtype=float), size, orientation)
            box = tuple(shown[0].tolist())  # type: ignore[assignment]
        _xml(src / f"{Path(name).stem}.xml", name, declared if with_size else None, box)
    return src


def test_boxes_on_stored_pixels_land_on_the_birds_with_frame_stored(tmp_path: Path, capsys) -> None:
    src = _dataset(tmp_path, "stored")
    assert cli.main(["convert", "voc", str(src), "--out", str(tmp_path / "out.json"), "--frame", "stored"]) == 0
    redness = _redness_in_boxes(tmp_path / "out.json", src)
    assert redness == pytest.approx(dict.fromkeys(PHOTOS, 1.0), abs=0.05)
    data = json.loads((tmp_path / "out.json").read_text())
    sizes = {img["file_name"]: (img["width"], img["height"]) for img in data["images"]}
    assert sizes["cw90.jpg"] == (90, 160) and sizes["ccw90.jpg"] == (128, 72)  # the displayed frame
    out = capsys.readouterr().out
    # <size> could not tell for these: listed, with the frame taken and the way out
    for name in ("turned180.jpg", "square.jpg", "mirrored.jpg"):
        assert name in out
    assert "cw90.jpg" not in out and "ccw90.jpg" not in out  # the transposed <size> told the frame
    assert "taken as drawn on the stored pixels" in out and "--frame displayed" in out


def test_default_frame_is_displayed_and_warns_where_size_cannot_tell(tmp_path: Path) -> None:
    src = _dataset(tmp_path, "displayed")
    result = convert_voc(src, tmp_path / "out.json")
    assert _redness_in_boxes(tmp_path / "out.json", src) == pytest.approx(dict.fromkeys(PHOTOS, 1.0), abs=0.05)
    text = result.summary()
    assert "3 EXIF-rotated photo(s) whose <size> cannot tell" in text
    assert "turned180.xml (turned180.jpg, orientation 3)" in text and "square.xml (square.jpg, orientation 6)" in text
    assert "--frame stored" in text


def test_stored_frame_told_by_size_needs_no_option_and_other_photos_follow_frame(tmp_path: Path) -> None:
    """Boxes on the stored pixels, default option: the 90-degree photos are right (their <size> is the stored
    size), the others are taken as displayed, so their boxes miss the bird, which is why the summary names them."""
    src = _dataset(tmp_path, "stored")
    result = convert_voc(src, tmp_path / "out.json")
    redness = _redness_in_boxes(tmp_path / "out.json", src)
    assert redness["cw90.jpg"] == pytest.approx(1.0, abs=0.05) and redness["ccw90.jpg"] == pytest.approx(1.0, abs=0.05)
    assert redness["turned180.jpg"] < 0.05 and "turned180.jpg" in result.summary()


def test_missing_size_leaves_even_a_90_degree_photo_to_the_option(tmp_path: Path) -> None:
    src = _dataset(tmp_path, "stored", with_size=False)
    result = convert_voc(src, tmp_path / "out.json", frame="stored")
    assert _redness_in_boxes(tmp_path / "out.json", src) == pytest.approx(dict.fromkeys(PHOTOS, 1.0), abs=0.05)
    assert "5 EXIF-rotated photo(s)" in result.summary() and "cw90.jpg" in result.summary()


def test_bad_frame_is_refused(tmp_path: Path, capsys) -> None:
    src = _dataset(tmp_path, "stored")
    with pytest.raises(InputError, match="frame must be one of displayed, stored"):
        convert_voc(src, tmp_path / "out.json", frame="sideways")  # type: ignore[arg-type]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["convert", "voc", str(src), "--out", str(tmp_path / "o.json"), "--frame", "sideways"])
    assert exit_info.value.code == 2 and "invalid choice: 'sideways'" in capsys.readouterr().err
