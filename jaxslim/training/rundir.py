"""One run per run directory: the marker that says a folder is a jaxslim run, and the run lock.

A run directory is either new (absent or empty), or a jaxslim run: it holds the marker file
``jaxslim-run.json``, written when the run first starts (directories of runs started before the
marker existed are recognised by their ``metrics.jsonl`` or ``checkpoints/`` and adopted). Any other
folder, a model directory or a home directory, is refused before a byte is written in it.

While a run trains, it holds an exclusive lock on ``run.lock`` in the run directory (``fcntl.flock``
on process 0 of the run). The file says who holds it (host, pid, start time, command line), so a
second ``jaxslim-train`` on the same directory stops at once naming the holder, and touches nothing.
The operating system releases the lock when its holder dies in any way (SIGKILL included); the
next run then takes the directory over and warns, naming the previous holder.

The lock is advisory and local: on a filesystem without ``flock`` (some network mounts) or for a
remote directory (``gs://``), no lock is taken and a warning says so.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> with RunDirectory(d) as run:
    ...     (d / "jaxslim-run.json").exists()
    True
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import pathlib
import socket
import sys
from typing import Any

from jaxslim.paths import absolute

log = logging.getLogger(__name__)

MARKER = "jaxslim-run.json"
LOCK = "run.lock"
# what a run directory written before the marker existed holds (adopted as a jaxslim run)
_LEGACY = ("metrics.jsonl", "checkpoints")


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used: another run holds it, or it is not a jaxslim run."""


class RunDirectory:
    """Claims ``path`` for one run (see the module docstring); a context manager.

    Args:
        path: the run directory (made absolute).
        lock: take the run lock (process 0 of a run); other processes only check the marker.

    Raises (on entering):
        RunDirectoryError: ``path`` is a file, a folder that is neither empty nor a jaxslim run, or
            a run directory another live process holds.
        OSError: the directory cannot be created or written (read-only, under a file, ...).
    """

    def __init__(self, path: str | os.PathLike[str], *, lock: bool = True) -> None:
        self.path = absolute(path)
        self._lock = lock
        self._fd: int | None = None
        self.taken_over: dict[str, Any] | None = None

    def __enter__(self) -> RunDirectory:
        check_run_directory(self.path)
        if not self._lock:
            return self
        self.path.mkdir(parents=True, exist_ok=True)
        self._acquire()
        try:
            marker = self.path / MARKER
            if not marker.exists():
                _write_json(marker, {"created": _now(), "by": "jaxslim"})
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory lock
            log.warning("no run lock on this platform: nothing stops a second run in %s", self.path)
            return
        path = self.path / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = _read_holder(path)
                raise RunDirectoryError(
                    f"the run directory {self.path} is in use by another run ({_describe(holder)}); "
                    "wait for it to finish or choose another --workdir"
                ) from None
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                log.warning("the filesystem of %s has no locks: nothing stops a second run there", self.path)
                return
            raise
        previous = _read_holder(path)
        if previous:
            self.taken_over = previous
            log.warning(
                "taking over the run directory %s from a run that is gone (%s)",
                self.path,
                _describe(previous),
            )
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _now(),
            "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]) if sys.argv else "",
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # an empty lock file: the last run ended cleanly
        except OSError:
            pass
        os.close(self._fd)  # closing releases the flock
        self._fd = None


def check_run_directory(path: str | os.PathLike[str]) -> pathlib.Path:
    """``path`` (absolute) if it is new, empty or a jaxslim run directory; raises otherwise.

    Raises:
        RunDirectoryError: ``path`` is a file, or a non-empty folder without the run marker (for
            example a model directory); the message lists a few of the files found.
    """
    path = absolute(path)
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"the run directory {path} is a file; give --workdir a directory")
    if not path.exists():
        return path
    names = sorted(p.name for p in path.iterdir())
    # the lock alone: another process of the same run is creating the directory right now
    if not names or MARKER in names or LOCK in names or any(n in names for n in _LEGACY):
        return path
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    raise RunDirectoryError(
        f"{path} is not a jaxslim run directory: it holds {len(names)} entries ({shown}) and no "
        f"{MARKER}; nothing was written. Choose a new or empty --workdir."
    )


def _read_holder(path: pathlib.Path) -> dict[str, Any]:
    try:
        text = path.read_text().strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder unknown"
    return (
        f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {holder.get('started', '?')}"
        + (f", command: {holder['command']}" if holder.get("command") else "")
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _write_json(path: pathlib.Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    tmp.replace(path)


__all__ = ["LOCK", "MARKER", "RunDirectory", "RunDirectoryError", "check_run_directory"]
