"""Turn the SOURCE arguments of ``birddet predict`` into a list of images with stable output names.

A SOURCE is an image or video file, a folder (searched recursively for :data:`IMAGE_EXTENSIONS` and video clips
:data:`~birddet.pipeline.video.VIDEO_EXTENSIONS`, any case) or a ``.txt``
list of paths (one a line; blank lines and ``#`` comments skipped; relative entries resolve against the list's
folder, because a list is usually written next to the images it names and moved with them).

Each image gets ``file``: its path relative to its source root (the folder given, the list's folder, or the
file's parent for a single file) with ``/`` separators, which is what MegaDetector tools expect and what makes
an output portable between machines. Names must be unique in one output: when two sources yield the same name
(``cam1/a.jpg`` and ``cam2/a.jpg`` given as folders both become ``a.jpg``) the root's folder name is put in
front, and a counter as a last resort. Listing never opens an image: a list entry that is missing stays in the
list and becomes a failure entry when it is read, so one bad line does not stop a long run.

A name is relative with ``/`` separators; on Linux and macOS a backslash is an ordinary character of a file name
(``a\\b.jpg`` is one file) and stays in the name as it is.

Folder scans leave out the output folder (``exclude``) when it lies inside a SOURCE folder, so a run never reads
its own annotated copies back as photos, and they note photos and videos of types birddet cannot read
(:data:`UNSUPPORTED_MEDIA`: ``.gif``, ``.heic``, raw files, video containers other than the clips it reads) in
:attr:`SourceListing.skipped`, so the summary can say which files were not looked at instead of skipping them without a word.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from birddet.data.images import IMAGE_EXTENSIONS
from birddet.errors import InputError
from birddet.pipeline.video import VIDEO_EXTENSIONS

__all__ = ["SourceImage", "SourceListing", "UNSUPPORTED_MEDIA", "list_sources", "scan_sources"]

LIST_SUFFIX = ".txt"
# Photos and videos a camera or a phone makes that birddet does not read: a folder scan names them in the summary.
UNSUPPORTED_MEDIA = frozenset(
    {
        ".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".psd", ".ico", ".svg", ".mpo",
        ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".sr2", ".orf", ".rw2", ".raf", ".pef", ".srw",
        ".x3f", ".raw", ".rwl", ".3fr", ".erf", ".kdc", ".mrw",
        ".wmv", ".mts", ".m2ts", ".3gp", ".mpg", ".mpeg",
    }
)  # fmt: skip


@dataclass(frozen=True)
class SourceImage:
    """One image to process: ``path`` (absolute, what is read) and ``file`` (unique relative name, what is shown)."""

    path: Path
    file: str
    root: Path

    def __post_init__(self) -> None:
        # A leading slash would make the name absolute. Backslashes are allowed: on Windows `as_posix` has
        # already turned separators into '/', and elsewhere a backslash is part of a file's name.
        if not self.file or self.file.startswith("/"):
            raise ValueError(f"output name {self.file!r} must be a relative path with '/' separators")


@dataclass
class SourceListing:
    """What the SOURCE arguments name: ``images`` to process, and ``skipped``, the files of
    :data:`UNSUPPORTED_MEDIA` types folder scans passed over (relative to their folder, in scan order)."""

    images: list[SourceImage]
    skipped: list[str] = field(default_factory=list)

    def skipped_note(self, shown: int = 3) -> str:
        """``"2 files of unsupported types skipped (a.gif, b.heic)"``; empty when nothing was skipped."""
        if not self.skipped:
            return ""
        names = ", ".join(self.skipped[:shown]) + (
            f" and {len(self.skipped) - shown} more" if len(self.skipped) > shown else ""
        )
        return f"{len(self.skipped)} file(s) of unsupported types skipped ({names}; convert them to JPEG or PNG to include them)"


def _is_image_name(path: Path) -> bool:
    """A photo or a video clip birddet reads (both are sources of frames)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS or path.suffix.lower() in VIDEO_EXTENSIONS


def _relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with '/' separators; the absolute path (minus its leading '/') if outside."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        # Outside the root (an absolute entry in a list that points elsewhere): keep the whole path, which is
        # unique by construction, instead of a bare name that may collide.
        return path.as_posix().lstrip("/").replace(":", "")


class _Scan:
    """Folder scans of one listing: the folders to leave out (by device and inode) and what was skipped."""

    def __init__(self, exclude: Iterable[str | os.PathLike[str]]) -> None:
        self.excluded: set[tuple[int, int]] = set()
        for folder in exclude:
            try:
                st = os.stat(folder)
            except OSError:
                continue  # not created yet: nothing of it can be listed
            self.excluded.add((st.st_dev, st.st_ino))
        self.skipped: list[str] = []

    def _is_excluded(self, path: str) -> bool:
        if not self.excluded:
            return False
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in self.excluded

    def folder(self, folder: Path) -> list[Path]:
        """Image files under ``folder``, recursively, in a stable order (sorted by relative path).

        ``os.walk`` with ``followlinks=False`` so a symlink loop cannot make listing endless; hidden folders
        (``.thumbnails``, our own ``.partial`` files) are skipped because they never hold the user's photos, and
        so is an excluded folder (the run's ``--out``) below ``folder``: its annotated copies are not photos.
        Compared by device and inode, so a symlinked or relative ``--out`` is recognised too.
        """
        found: list[Path] = []
        skipped: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            dirnames[:] = sorted(
                d for d in dirnames if not d.startswith(".") and not self._is_excluded(os.path.join(dirpath, d))
            )
            for name in filenames:
                p = Path(dirpath) / name
                if name.startswith("."):
                    continue
                if _is_image_name(p):
                    found.append(p)
                elif p.suffix.lower() in UNSUPPORTED_MEDIA:
                    skipped.append(p)
        self.skipped.extend(sorted(p.relative_to(folder).as_posix() for p in skipped))
        return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _read_list(list_path: Path, scan: _Scan) -> list[tuple[Path, Path]]:
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
            out.extend((f, base) for f in scan.folder(p))
        else:
            out.append((p, base))  # missing files stay: they become failure entries, not a crash
    return out


def _expand(source: str | os.PathLike[str], scan: _Scan) -> list[tuple[Path, Path]]:
    """(image path, source root) pairs for one SOURCE argument."""
    p = Path(os.path.abspath(Path(source).expanduser()))
    if p.is_dir():
        return [(f, p) for f in scan.folder(p)]
    if p.is_file() and p.suffix.lower() == LIST_SUFFIX:
        return _read_list(p, scan)
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


def scan_sources(
    sources: Sequence[str | os.PathLike[str]], *, exclude: Iterable[str | os.PathLike[str]] = ()
) -> SourceListing:
    """All images named by ``sources``, in argument order, each once (by absolute path), with unique names, and
    the unsupported photos and videos folder scans passed over.

    ``exclude``: folders a scan must not enter (predict passes its ``--out``). Raises :class:`InputError` for a
    SOURCE that does not exist or when nothing at all is found, because either means the command line is wrong
    and running the model would only waste time.
    """
    if not sources:
        raise InputError("no SOURCE given; pass image files, folders or .txt lists")
    scan = _Scan(exclude)
    seen: set[Path] = set()
    pairs: list[tuple[Path, Path]] = []
    for source in sources:
        for path, root in _expand(source, scan):
            if path not in seen:  # the same image reached twice (a file and its folder) is processed once
                seen.add(path)
                pairs.append((path, root))
    listing = SourceListing([], scan.skipped)
    if not pairs:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS))
        note = f"; {listing.skipped_note()}" if listing.skipped else ""
        raise InputError(f"no images found in {', '.join(map(str, sources))} (looked for {exts}, any case){note}")
    listing.images = [
        SourceImage(path, name, root) for (path, root), name in zip(pairs, _unique_names(pairs), strict=True)
    ]
    return listing


def list_sources(
    sources: Sequence[str | os.PathLike[str]], *, exclude: Iterable[str | os.PathLike[str]] = ()
) -> list[SourceImage]:
    """The images of :func:`scan_sources`, for callers that do not report skipped files."""
    return scan_sources(sources, exclude=exclude).images
