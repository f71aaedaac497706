"""Fetching original checkpoint files given as http(s) URLs, into a cache, with a progress bar and resume."""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tqdm.auto import tqdm

CHUNK_BYTES = 1 << 20
MAX_ATTEMPTS = 5


def default_cache_dir() -> Path:
    root = os.environ.get("HF_ELMO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hf_elmo"
    )
    return Path(root) / "downloads"


def is_url(location: str | os.PathLike) -> bool:
    return urlparse(str(location)).scheme in ("http", "https")


def resolve_file(location: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local path as it is; an http(s) URL downloaded once into the cache (a second call does not download)."""
    if not is_url(location):
        return Path(location)
    url = str(location)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    name = os.path.basename(urlparse(url).path) or "download"
    target = cache / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    if target.is_file():
        return target
    partial = target.with_name(target.name + ".part")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            _download(url, partial)
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError, IncompleteDownload) as error:
            if isinstance(error, urllib.error.HTTPError) and error.code < 500:
                raise OSError(f"{url}: download failed with HTTP {error.code} {error.reason}") from None
            if attempt == MAX_ATTEMPTS:
                raise OSError(f"{url}: download failed after {MAX_ATTEMPTS} attempts ({error})") from None
            time.sleep(min(2 ** (attempt - 1), 8) * 0.25)
    os.replace(partial, target)  # only a complete file ever carries the final name
    return target


class IncompleteDownload(Exception):
    pass


def _download(url: str, partial: Path) -> None:
    """Download into `partial`, resuming from its current size when the server honours Range requests."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        if have and response.status != 206:  # server ignored the range: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if have else "wb"
        with open(partial, mode) as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=os.path.basename(urlparse(url).path)
        ) as progress:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (ConnectionError, OSError, http.client.HTTPException) as error:
                    raise IncompleteDownload(str(error)) from None
                if not chunk:
                    break
                out.write(chunk)
                progress.update(len(chunk))
    size = partial.stat().st_size
    if total is not None and size != total:
        raise IncompleteDownload(f"got {size} of {total} bytes")
