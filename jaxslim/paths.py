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

import os
import pathlib
import re
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
        >>> absolute("/tmp/a/../b").as_posix()
        '/tmp/b'
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


__all__ = ["absolute", "absolute_uri"]
