"""Downloads: the cache folder, md5-checked fetches, and finding a dataset's files locally.

`_find_or_download` takes the files from data.data_dir when it is set (never downloading),
else from `data_cache_dir()`, downloading what is missing or fails its md5.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Protocol

import platformdirs

from aelab.config import DataConfig
from aelab.data.readers import _first_line
from aelab.errors import DataError

logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60.0


class _RemoteFile(Protocol):
    """What a download needs to know of one file (`aelab.data.RemoteFile` is one)."""

    @property
    def role(self) -> str: ...
    @property
    def filename(self) -> str: ...
    @property
    def md5(self) -> str | None: ...


class _Downloadable(Protocol):
    """What a download needs to know of a dataset (`aelab.data.DatasetSpec` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def mirrors(self) -> Sequence[str]: ...
    @property
    def files(self) -> Sequence[_RemoteFile]: ...


def data_cache_dir() -> Path:
    """Where downloaded datasets live: $AELAB_DATA_DIR, else the user cache folder for aelab."""
    override = os.environ.get("AELAB_DATA_DIR")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("aelab"))


def download(url_list: Sequence[str], dest: Path, md5: str | None) -> Path:
    """Fetch one file to `dest`, trying each URL in order; returns `dest`.

    The bytes go to a temporary name beside `dest` and are renamed into place only once
    their md5 matches (md5=None skips the check), so `dest` never holds a partial or wrong
    file. Raises DataError naming each URL's failure when no URL gives a good copy.
    """
    dest = Path(dest)
    urls = [url_list] if isinstance(url_list, str) else list(url_list)
    if not urls:
        raise DataError(f"{dest.name}: no download URLs are known for it; download it yourself and set data.data_dir")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"cannot create the download folder {dest.parent} ({error.strerror or error}); "
            "set AELAB_DATA_DIR to a writable folder"
        ) from None
    failures = []
    for url in urls:
        logger.info("downloading %s from %s", dest.name, url)
        try:
            handle, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as error:
            raise DataError(
                f"cannot write to the download folder {dest.parent} ({error.strerror or error}); "
                "set AELAB_DATA_DIR to a writable folder"
            ) from None
        temp = Path(temp_name)
        try:
            with os.fdopen(handle, "wb") as out:
                digest = _fetch(url, out)
            if md5 is not None and digest != md5.lower():
                failures.append(f"{url}: md5 is {digest}, expected {md5}")
                continue
            os.replace(temp, dest)
            return dest
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
            failures.append(f"{url}: {_describe_url_error(error)}")
        finally:
            temp.unlink(missing_ok=True)
    raise DataError(
        f"{dest.name}: could not download a good copy ({'; '.join(failures)}); check the network, "
        f"or download the file yourself and set data.data_dir to its folder"
    )


def _find_or_download(spec: _Downloadable, config: DataConfig) -> dict[str, Path]:
    """The local path of each of `spec.files`: from data.data_dir when set (never downloading),
    else from the cache, downloading what is missing or fails its md5."""
    if config.data_dir:
        folder = Path(config.data_dir).expanduser()
        if not folder.is_dir():
            raise DataError(
                f"data.data_dir {folder} is not a folder; point it at the folder holding the {spec.name} files"
            )
        found, missing = {}, []
        for file in spec.files:
            names = [file.filename, file.filename.removesuffix(".gz")]
            candidates = [place / n for place in (folder, folder / spec.name) for n in names]
            path = next((c for c in candidates if c.is_file()), None)
            if path is None:
                missing.append(file.filename)
            else:
                found[file.role] = path
        if missing:
            raise DataError(
                f"data.data_dir {folder} lacks {', '.join(missing)} for {spec.name}; put the standard files "
                f"there, or unset data.data_dir to download them into {data_cache_dir() / spec.name}"
            )
        return found
    folder = data_cache_dir() / spec.name
    paths = {}
    for file in spec.files:
        path = folder / file.filename
        if path.is_file() and (file.md5 is None or _md5(path) == file.md5):
            paths[file.role] = path
            continue
        if path.is_file():
            logger.warning("%s fails its md5 check; downloading it again", path)
        paths[file.role] = download([mirror + file.filename for mirror in spec.mirrors], path, file.md5)
    return paths


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, out: IO[bytes]) -> str:
    """Stream `url` into `out`; returns the md5 of the bytes written."""
    digest = hashlib.md5(usedforsecurity=False)
    request = urllib.request.Request(url, headers={"User-Agent": "aelab"})
    received = 0
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        for block in iter(lambda: response.read(1 << 16), b""):
            out.write(block)
            digest.update(block)
            received += len(block)
    if length is not None and length.isdigit() and received != int(length):
        raise OSError(f"got {received} of {length} bytes")
    return digest.hexdigest()


def _describe_url_error(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return _first_line(error)
