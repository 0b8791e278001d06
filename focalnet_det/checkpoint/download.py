"""Weights by URL: ``download(url)`` fetches an http(s) file once into ``$FOCALNET_DET_CACHE/weights``.

A file appears at its cached path only once it is complete: the transfer streams into a temporary file in the
same folder, whose length is checked against ``Content-Length`` and whose sha256 is checked when known (the
``sha256`` argument, or the model zoo's entry for the URL); only then is it renamed into place. A killed or
truncated transfer leaves at most a ``*.part`` file, which nothing reads. Any failure (offline, DNS, timeout,
HTTP error, wrong checksum) is a one-line UserError naming the URL and where to put the file by hand.
"""
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import UserError

__all__ = ["download", "weights_cache_dir", "cached_path", "is_url"]

logger = logging.getLogger(__name__)

TIMEOUT_S = 60  # connect, and each read: a stalled server fails instead of hanging a training launch
_CHUNK = 1 << 20


def is_url(path):
    """Whether ``path`` is an http(s) URL (the schemes ``download`` fetches)."""
    return urlparse(str(path)).scheme in ("http", "https")


def weights_cache_dir():
    """``$FOCALNET_DET_CACHE/weights`` (default ``~/.cache/focalnet_det/weights``), computed, not created."""
    return Path(os.environ.get("FOCALNET_DET_CACHE") or Path.home() / ".cache" / "focalnet_det") / "weights"


def _zoo_entry(url):
    """The model zoo's entry for the file ``url`` names, or None (also when ``focalnet_det.model_zoo`` is absent).
    An entry found through another URL of its repo (a repo page, a converted copy) is not this file: None."""
    try:
        from .. import model_zoo
    except ImportError:
        return None
    find = getattr(model_zoo, "find_entry", None)
    entry = find(url) if find is not None else None
    name = unquote(urlparse(url).path.rstrip("/").rsplit("/", 1)[-1])
    return entry if entry is not None and getattr(entry, "file", None) == name else None


def _file_name(url, entry=None):
    """The cached file's name: the zoo's, else the URL's last path component; a Hugging Face Hub URL
    (``/{org}/{repo}/resolve/{rev}/{file}``, whose file names repeat across repos) gets ``org--repo--`` before it."""
    if entry is not None and getattr(entry, "file", None):
        return entry.file
    parts = [unquote(p) for p in urlparse(url).path.split("/") if p]
    if not parts or parts[-1] in (".", ".."):
        raise UserError(f"cannot download {url}: the URL names no file")
    if len(parts) >= 5 and parts[2] == "resolve":
        return "--".join(parts[:2] + parts[4:])
    return parts[-1]


def cached_path(url, cache_dir=None):
    """Where ``download(url, cache_dir)`` keeps the file (whether or not it is there)."""
    return Path(cache_dir or weights_cache_dir()) / _file_name(url, _zoo_entry(url))


def _sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url, cache_dir=None, sha256=None):
    """The local path of the http(s) file ``url``, downloaded into ``cache_dir`` (default
    ``weights_cache_dir()``) unless a complete copy is there already (re-verified when a sha256 is known).

    ``sha256``: the expected hex digest; None takes the model zoo's, if the zoo knows the URL.
    """
    entry = _zoo_entry(url)
    sha256 = (sha256 or getattr(entry, "sha256", None) or "").lower() or None
    folder = Path(cache_dir or weights_cache_dir())
    path = folder / _file_name(url, entry)
    by_hand = f"download it yourself and put it at {path}, or pass the local path (cache folder {folder}, " \
              f"set by FOCALNET_DET_CACHE)"
    if path.is_file():
        if sha256 is not None and _sha256_of(path) != sha256:
            raise UserError(f"cached weights {path} (for {url}) do not have the expected sha256 {sha256}: "
                            f"delete the file to download it again")
        return str(path)

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the weights cache folder {folder}: {e.strerror or e}") from None
    logger.info(f"downloading {url} to {path}")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            digest, size, expected = _fetch(url, f)
            f.flush()
            os.fsync(f.fileno())
        if expected is not None and size != expected:
            raise UserError(f"cannot download {url}: the transfer stopped after {size} of {expected} bytes; "
                            f"run again, or {by_hand}")
        if sha256 is not None and digest != sha256:
            raise UserError(f"cannot download {url}: the file's sha256 is {digest}, expected {sha256} (a damaged "
                            f"or changed file); {by_hand}")
        os.replace(tmp, path)
    except (urllib.error.URLError, HTTPException, OSError) as e:
        raise UserError(f"cannot download {url}: {_reason(e)}; {by_hand}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return str(path)


def _fetch(url, f):
    """Stream ``url`` into the open file ``f`` with a progress bar; returns (sha256 hex, bytes, Content-Length)."""
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "focalnet_det"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        h, size = hashlib.sha256(), 0
        with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=url.rsplit("/", 1)[-1],
                  leave=False) as bar:
            # read() returns b"" when the server closes early (http.client does not raise): the caller
            # compares the byte count with Content-Length
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                f.write(chunk)
                h.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
    return h.hexdigest(), size, expected


def _reason(e):
    """One line for a failed transfer: the HTTP status, or the network error's reason."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        reason = e.reason
        return reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
    return f"{type(e).__name__}: {e}".splitlines()[0]
