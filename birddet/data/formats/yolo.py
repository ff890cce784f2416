"""YOLO txt datasets (Ultralytics, Roboflow "YOLOv5/v8" exports) <-> COCO, one COCO file per split.

What is read, following Ultralytics' own dataset loader (`ultralytics/data/utils.py`, `check_det_dataset` and
`img2label_paths`):

- `data.yaml` gives the class names under `names`, as a list (`[robin, wren]`) or a dict (`{0: robin, 1: wren}`),
  and the splits `train`, `val` (or Roboflow's `valid`) and `test`. Each split is a folder of images, a `.txt` list of
  image paths, or a list of those.
- Split paths are relative to `path:` when the YAML has one (the Ultralytics layout; a relative `path` is taken
  relative to the YAML's folder), else to the YAML's folder. Roboflow writes `train: ../train/images` next to a
  `train/` folder; as in Ultralytics, a `../` path that does not exist is retried without its `../`.
- The label file of `.../images/a.jpg` is `.../labels/a.txt`. An image without a label file, or with an empty one,
  is a negative (no birds): that is what YOLO trainers assume too.
- A row is `class cx cy w h`, normalised to the image's displayed size (Ultralytics reads images with EXIF
  orientation applied). A longer row `class x1 y1 x2 y2 ...` is a segment (polygon) and becomes its bounding box.
  Other rows, and class indices outside `names`, are listed and skipped.

Category ids are `class index + 1` (COCO ids conventionally start at 1), names from `names`; every split gets every
category, so the split files agree. The image root of all splits is the dataset root, printed and recorded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from birddet.data.formats.builder import CocoBuilder, ConversionResult, relative_to_root
from birddet.data.images import IMAGE_EXTENSIONS, ImageLoadError, image_size
from birddet.errors import InputError
from birddet.fileio import atomic_write_text

__all__ = ["SPLIT_NAMES", "convert_yolo", "read_names", "write_yolo"]

#: data.yaml key -> output file stem (Roboflow says `valid`).
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "test": "test"}


def convert_yolo(data: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> dict[str, ConversionResult]:
    """Convert every split named in the dataset's YAML into `out_dir/<split>.json`; returns split -> result."""
    yaml_path = _find_yaml(Path(data))
    spec = _read_yaml(yaml_path)
    names = read_names(spec, yaml_path)
    root = _dataset_root(spec, yaml_path)
    results: dict[str, ConversionResult] = {}
    for key, split in SPLIT_NAMES.items():
        if not spec.get(key):
            continue
        if split in results:
            raise InputError(f"{yaml_path}: both 'val' and 'valid' are set; keep one")
        images = _split_images(spec[key], root, yaml_path, key)
        builder = CocoBuilder(f"{yaml_path} [{key}]", names)
        _read_split(builder, images, root, names)
        results[split] = builder.write(Path(out_dir) / f"{split}.json", root.absolute(), f"YOLO {yaml_path} [{key}]")
    if not results:
        raise InputError(f"{yaml_path}: no 'train', 'val'/'valid' or 'test' split is set; add at least one")
    return results


def _find_yaml(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for name in ("data.yaml", "data.yml", "dataset.yaml"):
            if (path / name).is_file():
                return path / name
        found = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
        if len(found) == 1:
            return found[0]
        raise InputError(f"{path}: no data.yaml found (or several .yaml files); pass the dataset's YAML file itself")
    raise InputError(f"{path}: not found; pass a YOLO data.yaml or the folder holding it")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InputError(f"{path}: malformed YAML ({e})".replace("\n", " ")) from e
    if not isinstance(spec, dict):
        raise InputError(f"{path}: expected a YAML mapping with 'names' and 'train'/'val', got {type(spec).__name__}")
    return spec


def read_names(spec: dict[str, Any], where: Path | str) -> list[str]:
    """Class names in class-index order from a `names` list or `{index: name}` dict."""
    names = spec.get("names")
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    if isinstance(names, dict) and names:
        try:
            indexed = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise InputError(f"{where}: 'names' keys must be class indices 0..K-1, got {list(names)[:10]}") from None
        if sorted(indexed) != list(range(len(indexed))):
            raise InputError(
                f"{where}: 'names' indices must be 0..{len(indexed) - 1} without gaps, got {sorted(indexed)}"
            )
        return [indexed[i] for i in range(len(indexed))]
    raise InputError(f"{where}: 'names' is missing or empty; list the class names (names: [bird]) in the YAML")


def _dataset_root(spec: dict[str, Any], yaml_path: Path) -> Path:
    if spec.get("path"):
        root = Path(str(spec["path"]))
        root = root if root.is_absolute() else yaml_path.parent / root
        if not root.is_dir():
            raise InputError(f"{yaml_path}: path: {spec['path']} is not a folder (relative paths start at the YAML)")
        return root
    return yaml_path.parent


def _resolve(entry: str, root: Path) -> Path:
    path = Path(entry)
    if path.is_absolute():
        return path
    candidate = root / path
    if not candidate.exists() and entry.startswith("../"):  # Roboflow's data.yaml, as Ultralytics handles it
        candidate = root / entry[3:]
    return candidate


def _split_images(value: Any, root: Path, yaml_path: Path, key: str) -> list[Path]:
    entries = value if isinstance(value, list) else [value]
    images: list[Path] = []
    for entry in entries:
        path = _resolve(str(entry), root)
        if path.is_dir():
            images += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        elif path.is_file() and path.suffix == ".txt":
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    images.append(_resolve(line.strip(), path.parent if line.startswith(".") else root))
        else:
            raise InputError(f"{yaml_path}: {key}: {entry} not found (looked for {path}); fix the path in the YAML")
    return images


def label_path(image: Path) -> Path:
    """`.../images/x.jpg` -> `.../labels/x.txt` (the last `images` folder in the path), as Ultralytics does."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _read_split(builder: CocoBuilder, images: list[Path], root: Path, names: list[str]) -> None:
    unreadable, no_labels, bad_rows = [], [], []
    for image in images:
        try:
            width, height = image_size(image)
        except ImageLoadError as e:
            unreadable.append(str(e))
            continue
        image_id = builder.add_image(relative_to_root(image, root), width, height)
        labels = label_path(image)
        if not labels.is_file():
            no_labels.append(image.name)
            continue
        for n, line in enumerate(labels.read_text(encoding="utf-8").splitlines(), start=1):
            row = line.split()
            if not row:
                continue
            source = f"{labels.name} line {n}"
            box = _row_box(row, len(names))
            if box is None:
                bad_rows.append(f"{source}: {line.strip()[:60]!r}")
                continue
            cls, (cx1, cy1, cx2, cy2) = box
            builder.add_box(image_id, names[cls], (cx1 * width, cy1 * height, cx2 * width, cy2 * height), source=source)
    builder.note("unreadable image(s), skipped", unreadable)
    builder.note("image(s) without a label file, kept as negatives", no_labels)
    builder.note("label row(s) that are neither 'class cx cy w h' nor a segment, or name an unknown class", bad_rows)


def _row_box(row: list[str], num_classes: int) -> tuple[int, tuple[float, float, float, float]] | None:
    """(class index, normalised xyxy) of a box or segment row; None for a malformed row."""
    try:
        cls = int(float(row[0]))
        values = [float(v) for v in row[1:]]
    except ValueError:
        return None
    if not 0 <= cls < num_classes:
        return None
    if len(values) == 4:
        cx, cy, w, h = values
        return cls, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    if len(values) >= 6 and len(values) % 2 == 0:  # polygon x1 y1 x2 y2 ... (at least a triangle)
        xs, ys = values[0::2], values[1::2]
        return cls, (min(xs), min(ys), max(xs), max(ys))
    return None


def write_yolo(
    coco: dict[str, Any], image_root: str | os.PathLike[str], out_dir: str | os.PathLike[str], split: str
) -> list[Path]:
    """Write `coco`'s boxes as `out_dir/<split>/labels/*.txt` beside symlinks in `<split>/images/` (Roboflow layout).

    Category ids map to class indices in sorted-id order. `iscrowd` boxes are left out (YOLO has no ignore flag).
    Used to export, and to test `convert_yolo` by round trip; the caller writes data.yaml.
    """
    out = Path(out_dir) / split
    cat_ids = sorted(c["id"] for c in coco["categories"])
    index = {cid: i for i, cid in enumerate(cat_ids)}
    anns: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in coco["images"]}
    for a in coco["annotations"]:
        if not a.get("iscrowd"):
            anns[a["image_id"]].append(a)
    written = []
    for img in coco["images"]:
        w, h = img["width"], img["height"]
        lines = []
        for a in anns[img["id"]]:
            x, y, bw, bh = a["bbox"]
            cx, cy = (x + bw / 2) / w, (y + bh / 2) / h
            lines.append(f"{index[a['category_id']]} {cx:.10f} {cy:.10f} {bw / w:.10f} {bh / h:.10f}")
        flat = img["file_name"].replace("/", "__")
        link = out / "images" / flat
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(Path(image_root).absolute() / img["file_name"])
        labels = out / "labels" / Path(flat).with_suffix(".txt")
        written.append(atomic_write_text(labels, "".join(f"{r}\n" for r in lines)))
    return written
