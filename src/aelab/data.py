"""Image datasets: the registry, the readers and the pixels-to-inputs step.

`load_dataset(config)` turns a `DataConfig` into an `ImageData`: train and validation images
as (N, C, H, W) tensors in their stored dtype (uint8 when the source was uint8, else float32)
plus the `scale` that maps stored values to model inputs. `prepare_batch` applies that scale
and the optional binarisation to one batch, so the full dataset never exists twice in float.

Every dataset is an entry of `DATASETS`. The downloadable ones keep their mirrors and md5s in
their `DatasetSpec`, so a test can point them at a local server. Anything wrong with the
user's data raises `DataError` with one line that names the problem and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import importlib.resources
import io
import logging
import math
import os
import struct
import tempfile
import tokenize
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import platformdirs
import torch

from aelab.config import BINARIZE_MODES, DataConfig
from aelab.errors import DataError

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "ImageData",
    "RemoteFile",
    "data_cache_dir",
    "download",
    "load_dataset",
    "prepare_batch",
    "read_arrays",
    "read_idx",
]

logger = logging.getLogger(__name__)

# Float pixels above this are not an image intensity in any convention (0..1, 0..255, 16-bit).
MAX_PIXEL_VALUE = 1e6
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_KEYS = ("x", "images", "arr_0")
LABEL_KEYS = ("y", "labels")
DOWNLOAD_TIMEOUT_S = 60.0

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


@dataclass(frozen=True)
class ImageData:
    """A dataset ready for training.

    train: (N, C, H, W) stored pixels, uint8 when the source was uint8, else float32.
    val: (M, C, H, W) validation pixels, same dtype and image shape.
    train_labels / val_labels: (N,) / (M,) int64 class labels, or None when there are none.
    scale: multiply stored values by this to get model inputs (1/255 for 0..255 uint8 under
        scale="auto", 1.0 under scale="none").
    source: one line saying where the images came from.
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    train_labels: torch.Tensor | None
    val_labels: torch.Tensor | None
    scale: float
    source: str

    def __post_init__(self) -> None:
        for split in ("train", "val"):
            images = getattr(self, split)
            if images.ndim != 4 or images.shape[0] == 0:
                raise DataError(
                    f"{self.name}: {split} images must be a non-empty (N, C, H, W) tensor, got {tuple(images.shape)}"
                )
            labels = getattr(self, f"{split}_labels")
            if labels is not None and tuple(labels.shape) != (images.shape[0],):
                raise DataError(
                    f"{self.name}: {split} has {images.shape[0]} images but labels of shape {tuple(labels.shape)}"
                )
        if self.train.shape[1:] != self.val.shape[1:] or self.train.dtype != self.val.dtype:
            raise DataError(
                f"{self.name}: train images are {tuple(self.train.shape[1:])} {self.train.dtype} but validation images "
                f"are {tuple(self.val.shape[1:])} {self.val.dtype}; both splits must match"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        channels, height, width = self.train.shape[1:]
        return int(channels), int(height), int(width)

    @property
    def num_pixels(self) -> int:
        """Values per image: C * H * W."""
        return math.prod(self.image_shape)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a downloadable dataset.

    role: "train_images", "train_labels", "val_images" or "val_labels".
    md5: the published checksum, or None where none is published (the reader then checks
        the contents: zip CRCs and the expected image shape).
    """

    role: str
    filename: str
    md5: str | None


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: what it is, where it comes from and how to read it.

    shape: (C, H, W) of its images, None for user data whose shape is only known once read.
    read: builds the full `ImageData` (no limits applied, scale as for scale="auto").
    mirrors: base URLs tried in order; a file's URL is mirror + filename.
    files: the files to download into `data_cache_dir() / name`.
    """

    name: str
    description: str
    source: str
    shape: tuple[int, int, int] | None
    read: Callable[[DatasetSpec, DataConfig], ImageData]
    mirrors: tuple[str, ...] = ()
    files: tuple[RemoteFile, ...] = ()

    def load(self, config: DataConfig) -> ImageData:
        """The whole dataset as stored; `load_dataset` applies limits and scale on top."""
        return self.read(self, config)


# ---------------------------------------------------------------------------------------------
# Public entry points


def load_dataset(config: DataConfig) -> ImageData:
    """Read the dataset `config.name`, keep the first train_limit / val_limit images of each
    split and set `scale` (1.0 under scale="none": raw stored values go to the model)."""
    spec = DATASETS.get(config.name)
    if spec is None:
        raise DataError(f"unknown dataset {config.name!r}; valid names: {', '.join(DATASETS)}")
    data = spec.load(config)
    if spec.shape is not None and data.image_shape != spec.shape:
        raise DataError(
            f"{config.name}: images are {_shape_text(data.image_shape)} but {config.name} images are "
            f"{_shape_text(spec.shape)}; the files are not {config.name}, replace them"
        )
    changes: dict[str, object] = {}
    if config.scale == "none":
        changes["scale"] = 1.0
    for split, limit in (("train", config.train_limit), ("val", config.val_limit)):
        if limit is not None and limit < getattr(data, split).shape[0]:
            # clone() so that a small subset does not keep the whole dataset alive.
            changes[split] = getattr(data, split)[:limit].clone()
            labels = getattr(data, f"{split}_labels")
            if labels is not None:
                changes[f"{split}_labels"] = labels[:limit].clone()
    return dataclasses.replace(data, **changes) if changes else data


def prepare_batch(
    stored: torch.Tensor,
    scale: float,
    binarize: str = "none",
    threshold: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Model inputs for one batch: float32 `stored * scale`, optionally binarised.

    binarize: "none"; "threshold": 1.0 where the scaled pixel > threshold, else 0.0;
        "bernoulli": each pixel is 1.0 with probability clamp(pixel, 0, 1), drawn with
        `generator` (which must live on the same device as `stored`).
    Returns a new tensor of the same shape as `stored`; `stored` is never modified.
    """
    if binarize not in BINARIZE_MODES:
        raise DataError(f"binarize must be one of {', '.join(BINARIZE_MODES)}, got {binarize!r}")
    inputs = stored.float() * scale
    if binarize == "threshold":
        return (inputs > threshold).float()
    if binarize == "bernoulli":
        return torch.bernoulli(inputs.clamp(0.0, 1.0), generator=generator)
    return inputs


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


# ---------------------------------------------------------------------------------------------
# Readers behind the registry


def _read_bundled_mnist(spec: DatasetSpec, config: DataConfig) -> ImageData:
    bundled = importlib.resources.files("aelab").joinpath("bundled")
    names = {file.role: file.filename for file in spec.files}
    images = read_idx(bundled.joinpath(names["val_images"]).read_bytes(), names["val_images"])
    labels = read_idx(bundled.joinpath(names["val_labels"]).read_bytes(), names["val_labels"])
    images, scale = _as_images(images, names["val_images"])
    labels = _as_labels(labels, len(images), names["val_labels"])
    n_train = 8000  # fixed split of MNIST's 10,000 test images: 0..7999 train, 8000..9999 validation
    return _image_data(
        spec.name,
        images[:n_train],
        images[n_train:],
        labels[:n_train],
        labels[n_train:],
        scale,
        f"MNIST test set bundled with aelab ({names['val_images']}): images 0-{n_train - 1} train, "
        f"{n_train}-{len(images) - 1} validation",
    )


def _read_digits(spec: DatasetSpec, config: DataConfig) -> ImageData:
    from sklearn.datasets import load_digits  # deferred: importing scikit-learn takes a while

    digits = load_digits()
    images = np.asarray(digits.images).astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    labels = np.asarray(digits.target, dtype=np.int64)
    n_train = _train_count(len(images), 0.2, spec.name)
    return _image_data(
        spec.name,
        images[:n_train],
        images[n_train:],
        labels[:n_train],
        labels[n_train:],
        1.0 / 16.0,  # the digits are 4-bit counts of set pixels in 4x4 blocks, 0..16
        f"scikit-learn load_digits(): images 0-{n_train - 1} train, {n_train}-{len(images) - 1} validation",
    )


def _read_downloadable(spec: DatasetSpec, config: DataConfig) -> ImageData:
    paths = _find_or_download(spec, config)
    splits = {}
    for split in ("train", "val"):
        images_path, labels_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        images = _read_any(images_path, ("arr_0",))
        labels = _read_any(labels_path, ("arr_0",))
        images, scale = _as_images(images, images_path.name)
        splits[split] = (images, _as_labels(labels, len(images), labels_path.name))
    folder = paths["train_images"].parent
    return _image_data(
        spec.name,
        splits["train"][0],
        splits["val"][0],
        splits["train"][1],
        splits["val"][1],
        scale,
        f"{spec.name} from {folder}: {len(splits['train'][0])} train images, "
        f"{len(splits['val'][0])} test images as validation",
    )


def _read_array_dataset(spec: DatasetSpec, config: DataConfig) -> ImageData:
    path = _user_path(config, want_folder=False)
    images, labels = read_arrays(path)
    images, scale = _as_images(images, path.name)
    if labels is not None:
        labels = _as_labels(labels, len(images), f"{path.name} labels")
    n_train = _train_count(len(images), config.val_fraction, path.name)
    return _image_data(
        spec.name,
        images[:n_train],
        images[n_train:],
        None if labels is None else labels[:n_train],
        None if labels is None else labels[n_train:],
        scale,
        f"{path}: first {n_train} images train, last {len(images) - n_train} validation",
    )


def _read_folder_dataset(spec: DatasetSpec, config: DataConfig) -> ImageData:
    root = _user_path(config, want_folder=True)
    entries = sorted(entry for entry in root.iterdir() if not entry.name.startswith("."))
    class_folders = [entry for entry in entries if entry.is_dir()]
    if class_folders:
        loose = [entry.name for entry in entries if not entry.is_dir()]
        if loose:
            raise DataError(
                f"{root}: holds class subfolders and loose files ({', '.join(loose[:3])}); "
                "move every image into a class subfolder"
            )
        groups = [
            (folder.name, sorted(e for e in folder.iterdir() if not e.name.startswith("."))) for folder in class_folders
        ]
    else:
        groups = [("", entries)]
    for folder_name, files in groups:
        where = root / folder_name
        for file in files:
            if file.is_dir():
                raise DataError(f"{file}: class folders cannot hold subfolders; keep images one level deep")
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{file}: not a PNG or JPEG image; remove it or move it out of {where}")
        if not files:
            raise DataError(f"{where}: holds no PNG or JPEG images")
    pixels, grayscale = _read_images([file for _, files in groups for file in files])
    pixels = pixels.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    if grayscale:
        pixels = pixels[:, :1]
    pixels = np.ascontiguousarray(pixels)
    # Split each class on its own, so that validation holds every class and not just the last ones.
    train_parts, val_parts, train_labels, val_labels = [], [], [], []
    start = 0
    for label, (folder_name, files) in enumerate(groups):
        count = len(files)
        n_train = _train_count(count, config.val_fraction, str(root / folder_name))
        train_parts.append(pixels[start : start + n_train])
        val_parts.append(pixels[start + n_train : start + count])
        train_labels.append(np.full(n_train, label, dtype=np.int64))
        val_labels.append(np.full(count - n_train, label, dtype=np.int64))
        start += count
    has_classes = bool(class_folders)
    mode = "grayscale" if grayscale else "RGB"
    split = (
        f"{len(groups)} classes by subfolder, the last {config.val_fraction:g} of each"
        if has_classes
        else (f"the last {config.val_fraction:g}")
    )
    return _image_data(
        spec.name,
        np.concatenate(train_parts),
        np.concatenate(val_parts),
        np.concatenate(train_labels) if has_classes else None,
        np.concatenate(val_labels) if has_classes else None,
        1.0 / 255.0,
        f"{root}: {len(pixels)} {mode} images, {split} as validation",
    )


# ---------------------------------------------------------------------------------------------
# Helpers


def _image_data(
    name: str,
    train: np.ndarray,
    val: np.ndarray,
    train_labels: np.ndarray | None,
    val_labels: np.ndarray | None,
    scale: float,
    source: str,
) -> ImageData:
    return ImageData(
        name=name,
        train=_to_tensor(train),
        val=_to_tensor(val),
        train_labels=None if train_labels is None else _to_tensor(train_labels),
        val_labels=None if val_labels is None else _to_tensor(val_labels),
        scale=scale,
        source=source,
    )


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # torch warns on read-only arrays
        array = array.copy()
    return torch.from_numpy(array)


def _train_count(count: int, val_fraction: float, where: str) -> int:
    """Images in the training split: the first floor(count * (1 - val_fraction)), at least one
    image in each split."""
    if count < 2:
        raise DataError(f"{where}: holds {count} image; need at least 2 (one to train on, one to validate)")
    n_train = math.floor(round(count * (1.0 - val_fraction), 6))
    return min(max(n_train, 1), count - 1)


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


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


def _user_path(config: DataConfig, want_folder: bool) -> Path:
    kind = "a folder of PNG/JPEG images" if want_folder else "a .npy or .npz file"
    if not config.path:
        raise DataError(f"dataset {config.name!r} needs data.path: {kind}")
    path = Path(config.path).expanduser()
    if not path.exists():
        raise DataError(f"data.path {path} does not exist; give {kind}")
    if want_folder and not path.is_dir():
        raise DataError(f"data.path {path} is a file; dataset 'folder' needs {kind} (use dataset 'array' for arrays)")
    if not want_folder and path.is_dir():
        raise DataError(f"data.path {path} is a folder; dataset 'array' needs {kind} (use dataset 'folder' for images)")
    return path


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


def _find_or_download(spec: DatasetSpec, config: DataConfig) -> dict[str, Path]:
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


# ---------------------------------------------------------------------------------------------
# The registry

_MNIST_FILES = (
    RemoteFile("train_images", "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    RemoteFile("train_labels", "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    RemoteFile("val_images", "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    RemoteFile("val_labels", "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="mnist-10k",
            description="the 10,000 MNIST test digits bundled with aelab, 28x28 gray: 8,000 train, 2,000 validation",
            source="MNIST test set (LeCun, Cortes, Burges), shipped in aelab/bundled",
            shape=(1, 28, 28),
            read=_read_bundled_mnist,
            files=_MNIST_FILES[2:],
        ),
        DatasetSpec(
            name="digits",
            description="scikit-learn's 1,797 8x8 digits, values 0..16: 1,437 train, 360 validation",
            source="sklearn.datasets.load_digits (UCI optical recognition of handwritten digits)",
            shape=(1, 8, 8),
            read=_read_digits,
        ),
        DatasetSpec(
            name="mnist",
            description="MNIST handwritten digits, 28x28 gray: 60,000 train, 10,000 test as validation (11 MB)",
            source="http://yann.lecun.com/exdb/mnist/ (LeCun, Cortes, Burges)",
            shape=(1, 28, 28),
            read=_read_downloadable,
            mirrors=(
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "https://storage.googleapis.com/cvdf-datasets/mnist/",
                "http://yann.lecun.com/exdb/mnist/",
            ),
            files=_MNIST_FILES,
        ),
        DatasetSpec(
            name="fashion-mnist",
            description="Fashion-MNIST clothing, 28x28 gray: 60,000 train, 10,000 test as validation (download 30 MB)",
            source="https://github.com/zalandoresearch/fashion-mnist (Xiao, Rasul, Vollgraf 2017)",
            shape=(1, 28, 28),
            read=_read_downloadable,
            mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            files=(
                RemoteFile("train_images", "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                RemoteFile("train_labels", "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
                RemoteFile("val_images", "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
                RemoteFile("val_labels", "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
            ),
        ),
        DatasetSpec(
            name="kmnist",
            description="Kuzushiji-MNIST cursive Japanese, 28x28 gray: 60,000 train, 10,000 test as validation "
            "(download 21 MB)",
            source="https://github.com/rois-codh/kmnist (Clanuwat et al. 2018)",
            shape=(1, 28, 28),
            read=_read_downloadable,
            mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
            # No md5 is published for the .npz files; zip CRCs and the 28x28 shape check guard them.
            files=(
                RemoteFile("train_images", "kmnist-train-imgs.npz", None),
                RemoteFile("train_labels", "kmnist-train-labels.npz", None),
                RemoteFile("val_images", "kmnist-test-imgs.npz", None),
                RemoteFile("val_labels", "kmnist-test-labels.npz", None),
            ),
        ),
        DatasetSpec(
            name="array",
            description="your images in a .npy or .npz file (data.path); the last val_fraction is validation",
            source="data.path",
            shape=None,
            read=_read_array_dataset,
        ),
        DatasetSpec(
            name="folder",
            description="your PNG/JPEG images in a folder (data.path), one subfolder per class if labelled",
            source="data.path",
            shape=None,
            read=_read_folder_dataset,
        ),
    )
}
