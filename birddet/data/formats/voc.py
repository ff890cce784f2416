"""Pascal VOC XML (LabelImg, CVAT, Roboflow "Pascal VOC" exports) <-> COCO.

Decisions, stated once:

- **Pixel convention.** The VOC devkit numbers pixels from 1, and `xmax`/`ymax` name the last pixel inside the box
  (inclusive). In COCO's continuous coordinates pixel `i` (1-based) covers `[i - 1, i]`, so a VOC box becomes
  `x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax` (detectron2's VOC loader does the same); `write_voc` applies
  the inverse, so a round trip is exact. Some tools write 0-based coordinates into VOC files; `zero_based=True`
  (`--zero-based`) reads those unchanged. With the default, a 0-based box touching the left or top edge lands 1 px
  outside the image and is clipped and reported, which is how such a file shows itself.
- **`difficult`.** Objects marked `<difficult>1</difficult>` become `iscrowd: 1, difficult: 1`: COCO evaluation
  ignores detections on them instead of counting them as false positives, which is what the VOC devkit does with
  difficult objects, and training learns them as ordinary birds (`birddet.data.coco.is_ignore_region`; a plain
  `iscrowd: 1` box, a crowd, is an ignore region instead). `truncated`, `occluded` and `pose` are not used.
- **Frame.** The COCO file describes every photo as displayed (EXIF orientation applied, like `load_image` and
  `birddet predict`), with the size read from the image header. Labelling tools differ on EXIF-rotated photos: some
  draw on the displayed image, some (those that ignore EXIF) on the stored pixels. `<size>` tells the two apart when
  the rotation swaps width and height (it equals one of the two sizes); boxes drawn on the stored pixels are then
  mapped into the displayed image (`stored_to_displayed`, all 8 orientations). For a 180 degree rotation, a mirror
  or a square photo, and when `<size>` is missing or matches neither, nothing in the file can tell: `frame`
  (`--frame stored|displayed`, default displayed) decides and the summary lists those photos, so a user whose boxes
  would land on the background learns which option to flip. A missing or wrong `<size>` is reported.
- **Images.** `<filename>` is looked up beside the XML, then under `images` (mirroring the XML's sub-folder, then
  flat); a name without its extension, or with the wrong one, is matched by stem. `<path>` (an absolute path on the
  labeller's machine) is ignored. XML files that cannot be parsed or whose image is missing are skipped and listed.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Literal

import numpy as np

from birddet.data.formats.builder import CocoBuilder, ConversionResult, relative_to_root
from birddet.data.images import IMAGE_EXTENSIONS, ImageLoadError, stored_size_and_orientation, stored_to_displayed
from birddet.errors import InputError
from birddet.fileio import atomic_write_text

__all__ = ["FRAMES", "convert_voc", "write_voc"]

Frame = Literal["stored", "displayed"]
#: The frames a VOC file's boxes may be drawn in: the image as stored on disk, or as displayed (EXIF applied).
FRAMES: tuple[Frame, ...] = ("displayed", "stored")


def convert_voc(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    images: str | os.PathLike[str] | None = None,
    *,
    classes: list[str] | None = None,
    zero_based: bool = False,
    frame: Frame = "displayed",
) -> ConversionResult:
    """Convert every `*.xml` under `src` (recursively) into one COCO file `out`; see the module docstring.

    The image root is `images` when given, else `src` (images beside their XML files). `frame` says which frame
    the boxes of an EXIF-rotated photo were drawn in where `<size>` cannot tell (see "Frame" above).
    """
    if frame not in FRAMES:
        raise InputError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r} (--frame)")
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: VOC annotation folder not found")
    xmls = sorted(src.rglob("*.xml")) if src.is_dir() else [src]
    if not xmls:
        raise InputError(f"{src}: no .xml files found; point at the folder holding the VOC annotations")
    root = Path(images) if images is not None else (src if src.is_dir() else src.parent)
    if not root.is_dir():
        raise InputError(f"{root}: image folder not found (--images)")
    builder = CocoBuilder(str(src), classes)
    unreadable, missing, resized, undecided = [], [], [], []
    for xml in xmls:
        try:
            tree = ET.parse(xml)
        except ET.ParseError as e:
            unreadable.append(f"{xml} ({e})")
            continue
        node = tree.getroot()
        if node.tag != "annotation":
            unreadable.append(f"{xml} (root element <{node.tag}>, not <annotation>)")
            continue
        image = _find_image(xml, node, src if src.is_dir() else xml.parent, root)
        if image is None:
            missing.append(f"{xml.name}: {_text(node, 'filename') or '(no <filename>)'}")
            continue
        try:
            stored, orientation = stored_size_and_orientation(image)
        except ImageLoadError as e:
            unreadable.append(str(e))
            continue
        shown = stored_to_displayed(np.zeros((0, 4)), stored, orientation)[1]
        declared = _declared_size(node)
        drawn_on = _frame(declared, stored, shown, orientation)
        if drawn_on is None:
            drawn_on = frame
            undecided.append(f"{xml.name} ({image.name}, orientation {orientation})")
        size = stored if drawn_on == "stored" else shown
        if declared is not None and declared != size:
            resized.append(f"{xml.name}: <size> {declared[0]}x{declared[1]}, image {size[0]}x{size[1]}")
        elif declared is None:
            resized.append(f"{xml.name}: no <size>, image {size[0]}x{size[1]}")
        image_id = builder.add_image(relative_to_root(image, root), *shown)
        to_shown = (stored, orientation) if drawn_on == "stored" else None
        for k, obj in enumerate(node.iter("object"), start=1):
            _add_object(builder, image_id, obj, f"{xml.name} object {k}", zero_based, to_shown)
    builder.note("unreadable XML or image file(s), skipped", unreadable)
    builder.note("XML file(s) whose image was not found, skipped", missing)
    builder.note("image size(s) taken from the image, not <size>", resized)
    other = "stored" if frame == "displayed" else "displayed"
    builder.note(
        f"EXIF-rotated photo(s) whose <size> cannot tell whether the boxes were drawn on the {FRAME_WORDS['stored']} "
        f"or the {FRAME_WORDS['displayed']}; taken as drawn on the {FRAME_WORDS[frame]} (--frame {frame}). If "
        f"their boxes miss the birds, convert again with --frame {other}",
        undecided,
    )
    return builder.write(out, root.absolute(), f"Pascal VOC {src}")


def _text(node: ET.Element, path: str) -> str | None:
    found = node.find(path)
    return None if found is None or found.text is None else found.text.strip()


#: How the summary names each frame.
FRAME_WORDS: dict[str, str] = {
    "stored": "stored pixels (a tool that ignores EXIF)",
    "displayed": "displayed, EXIF-rotated image",
}


def _frame(
    declared: tuple[int, int] | None, stored: tuple[int, int], shown: tuple[int, int], orientation: int
) -> Frame | None:
    """The frame the boxes were drawn in when the file can tell, else None (the caller's `--frame` decides).

    Without an EXIF rotation both frames are the same. With one, `<size>` can only tell them apart when the rotation
    swaps width and height of a non-square photo and `<size>` equals one of the two sizes.
    """
    if orientation == 1:
        return "displayed"
    if stored != shown and declared in (stored, shown):
        return "stored" if declared == stored else "displayed"
    return None


def _declared_size(node: ET.Element) -> tuple[int, int] | None:
    try:
        w, h = int(float(_text(node, "size/width") or 0)), int(float(_text(node, "size/height") or 0))
    except ValueError:
        return None
    return (w, h) if w > 0 and h > 0 else None


def _find_image(xml: Path, node: ET.Element, xml_root: Path, image_root: Path) -> Path | None:
    name = _text(node, "filename") or xml.stem
    sub = xml.parent.relative_to(xml_root) if xml.parent.is_relative_to(xml_root) else Path()
    folders = [xml.parent, image_root / sub, image_root]
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    for folder in folders:  # by stem: "<filename>0001</filename>" or a .png exported as .jpg
        for stem in dict.fromkeys((Path(name).stem, xml.stem)):
            for ext in sorted(IMAGE_EXTENSIONS):
                for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
                    if candidate.is_file():
                        return candidate
    return None


def _add_object(
    builder: CocoBuilder,
    image_id: int,
    obj: ET.Element,
    source: str,
    zero_based: bool,
    to_shown: tuple[tuple[int, int], int] | None,
) -> None:
    """Add one `<object>`; `to_shown` = (stored size, EXIF orientation) when its box is in the stored pixels."""
    name = _text(obj, "name")
    if not name:
        builder.notes.append(f"{source}: no <name>, skipped")
        return
    try:
        xmin, ymin, xmax, ymax = (float(_text(obj, f"bndbox/{k}") or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
    except ValueError:
        xmin = ymin = xmax = ymax = float("nan")  # dropped and reported by the box check
    shift = 0.0 if zero_based else 1.0
    box = (xmin - shift, ymin - shift, xmax, ymax)
    if to_shown is not None:  # 1-based -> continuous first: the shift belongs to the frame the box was drawn in
        x1, y1, x2, y2 = stored_to_displayed(np.array([box]), *to_shown)[0][0].tolist()
        box = (x1, y1, x2, y2)
    difficult = (_text(obj, "difficult") or "0") in ("1", "true", "True")
    builder.add_box(image_id, name, box, source=source, difficult=difficult)


def write_voc(coco: dict[str, Any], out_dir: str | os.PathLike[str], *, image_root: str | None = None) -> list[Path]:
    """Write one VOC XML per COCO image into `out_dir` (mirroring `file_name` folders), 1-based as the devkit.

    `iscrowd` boxes are written as `difficult`. Used to export, and to test `convert_voc` by round trip.
    """
    out_dir = Path(out_dir)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in coco["images"]}
    for a in coco["annotations"]:
        by_image[a["image_id"]].append(a)
    written = []
    for img in coco["images"]:
        node = ET.Element("annotation")
        ET.SubElement(node, "folder").text = str(Path(img["file_name"]).parent)
        ET.SubElement(node, "filename").text = Path(img["file_name"]).name
        if image_root:
            ET.SubElement(node, "path").text = str(Path(image_root) / img["file_name"])
        size = ET.SubElement(node, "size")
        for key, value in (("width", img["width"]), ("height", img["height"]), ("depth", 3)):
            ET.SubElement(size, key).text = str(value)
        for a in by_image[img["id"]]:
            x, y, w, h = a["bbox"]
            obj = ET.SubElement(node, "object")
            ET.SubElement(obj, "name").text = names[a["category_id"]]
            ET.SubElement(obj, "difficult").text = str(int(bool(a.get("iscrowd", 0))))
            box = ET.SubElement(obj, "bndbox")
            for key, value in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
                ET.SubElement(box, key).text = repr(float(value))
        ET.indent(node)
        target = out_dir / Path(img["file_name"]).with_suffix(".xml")
        atomic_write_text(target, ET.tostring(node, encoding="unicode") + "\n")
        written.append(target)
    return written
