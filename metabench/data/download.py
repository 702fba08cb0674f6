"""Fetching dataset files through torchvision's download utilities (progress bar, redirects),
made safe for a training run: a socket timeout so a dead or black-holed host cannot hang it,
the md5 checked before the file takes its name, and every failure one DataError line."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from torchvision.datasets.utils import USER_AGENT, calculate_md5, download_url

from metabench.errors import DataError

TIMEOUT = 60.0  # seconds a connect or a read may stall before the download gives up
# what urllib, http.client and torchvision raise for a failed transfer (RecursionError: too
# many redirects; ValueError: a malformed URL)
NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException, RecursionError,
                  ValueError)


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """torchvision's ``download_url`` opens its connections without a timeout: a default one for
    the duration of the download, the previous default restored after."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def reason(e: BaseException) -> str:
    """The cause of a failed transfer in a few words ("HTTP 404 Not Found", "timed out")."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        e = e.reason if isinstance(e.reason, BaseException) else e
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text.strip().splitlines()[0]


def content_length(url: str, timeout: float = TIMEOUT, hint: str = "") -> int | None:
    """The size the server announces for ``url`` (a HEAD request; torchvision has no size
    query), None when it names none or refuses HEAD; an unreachable server raises DataError
    before anything is announced."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
    except urllib.error.HTTPError:
        return None  # the GET may still work (some servers refuse HEAD)
    except NETWORK_ERRORS as e:
        raise DataError(f"could not download {url}: {reason(e)}{hint}") from None
    return int(length) if length and length.isdigit() else None


def fetch(url: str, dest: Path, md5: str | None, timeout: float = TIMEOUT,
          hint: str = "") -> Path:
    """Download ``url`` to ``dest`` through torchvision (progress bar on stderr): into a
    temporary folder beside ``dest``, md5-checked, then renamed over ``dest``, so a failed or
    corrupt download leaves nothing. ``hint`` ends the line of a failed transfer."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {dest.parent} for the download: {reason(e)}") from None
    try:
        # a fresh folder, not a temp file: download_url skips a file that already exists
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
            part = Path(tmp) / dest.name
            try:
                with socket_timeout(timeout):
                    download_url(url, tmp, filename=dest.name)
            except NETWORK_ERRORS as e:
                raise DataError(f"could not download {url}: {reason(e)}{hint}") from None
            if md5 is not None and (got := calculate_md5(part)) != md5:
                raise DataError(f"downloaded {url} has md5 {got}, expected {md5}; "
                                "file discarded")
            with open(part, "rb") as f:  # on disk before it takes its name (as files.py does)
                os.fsync(f.fileno())
            os.replace(part, dest)
    except OSError as e:  # the folder itself: cannot be made or removed (disk full, read-only)
        raise DataError(f"could not download {url} into {dest.parent}: {reason(e)}") from None
    return dest


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def announce_line(what: str, urls: list[str], root: Path, sizes: list[int | None]) -> str:
    """``downloading Omniglot (2 zips, 15.9 MB) from <url> into <root>``: the size only when
    every server named one."""
    count = f"{len(urls)} zip{'s' if len(urls) != 1 else ''}"
    known = [s for s in sizes if s is not None]
    size = f", {megabytes(sum(known))}" if known and len(known) == len(sizes) else ""
    source = urls[0] if len(urls) == 1 else os.path.dirname(urls[0])
    return f"downloading {what} ({count}{size}) from {source} into {root}"


def say_stderr(line: str) -> None:
    """On stderr, beside torchvision's progress bars; stdout keeps the run's results."""
    from metabench.console import err_console

    err_console.print(line, highlight=False, soft_wrap=True, markup=False)

