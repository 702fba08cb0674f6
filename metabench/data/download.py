"""Fetching files over HTTP(S) with a timeout and an md5 check; never called unless allowed."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from metabench.errors import DataError


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: Path, md5: str | None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically; raise DataError on failure or md5 mismatch."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while block := resp.read(1 << 20):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if md5 is not None and (got := md5sum(Path(tmp))) != md5:
            raise DataError(f"downloaded {url} has md5 {got}, expected {md5}; file discarded")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise DataError(f"could not download {url}: {getattr(e, 'reason', e)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest
