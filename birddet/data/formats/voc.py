"""Pascal VOC XML (LabelImg, CVAT, Roboflow "Pascal VOC" exports) <-> COCO.

Decisions, stated once:

- **Pixel convention.** The VOC devkit numbers pixels from 1, and `xmax`/`ymax` name the last pixel inside the box
  (inclusive). In COCO's continuous coordinates pixel `i` (1-based) covers `[i - 1, i]`, so a VOC box becomes
  `x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax` (detectron2's VOC loader does the same); `write_voc` applies
  the inverse, so a round trip is exact. Some tools write 0-based coordinates into VOC files; `zero_based=True`
  (`--zero-based`) reads those unchanged. With the default, a 0-based box touching the left or top edge lands 1 px
  outside the image and is clipped and reported, which is how such a file shows itself.
- **`difficult`.** Objects marked `<difficult>1</difficult>` become `iscrowd: 1`: the label is kept, training does
  not use it as a target, and COCO evaluation ignores detections on it instead of counting them as false positives,
  which is what the VOC devkit does with difficult objects. `truncated`, `occluded` and `pose` are not used.
- **Image size.** The real size is read from the image header (EXIF orientation applied, like `load_image`).
  `<size>` is used only to tell which frame the boxes were drawn in: when it equals the stored, unrotated size of an
  EXIF-rotated photo (tools that ignore EXIF), the COCO record keeps that size so the dataset loads the unrotated
  pixels the boxes belong to. A missing or wrong `<size>` is replaced by the real size and reported.
- **Images.** `<filename>` is looked up beside the XML, then under `images` (mirroring the XML's sub-folder, then
  flat); a name without its extension, or with the wrong one, is matched by stem. `<path>` (an absolute path on the
  labeller's machine) is ignored. XML files that cannot be parsed or whose image is missing are skipped and listed.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from birddet.data.formats.builder import CocoBuilder, ConversionResult, relative_to_root
from birddet.data.images import IMAGE_EXTENSIONS, ImageLoadError, image_size
from birddet.errors import InputError
from birddet.fileio import atomic_write_text

__all__ = ["convert_voc", "write_voc"]


def convert_voc(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    images: str | os.PathLike[str] | None = None,
    *,
    classes: list[str] | None = None,
    zero_based: bool = False,
) -> ConversionResult:
    """Convert every `*.xml` under `src` (recursively) into one COCO file `out`; see the module docstring.

    The image root is `images` when given, else `src` (images beside their XML files).
    """
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
    unreadable, missing, resized = [], [], []
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
            shown = image_size(image)
            raw = image_size(image, apply_exif=False)
        except ImageLoadError as e:
            unreadable.append(str(e))
            continue
        declared = _declared_size(node)
        width, height = raw if declared == raw and raw != shown else shown
        if declared is not None and declared != (width, height):
            resized.append(f"{xml.name}: <size> {declared[0]}x{declared[1]}, image {width}x{height}")
        elif declared is None:
            resized.append(f"{xml.name}: no <size>, image {width}x{height}")
        image_id = builder.add_image(relative_to_root(image, root), width, height)
        for k, obj in enumerate(node.iter("object"), start=1):
            _add_object(builder, image_id, obj, f"{xml.name} object {k}", zero_based)
    builder.note("unreadable XML or image file(s), skipped", unreadable)
    builder.note("XML file(s) whose image was not found, skipped", missing)
    builder.note("image size(s) taken from the image, not <size>", resized)
    return builder.write(out, root.absolute(), f"Pascal VOC {src}")


def _text(node: ET.Element, path: str) -> str | None:
    found = node.find(path)
    return None if found is None or found.text is None else found.text.strip()


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


def _add_object(builder: CocoBuilder, image_id: int, obj: ET.Element, source: str, zero_based: bool) -> None:
    name = _text(obj, "name")
    if not name:
        builder.notes.append(f"{source}: no <name>, skipped")
        return
    try:
        xmin, ymin, xmax, ymax = (float(_text(obj, f"bndbox/{k}") or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
    except ValueError:
        xmin = ymin = xmax = ymax = float("nan")  # dropped and reported by the box check
    shift = 0.0 if zero_based else 1.0
    difficult = (_text(obj, "difficult") or "0") in ("1", "true", "True")
    builder.add_box(image_id, name, (xmin - shift, ymin - shift, xmax, ymax), source=source, iscrowd=int(difficult))


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
