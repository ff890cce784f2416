"""Atomic file writes: every file birddet writes appears whole or not at all.

A run killed mid-write (kill -9, Ctrl-C, a full disk) must leave either the old file or the new one, never half of
one: checkpoints, results and progress files are read back by `--resume`. The pattern is a temporary file in the
target's folder (so the rename never crosses file systems), flushed and fsynced, then `os.replace`.

What else every write here guarantees, because the user sees it:
  - modes: the new file gets the mode of the file it replaces (a 0644 `metrics.json` stays 0644), or the umask
    default for a new file, as `open()` would give it; a temporary file is never the reason a file turns 0600;
  - leftovers: temporary names are `.NAME.XXXXXXXX.tmpSUFFIX`; a run killed by kill -9 leaves one behind, and
    :func:`remove_stale_temps` (called when a run takes its folder, see `birddet.runlock`) deletes them;
  - a full disk (ENOSPC, or a quota: EDQUOT) is a :class:`DiskFullError`, one line naming the file, the space
    needed when known and what is free, and saying that the previous file is untouched;
  - sets: :func:`atomic_write_set` writes several files so that an error while writing any of them leaves all
    of the old ones (predict's three outputs are one set);
  - appends (:func:`append_text`) add whole lines or nothing: a failed append is cut back to where it started;
  - CSV: every cell goes through :func:`spreadsheet_safe` (see :func:`csv_text`).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

from birddet.errors import InputError

__all__ = [
    "DiskFullError",
    "append_text",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_set",
    "atomic_write_text",
    "csv_text",
    "remove_stale_temps",
    "spreadsheet_safe",
]

# The characters and length `tempfile.mkstemp` uses, so temporary files of older birddet versions match too.
_TEMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>.*)")
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(InputError):
    """No space (or no quota) left while writing a file; the message names it and says nothing finished was lost.

    An `InputError` so the CLI prints one line and exits 2: the fix is on the user's side (free space, another
    `--out`), and a traceback would hide the one thing to do.
    """


def _size_text(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = n / 1024
    for unit in ("KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def _is_disk_full(exc: BaseException) -> bool:
    """True when `exc` or an exception it came from is ENOSPC/EDQUOT.

    torch.save reports a failed write as a RuntimeError whose context is the OSError, so the chain is followed.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL:
            return True
        current = current.__cause__ or current.__context__
    return False


def _disk_full(target: Path, needed: int | None, *, at_least: bool = False, kept: str | None = None) -> DiskFullError:
    try:
        free = f"{_size_text(shutil.disk_usage(target.parent).free)} free"
    except OSError:
        free = "free space unknown"
    need = f"{'more than ' if at_least else ''}{_size_text(needed)} needed, " if needed else ""
    kept = kept or f"{target} was left as it was"
    return DiskFullError(
        f"no space left on the disk of {target.parent} while writing {target.name} ({need}{free}); {kept}, so "
        "nothing already finished was lost; free some space (or choose another --out) and run the command again "
        "(train and predict continue with --resume)"
    )


def _new_temp(target: Path) -> Path:
    """Create an empty temporary file beside `target` with the mode `open()` would give a new file (0666 & ~umask).

    `tempfile.mkstemp` makes 0600 files, and `os.replace` keeps the temporary file's mode: every output would end
    up private. `O_EXCL` keeps the name ours; a clash just draws another one.
    """
    for _ in range(100):
        rand = "".join(secrets.choice(_TEMP_CHARS) for _ in range(8))
        tmp = target.parent / f".{target.name}.{rand}.tmp{target.suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            if _is_disk_full(exc):
                raise _disk_full(target, None) from None
            raise
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot create a temporary file beside {target}: 100 names were taken")


def _target_mode(target: Path) -> int | None:
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return None


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` in one `os.replace`.

    The temporary name keeps the target's suffix, so writers that pick a format from the extension (PIL,
    safetensors) still work. On error the temporary file is removed and the old target is left untouched; a full
    disk becomes a :class:`DiskFullError` (`size`, when the caller knows it, is the space reported as needed).
    The new file takes the replaced file's mode, or the umask default for a new file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(target)
    try:
        yield tmp
        mode = _target_mode(target)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        if isinstance(exc, DiskFullError) or not _is_disk_full(exc):
            raise  # already named (another file of a set), or not a full disk
        written = tmp.stat().st_size if size is None and tmp.exists() else None
        tmp.unlink(missing_ok=True)  # first, so the free space reported is what the user has once we stop
        raise _disk_full(target, size or written, at_least=size is None) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _write_bytes(tmp: Path, data: bytes) -> None:
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    data = text.encode("utf-8")
    with atomic_path(path, size=len(data)) as tmp:
        _write_bytes(tmp, data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, **dump_kwargs: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, **dump_kwargs))


def atomic_write_set(texts: Mapping[Path, str]) -> list[Path]:
    """Write several text files as one set: all temporary files are written and fsynced before the first rename.

    An error (a full disk, Ctrl-C) while writing any of them leaves every old file in place; only a kill during
    the renames themselves (microseconds) can leave a mix, which is why predict also records a manifest.
    """
    encoded = {Path(p): t.encode("utf-8") for p, t in texts.items()}
    with ExitStack() as stack:
        for target, data in encoded.items():
            _write_bytes(stack.enter_context(atomic_path(target, size=len(data))), data)
    return list(encoded)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """`torch.save` through a temporary file: a kill never leaves half a checkpoint."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def append_text(path: str | os.PathLike[str], text: str) -> None:
    """Append `text` in one write and fsync; on any error the file is cut back to its old end, then the error
    propagates (ENOSPC as a :class:`DiskFullError`).

    Progress and log files are read line by line on resume; a half-written line in the middle (a failed append
    followed by a successful one) would make the whole file unreadable.
    """
    target = Path(path)
    data = text.encode("utf-8")
    with open(target, "ab", buffering=0) as fh:
        start = os.fstat(fh.fileno()).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[fh.write(view) :]
            os.fsync(fh.fileno())
        except BaseException as exc:
            with suppress(OSError):  # if even this fails, the reader drops a torn last line
                os.ftruncate(fh.fileno(), start)
            if _is_disk_full(exc):
                kept = f"{target} keeps every line written before"
                raise _disk_full(target, len(data), kept=kept) from exc
            raise


def remove_stale_temps(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """Delete temporary files (``.NAME.XXXXXXXX.tmpSUFFIX``) an earlier, killed run left in `folder`.

    Only call this while holding the folder's run lock (`birddet.runlock`): a live run's temporary file looks the
    same. Names must match exactly, suffix included, so no file of the user's is ever taken for one.
    """
    removed: list[Path] = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    walk = os.walk(root) if recursive else [(str(root), [], [e.name for e in os.scandir(root)])]
    for dirpath, _dirs, names in walk:
        for name in names:
            match = _TEMP_NAME.fullmatch(name)
            if match is None or Path(match["name"]).suffix != match["suffix"]:
                continue
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


# -- CSV -------------------------------------------------------------------------------------------------------------
# A cell that starts with one of these is run as a formula by Excel, LibreOffice and Google Sheets (OWASP, "CSV
# injection"): an image named `=HYPERLINK("http://...")-.jpg` would become a live link in predictions.csv.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def spreadsheet_safe(value: Any) -> Any:
    """`value` with a leading ``'`` when it is text a spreadsheet would run as a formula; anything else as is.

    Only strings change: numbers (also a negative number written as text, such as ``-0.0``) stay numbers, because
    a spreadsheet reads them as numbers, not formulas. The ``'`` is what spreadsheets themselves use to mark text.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_text(rows: Iterable[Sequence[Any]], *, lineterminator: str = "\r\n") -> str:
    """The CSV text of `rows` (csv module quoting), every cell through :func:`spreadsheet_safe`.

    Every CSV birddet writes is built here, so no writer can forget the neutralisation.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=lineterminator)
    for row in rows:
        writer.writerow([spreadsheet_safe(v) for v in row])
    return buf.getvalue()


def atomic_write_csv(
    path: str | os.PathLike[str], rows: Iterable[Sequence[Any]], *, lineterminator: str = "\r\n"
) -> Path:
    """Write :func:`csv_text` of `rows` atomically."""
    return atomic_write_text(path, csv_text(rows, lineterminator=lineterminator))
