"""One run per folder: `predict`, `train`, `train-classifier` and `eval` hold `OUT/birddet.lock` while they run.

Two runs writing into one folder mix their files silently (one run's settings header over the other's results,
one training's checkpoints over another's), and both exit 0. So every run takes its output folder first:

  - the lock file holds the owner's pid, host, command and start time, so the refusal can say who holds it;
  - exclusivity comes from ``flock`` on that file, which the kernel drops when the process dies however it
    dies, so a lock left by a killed run (kill -9, a power cut) is taken over, with a warning naming the dead
    owner; where ``flock`` is not available, a lock whose owner is on this host and no longer running counts
    as left behind;
  - a lock written on another host is never taken over: this host cannot tell whether that run is alive; the
    message says which file to delete when it is not;
  - the lock goes at exit, also on errors and Ctrl-C (:class:`RunLock` is a context manager);
  - under torchrun only rank 0 locks (``enabled=ctx.is_main``): the ranks of one run share their folder.

Temporary files an earlier, killed run left in the folder are deleted once the lock is held (see
`birddet.fileio.remove_stale_temps`): only then is it certain that no live run is still writing them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from birddet.errors import InputError
from birddet.fileio import remove_stale_temps

try:
    import fcntl
except ImportError:  # Windows: the pid/host check alone decides
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLock", "run_lock"]

logger = logging.getLogger(__name__)

LOCK_NAME = "birddet.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    except OSError:
        return False
    return True


def _read_owner(fd: int) -> dict[str, Any] | None:
    """The owner recorded in an open lock file; None when it is empty or unreadable (a crash while writing it)."""
    try:
        raw = os.pread(fd, 4096, 0)
        owner = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _describe(owner: dict[str, Any] | None) -> str:
    if owner is None:
        return "a birddet run (owner not recorded)"
    return (
        f"birddet {owner.get('command', '?')} (pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, "
        f"started {owner.get('started', '?')})"
    )


class RunLock:
    """The exclusive lock of one output folder; see the module docstring.

    ``with RunLock(out, "predict"):`` takes it (raising :class:`InputError` when another run holds it) and lets
    it go at the end of the block, whatever ends it.
    """

    def __init__(self, folder: str | os.PathLike[str], command: str) -> None:
        self.folder = Path(folder)
        self.command = command
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._created: list[Path] = []  # folders acquire() made, deepest first

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder} exists and is not a folder; choose another --out")
        missing = self.folder.absolute()
        self._created = []
        while not missing.exists() and missing != missing.parent:
            self._created.append(missing)
            missing = missing.parent
        self.folder.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                owner = self._lock_fd(fd, host)
                # The owner may have let go and deleted the file between our open and our lock: then we locked
                # a file nobody else will ever look at. Only the file that is at `path` counts.
                try:
                    current = os.stat(self.path)
                except FileNotFoundError:
                    os.close(fd)
                    continue
                mine = os.fstat(fd)
                if (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
                    os.close(fd)
                    continue
            except BaseException:
                os.close(fd)
                raise
            if owner is not None:
                logger.warning(
                    "%s: taking over the lock left by %s, which is no longer running", self.folder, _describe(owner)
                )
            record = {
                "pid": os.getpid(),
                "host": host,
                "command": self.command,
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
            os.fsync(fd)
            self._fd = fd
            break
        else:
            raise InputError(f"cannot take the lock {self.path}: it keeps being replaced; is a run looping on it?")
        for p in remove_stale_temps(self.folder):
            logger.info("removed %s, a temporary file an interrupted run left behind", p)
        return self

    def _lock_fd(self, fd: int, host: str) -> dict[str, Any] | None:
        """Lock the open lock file or raise InputError naming its holder; return the stale owner found, if any."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._busy(_read_owner(fd)) from None
            except OSError:
                pass  # no flock on this file system (some network mounts): judge by the recorded owner alone
            else:
                owner = _read_owner(fd)  # stable now: an owner writes its record only once it holds the lock
                if owner is not None and owner.get("host") != host:
                    # flock is free, but a lock taken on another host may not be visible here (NFS mounted with
                    # local locks): that run may be alive, and only a person can tell.
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    raise self._busy(owner, other_host=True)
                return owner
        owner = _read_owner(fd)
        if owner is None:
            return None
        if owner.get("host") != host:
            raise self._busy(owner, other_host=True)
        pid = owner.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
            raise self._busy(owner)
        return owner

    def _busy(self, owner: dict[str, Any] | None, *, other_host: bool = False) -> InputError:
        hint = (
            f"; if no run is going on there, delete {self.path}"
            if other_host
            else "; wait for it to finish, or choose another --out"
        )
        return InputError(f"{self.folder} is in use by {_describe(owner)}: one run per folder{hint}")

    def release(self) -> None:
        """Delete the lock file (if it is still ours) and let go; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            current = os.stat(self.path)
            mine = os.fstat(fd)
            if (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)  # drops the flock
        # A run that stopped before writing anything (a missing checkpoint) leaves no empty folders behind.
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:
                break

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def run_lock(folder: str | os.PathLike[str], command: str, *, enabled: bool = True) -> Iterator[RunLock | None]:
    """``with run_lock(out, "train", enabled=ctx.is_main):`` holds the folder's lock on the ranks that take it."""
    if not enabled:
        yield None
        return
    with RunLock(folder, command) as lock:
        yield lock
