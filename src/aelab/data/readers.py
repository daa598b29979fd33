"""File formats: IDX (plain or gzip), .npy/.npz without unpickling, and folders of images.

`read_idx` and `read_arrays` turn a path or bytes into numpy arrays as stored; `_as_images`
and `_as_labels` check those arrays and bring them to (N, C, H, W) pixels and (N,) labels.
Anything wrong with a file raises `DataError` with one line that names the problem and the fix.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import os
import struct
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from aelab.errors import DataError

logger = logging.getLogger(__name__)

# Float pixels above this are not an image intensity in any convention (0..1, 0..255, 16-bit).
MAX_PIXEL_VALUE = 1e6
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_KEYS = ("x", "images", "arr_0")
LABEL_KEYS = ("y", "labels")

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); values are big-endian.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")

# What can go wrong inside a zip archive or a .npy header that is not our bug.
_ARCHIVE_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    struct.error,
    zlib.error,
    zipfile.BadZipFile,
    NotImplementedError,  # zipfile: unsupported compression method
    RuntimeError,  # zipfile: encrypted member
    UnicodeDecodeError,
    SyntaxError,
    tokenize.TokenError,  # numpy's header parser on mangled header text
    TypeError,  # likewise
    OverflowError,
    MemoryError,
)


@contextlib.contextmanager
def _numpy_header_quiet() -> Iterator[None]:
    # numpy warns when a header needs the Python 2 fallback parser, which mangled headers
    # also trigger; the header checks that follow decide whether the file is usable.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Reading `.npy` or `.npz` file required additional header parsing")
        yield


def read_idx(path_or_bytes: str | os.PathLike[str] | bytes, name: str | None = None) -> np.ndarray:
    """The array stored in an IDX file (the MNIST format), gzip-compressed or plain.

    Accepts a path or the file's bytes; `name` labels error messages (default: the file name).
    Returns a writable array in native byte order, shape as the IDX header gives it.
    """
    data, name = _read_source(path_or_bytes, name, default_name="IDX data")
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(
                f"{name}: the gzip data is truncated or corrupt ({error}); download the file again"
            ) from None
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise DataError(
            f"{name}: not an IDX file (it starts with {data[:4].hex(' ') or 'nothing'}, an IDX file starts "
            "with 00 00 <type> <dimensions>); check that it is the right file"
        )
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02X} ({dtype.name})" for code, dtype in IDX_DTYPES.items())
        raise DataError(f"{name}: IDX type code 0x{type_code:02X} is not one of {known}; the file is corrupt")
    if ndim == 0:
        raise DataError(f"{name}: IDX header says 0 dimensions; the file is corrupt")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{name}: IDX header is cut short ({len(data)} bytes, needs {header_size}); download it again")
    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = IDX_DTYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize
    held = len(data) - header_size
    if held != expected:
        fix = (
            "the file is truncated, download it again" if held < expected else "the file is corrupt, download it again"
        )
        raise DataError(
            f"{name}: IDX says {'x'.join(map(str, dims))} = {expected} bytes but the file holds {held}; {fix}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # astype copies: writable, native order


def read_arrays(
    source: str | os.PathLike[str] | bytes,
    name: str | None = None,
    image_keys: Sequence[str] = IMAGE_KEYS,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Images and optional labels from a .npy or .npz file (path or bytes), never unpickling.

    .npy: the array is the images, there are no labels. .npz: images under the first of
    `image_keys` present, labels under "y" or "labels" if present. Arrays come back as stored
    (any numeric dtype and shape); `load_dataset` checks shapes and pixel values.
    """
    data_or_path, name = _binary_source(source, name)
    with _open_binary(data_or_path, name) as (stream, size):
        magic = stream.read(len(NPY_MAGIC))
        stream.seek(0)
        if magic.startswith(NPY_MAGIC):
            return _read_npy(stream, size, name), None
        if magic[:4] in ZIP_MAGICS:
            return _read_npz(stream, name, image_keys)
        if magic[:1] == b"\x80":  # pickle protocol 2+ opcode
            raise DataError(
                f"{name}: this is a Python pickle, which aelab never loads (unpickling can run code); "
                "save the images with np.save or np.savez"
            )
        raise DataError(
            f"{name}: not a .npy or .npz file (it starts with {magic[:6].hex(' ') or 'nothing'}); "
            "save the images with np.save or np.savez"
        )


def _as_images(array: np.ndarray, where: str) -> tuple[np.ndarray, float]:
    """(N, C, H, W) pixels and their scale under scale="auto".

    Accepts (N, H, W); (N, H, W, C) with C <= 4 (channels last) or (N, C, H, W) with C <= 4;
    (N, D) as (1, s, s) when D = s*s, else (1, 1, D). Integer pixels in 0..255 become uint8
    (scale 1/255), integer pixels up to 65535 become float32 (scale 1/65535), float and bool
    pixels become float32 (scale 1.0). Refuses empty arrays, NaN/Inf, negative pixels and
    values over MAX_PIXEL_VALUE.
    """
    if array.dtype.hasobject:
        raise _pickle_error(where)
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where}: pixels have dtype {array.dtype}, not numbers; save the images as uint8 or float")
    if array.size == 0:
        raise DataError(f"{where}: the array is empty (shape {array.shape}); it holds no images")
    if array.ndim == 2:
        count, width = array.shape
        side = math.isqrt(width)
        array = array.reshape(count, 1, side, side) if side * side == width else array.reshape(count, 1, 1, width)
    elif array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4:
        if array.shape[3] <= 4:
            array = array.transpose(0, 3, 1, 2)
        elif array.shape[1] > 4:
            raise DataError(
                f"{where}: a 4-d array of shape {array.shape} has no channel axis of size 1-4; "
                "save images as (N, H, W, C) with C the channels"
            )
    else:
        raise DataError(
            f"{where}: images must be (N, H, W), (N, H, W, C) or (N, D), got a {array.ndim}-d array "
            f"of shape {array.shape}"
        )
    count = array.shape[0]
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            bad_images = np.flatnonzero(~finite.reshape(count, -1).all(axis=1))
            raise DataError(
                f"{where}: {int((~finite).sum())} pixels are NaN or Inf (first in image {bad_images[0]}); "
                "fix or remove those images"
            )
    low, high = array.min().item(), array.max().item()
    if low < 0:
        raise DataError(
            f"{where}: pixels must not be negative, found {low:g}; shift and rescale the images to 0..1 or 0..255"
        )
    if array.dtype.kind == "f":
        if high > MAX_PIXEL_VALUE:
            raise DataError(
                f"{where}: pixel values reach {high:g}, over {MAX_PIXEL_VALUE:g}, which is no image range; "
                "rescale the images to 0..1 or 0..255"
            )
        if high > 1.0:
            logger.info("%s: float pixels reach %g and are used as they are (scale 1.0)", where, high)
        return np.ascontiguousarray(array, dtype=np.float32), 1.0
    if array.dtype.kind == "b":
        return np.ascontiguousarray(array, dtype=np.float32), 1.0
    if high <= 255:
        return np.ascontiguousarray(array, dtype=np.uint8), 1.0 / 255.0
    if high <= 65535:
        return np.ascontiguousarray(array, dtype=np.float32), 1.0 / 65535.0
    raise DataError(
        f"{where}: integer pixels reach {high}, above 16-bit (65535); rescale the images to 0..255 or save as float"
    )


def _as_labels(labels: np.ndarray, count: int, where: str) -> np.ndarray:
    """(N,) int64 labels, one per image."""
    if labels.dtype.hasobject:
        raise _pickle_error(where)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must be a 1-d array of class numbers, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    if len(labels) != count:
        raise DataError(f"{where}: {len(labels)} labels for {count} images; give exactly one label per image")
    return labels.astype(np.int64)


def _pickle_error(where: str) -> DataError:
    return DataError(
        f"{where}: holds Python objects (dtype object), which would need pickle, and aelab never "
        "unpickles (it can run code); save plain numeric arrays"
    )


def _read_images(files: list[Path]) -> tuple[np.ndarray, bool]:
    """(N, H, W, 3) uint8 pixels of same-sized images, and whether they are all grayscale."""
    from PIL import Image  # deferred: only the folder dataset needs Pillow

    errors = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
    first: tuple[Path, tuple[int, int]] | None = None
    grayscale = True
    for file in files:
        try:
            with Image.open(file) as image:
                size, mode = image.size, image.mode
        except errors as error:
            raise DataError(f"{file}: not a readable image ({error}); fix or remove it") from None
        if first is None:
            first = (file, size)
        elif size != first[1]:
            raise DataError(
                f"{file} is {size[0]}x{size[1]} but {first[0]} is {first[1][0]}x{first[1][1]}; "
                "all images must have the same size, resize them first"
            )
        grayscale = grayscale and mode in ("L", "1")
    assert first is not None
    width, height = first[1]
    pixels = np.empty((len(files), height, width, 3), dtype=np.uint8)
    for index, file in enumerate(files):
        try:
            with Image.open(file) as image:
                pixels[index] = np.asarray(image.convert("RGB"))
        except errors as error:
            raise DataError(f"{file}: not a readable image ({error}); fix or remove it") from None
    return pixels, grayscale


def _read_source(source: str | os.PathLike[str] | bytes, name: str | None, default_name: str) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or default_name
    path = Path(source)
    try:
        return path.read_bytes(), name or path.name
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; check the path") from None
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error}); check the path") from None


def _binary_source(source: str | os.PathLike[str] | bytes, name: str | None) -> tuple[bytes | Path, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "array data"
    path = Path(source)
    return path, name or path.name


@contextlib.contextmanager
def _open_binary(source: bytes | Path, name: str) -> Iterator[tuple[IO[bytes], int]]:
    """A seekable binary stream over bytes or a file, and its size in bytes."""
    if isinstance(source, bytes):
        yield io.BytesIO(source), len(source)
        return
    try:
        stream = open(source, "rb")  # noqa: SIM115 - closed below, after the caller is done
    except FileNotFoundError:
        raise DataError(f"{source}: no such file; check the path") from None
    except OSError as error:
        raise DataError(f"{source}: cannot be read ({error.strerror or error}); check the path") from None
    with stream:
        yield stream, os.fstat(stream.fileno()).st_size


def _check_npy_header(stream: IO[bytes], size: int, name: str) -> None:
    """Check a .npy header against the bytes that follow it, so that a corrupt header can
    neither allocate a huge array nor unpickle. Leaves `stream` where it started."""
    start = stream.tell()
    try:
        with _numpy_header_quiet():
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
            else:  # 2.0 and 3.0 share the layout; 3.0 only allows UTF-8 in field names
                shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    except _ARCHIVE_ERRORS as error:
        raise DataError(f"{name}: not a valid .npy file ({_first_line(error)}); save it again with np.save") from None
    if dtype.hasobject:
        raise _pickle_error(name)
    if dtype.kind not in "biuf":
        raise DataError(f"{name}: pixels have dtype {dtype}, not numbers; save the images as uint8 or float")
    if any(dim < 0 for dim in shape):
        raise DataError(f"{name}: the header gives a negative shape {shape}; the file is corrupt, save it again")
    expected = math.prod(shape) * dtype.itemsize
    held = size - (stream.tell() - start)
    if held < expected:
        raise DataError(
            f"{name}: the header says {shape} {dtype} = {expected} bytes but the file holds {held}; "
            "the file is truncated, save or copy it again"
        )
    stream.seek(start)


def _read_npy(stream: IO[bytes], size: int, name: str) -> np.ndarray:
    _check_npy_header(stream, size, name)
    try:
        with _numpy_header_quiet():
            return np.load(stream, allow_pickle=False)
    except _ARCHIVE_ERRORS as error:
        raise DataError(f"{name}: not a valid .npy file ({_first_line(error)}); save it again with np.save") from None


def _read_npz(stream: IO[bytes], name: str, image_keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(stream, allow_pickle=False) as archive:
            keys = list(archive.files)
            image_key = next((key for key in image_keys if key in keys), None)
            if image_key is None:
                raise DataError(
                    f"{name}: no images under {', '.join(repr(k) for k in image_keys)}; keys found: "
                    f"{', '.join(keys) or 'none'}; save with np.savez(path, x=images, y=labels)"
                )
            label_key = next((key for key in LABEL_KEYS if key in keys), None)
            images = _read_npz_member(archive, image_key, name)
            labels = None if label_key is None else _read_npz_member(archive, label_key, name)
    except _ARCHIVE_ERRORS as error:
        raise DataError(f"{name}: not a valid .npz file ({_first_line(error)}); save it again with np.savez") from None
    return images, labels


def _read_npz_member(archive: np.lib.npyio.NpzFile, key: str, name: str) -> np.ndarray:
    member = f"{key}.npy" if f"{key}.npy" in archive.zip.namelist() else key
    where = f"{name}[{key!r}]"
    info = archive.zip.getinfo(member)
    with archive.zip.open(member) as stream:
        if stream.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise DataError(f"{where}: not a .npy array inside the archive; save the file with np.savez")
    with archive.zip.open(member) as stream:
        _check_npy_header(stream, info.file_size, where)
    try:
        with _numpy_header_quiet():
            return archive[key]
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise _pickle_error(where) from None
        raise


def _read_any(path: Path, image_keys: Sequence[str]) -> np.ndarray:
    """One array from an IDX (gzip or plain) or .npz/.npy file, sniffed by content."""
    with _open_binary(path, path.name) as (stream, _):
        head = stream.read(len(NPY_MAGIC))
    if head.startswith(NPY_MAGIC) or head[:4] in ZIP_MAGICS:
        return read_arrays(path, image_keys=image_keys)[0]
    return read_idx(path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
