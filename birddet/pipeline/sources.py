"""Turn the SOURCE arguments of ``birddet predict`` into a list of images with stable output names.

A SOURCE is an image file, a folder (searched recursively for :data:`IMAGE_EXTENSIONS`, any case) or a ``.txt``
list of paths (one a line; blank lines and ``#`` comments skipped; relative entries resolve against the list's
folder, because a list is usually written next to the images it names and moved with them).

Each image gets ``file``: its path relative to its source root (the folder given, the list's folder, or the
file's parent for a single file) with ``/`` separators, which is what MegaDetector tools expect and what makes
an output portable between machines. Names must be unique in one output: when two sources yield the same name
(``cam1/a.jpg`` and ``cam2/a.jpg`` given as folders both become ``a.jpg``) the root's folder name is put in
front, and a counter as a last resort. Listing never opens an image: a list entry that is missing stays in the
list and becomes a failure entry when it is read, so one bad line does not stop a long run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from birddet.data.images import IMAGE_EXTENSIONS
from birddet.errors import InputError

__all__ = ["SourceImage", "list_sources"]

LIST_SUFFIX = ".txt"


@dataclass(frozen=True)
class SourceImage:
    """One image to process: ``path`` (absolute, what is read) and ``file`` (unique relative name, what is shown)."""

    path: Path
    file: str
    root: Path

    def __post_init__(self) -> None:
        # Names with backslashes or a leading slash would not be relative paths on every platform.
        if not self.file or self.file.startswith("/") or "\\" in self.file:
            raise ValueError(f"output name {self.file!r} must be a relative path with '/' separators")


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with '/' separators; the absolute path (minus its leading '/') if outside."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        # Outside the root (an absolute entry in a list that points elsewhere): keep the whole path, which is
        # unique by construction, instead of a bare name that may collide.
        return path.as_posix().lstrip("/").replace(":", "")


def _scan_folder(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, in a stable order (sorted by relative path).

    ``os.walk`` with ``followlinks=False`` so a symlink loop cannot make listing endless; hidden folders
    (``.thumbnails``, our own ``.partial`` files) are skipped because they never hold the user's photos.
    """
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            p = Path(dirpath) / name
            if not name.startswith(".") and _is_image_name(p):
                found.append(p)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _read_list(list_path: Path) -> list[tuple[Path, Path]]:
    """(image path, root) pairs from a ``.txt`` list; folders named in it are expanded with the folder as root."""
    try:
        lines = list_path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read image list {list_path}: {exc}; it must be UTF-8 text, one path a line") from None
    base = list_path.parent
    out: list[tuple[Path, Path]] = []
    for raw in lines:
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry).expanduser()
        p = p if p.is_absolute() else base / p
        p = Path(os.path.abspath(p))
        if p.is_dir():
            out.extend((f, base) for f in _scan_folder(p))
        else:
            out.append((p, base))  # missing files stay: they become failure entries, not a crash
    return out


def _expand(source: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """(image path, source root) pairs for one SOURCE argument."""
    p = Path(os.path.abspath(Path(source).expanduser()))
    if p.is_dir():
        return [(f, p) for f in _scan_folder(p)]
    if p.is_file() and p.suffix.lower() == LIST_SUFFIX:
        return _read_list(p)
    if p.is_file():
        # A file named explicitly is taken even with an unusual extension: the user asked for it, and the
        # reader will say clearly if it is not an image.
        return [(p, p.parent)]
    raise InputError(f"source {source} does not exist; give image files, folders or .txt lists of image paths")


def _unique_names(pairs: Sequence[tuple[Path, Path]]) -> list[str]:
    """Relative names, made unique by prefixing the root's folder name and then a counter."""
    names = [_relative_name(path, root) for path, root in pairs]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    taken: set[str] = {n for n in names if counts[n] == 1}
    out: list[str] = []
    for (_path, root), name in zip(pairs, names, strict=True):
        if counts[name] == 1:
            out.append(name)
            continue
        candidate = f"{root.name}/{name}" if root.name else name
        stem, dot, ext = candidate.rpartition(".")
        k = 1
        unique = candidate
        while unique in taken:
            k += 1
            unique = f"{stem}~{k}.{ext}" if dot else f"{candidate}~{k}"
        taken.add(unique)
        out.append(unique)
    return out


def list_sources(sources: Sequence[str | os.PathLike[str]]) -> list[SourceImage]:
    """All images named by ``sources``, in argument order, each once (by absolute path), with unique names.

    Raises :class:`InputError` for a SOURCE that does not exist or when nothing at all is found, because
    either means the command line is wrong and running the model would only waste time.
    """
    if not sources:
        raise InputError("no SOURCE given; pass image files, folders or .txt lists")
    seen: set[Path] = set()
    pairs: list[tuple[Path, Path]] = []
    for source in sources:
        for path, root in _expand(source):
            if path not in seen:  # the same image reached twice (a file and its folder) is processed once
                seen.add(path)
                pairs.append((path, root))
    if not pairs:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise InputError(f"no images found in {', '.join(map(str, sources))} (looked for {exts}, any case)")
    return [SourceImage(path, name, root) for (path, root), name in zip(pairs, _unique_names(pairs), strict=True)]
