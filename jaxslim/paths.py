"""Paths as they enter jaxslim: every path a user gives is made absolute here, once.

Orbax's checkpoint handlers (OCDBT, TensorStore) require absolute directories and report a
relative one only from their background threads, long after the save was started; files written
later in a run (metrics, tokenizers, exported models) would also move with the process's working
directory if a caller changed it. So each public entry point (``train``, ``Checkpointer``, the
converters, the CLIs) passes what it is given through :func:`absolute` before using it.

Example:
    >>> import os
    >>> absolute("runs/demo") == absolute(os.path.join(os.getcwd(), "runs", "demo"))
    True
    >>> str(absolute_uri("gs://bucket/run"))
    'gs://bucket/run'
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

# "gs://...", "s3://...", "file://..." and the like: remote (or already rooted) locations.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def absolute(path: str | os.PathLike[str]) -> pathlib.Path:
    """``path`` as an absolute local path: ``~`` expanded, joined to the current directory if
    relative, ``..`` folded; symbolic links are kept as given (not resolved).

    Args:
        path: a string or path-like object.

    Returns:
        The absolute ``pathlib.Path``.

    Raises:
        TypeError: ``path`` is not a string or path-like object.
        ValueError: ``path`` is empty.

    Example:
        >>> absolute("/data/a/../b").as_posix()
        '/data/b'
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"expected a path (str or os.PathLike), got {type(path).__name__}: {path!r}")
    text = os.fspath(path)
    if not text:
        raise ValueError("expected a path, got an empty string")
    return pathlib.Path(os.path.abspath(os.path.expanduser(text)))


def absolute_uri(path: str | os.PathLike[str]) -> Any:
    """Like :func:`absolute`, but a URI (``gs://bucket/dir``) is kept as it is; returns an
    ``etils.epath.Path`` (the type Orbax takes) for both.

    Example:
        >>> absolute_uri("ckpt").is_absolute()
        True
    """
    from etils import epath

    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
    if isinstance(text, str) and _URI.match(text):
        return epath.Path(text)
    return epath.Path(absolute(path))


@contextlib.contextmanager
def output_dir(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[pathlib.Path]:
    """A fresh temporary sibling of ``path`` to write an output folder into, renamed to ``path``
    only when the block ends without an error.

    Until then ``path`` is untouched: an interrupted or failed write leaves the old output (or
    none) complete and only a hidden ``.<name>.partial-*`` folder behind, removed on failure. With
    ``overwrite``, the old folder is renamed aside, the new one into place, and the old one deleted.

    Args:
        path: the output folder.
        overwrite: replace a non-empty ``path``; otherwise that is an error.

    Raises:
        FileExistsError: ``path`` is a non-empty folder (or a file) and ``overwrite`` is false.

    Example:
        >>> import tempfile
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "model"
        >>> with output_dir(out) as tmp:
        ...     _ = (tmp / "weights.bin").write_bytes(b"w")
        >>> sorted(p.name for p in out.iterdir())
        ['weights.bin']
    """
    final = absolute(path)
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} is a file; the output must be a folder")
    occupied = final.is_dir() and any(final.iterdir())
    if occupied and not overwrite:
        raise FileExistsError(
            f"{final} is not empty; refusing to overwrite it (pass --overwrite to replace it)"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = final.parent / f".{final.name}.partial-{tag}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".{final.name}.old-{tag}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


__all__ = ["absolute", "absolute_uri", "output_dir"]
