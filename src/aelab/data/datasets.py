"""The dataset registry: `DATASETS`, its loaders, `load_dataset` and `prepare_batch`.

`load_dataset(config)` turns a `DataConfig` into an `ImageData`: train and validation images
as (N, C, H, W) tensors in their stored dtype (uint8 when the source was uint8, else float32)
plus the `scale` that maps stored values to model inputs. `prepare_batch` applies that scale
and the optional binarisation to one batch, so the full dataset never exists twice in float.

Every dataset is an entry of `DATASETS`. The downloadable ones keep their mirrors and md5s in
their `DatasetSpec`, so a test can point them at a local server. Anything wrong with the
user's data raises `DataError` with one line that names the problem and the fix.

Images passed from Python (`aelab.train(config, out, data=images)`) are the dataset
"in-memory": it has no loader, and a run records them by `data_fingerprint` (dtype, split,
shape, sha256) so that `data_for_run` can recognise the same images when they are passed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aelab.config import BINARIZE_MODES, DEFAULT_VAL_FRACTION, DataConfig
from aelab.data.download import _find_or_download
from aelab.data.readers import (
    IMAGE_SUFFIXES,
    _as_images,
    _as_labels,
    _read_any,
    _read_images,
    read_arrays,
    read_idx,
)
from aelab.errors import DataError


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
    user_data: reads the user's data.path and splits it by data.val_fraction (the other
        datasets come with their own split and refuse both keys).
    """

    name: str
    description: str
    source: str
    shape: tuple[int, int, int] | None
    read: Callable[[DatasetSpec, DataConfig], ImageData]
    mirrors: tuple[str, ...] = ()
    files: tuple[RemoteFile, ...] = ()
    user_data: bool = False

    def load(self, config: DataConfig) -> ImageData:
        """The whole dataset as stored; `load_dataset` applies limits and scale on top."""
        return self.read(self, config)


# ---------------------------------------------------------------------------------------------
# Public entry points


def check_data_config(config: DataConfig) -> None:
    """The checks of a `DataConfig` that need the registry: the dataset exists, and every key
    set is one it reads (data.path and data.val_fraction for user data, data.data_dir for the
    downloadable datasets). Raises DataError naming the key and what to do."""
    spec = DATASETS.get(config.name)
    if spec is None:
        raise DataError(f"unknown dataset {config.name!r}; valid names: {', '.join(DATASETS)}")
    user = ", ".join(name for name, other in DATASETS.items() if other.user_data)
    if config.path is not None and not spec.user_data:
        raise DataError(
            f"data.path is read by the datasets {user} only, and {config.name} does not read it: drop data.path "
            "or set data.name to array (a .npy/.npz file) or folder (PNG/JPEG images)"
        )
    if config.val_fraction is not None and not spec.user_data:
        raise DataError(
            f"data.val_fraction splits user data ({user}); {config.name} comes with its own train/validation "
            "split: drop data.val_fraction (data.train_limit and data.val_limit take fewer images)"
        )
    if config.data_dir is not None and not spec.mirrors:
        downloadable = ", ".join(name for name, other in DATASETS.items() if other.mirrors)
        raise DataError(
            f"data.data_dir is read by the downloadable datasets {downloadable} only, and {config.name} does not "
            "read it: drop data.data_dir"
        )


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
    return _apply_limits(data, config)


ImagesLike = ImageData | torch.Tensor | np.ndarray  # what `data=` accepts


def images_from_array(images: torch.Tensor | np.ndarray, config: DataConfig) -> ImageData:
    """The dataset "in-memory" from a tensor or array of images, checked and split exactly as
    dataset "array" checks and splits a file: (N, H, W), (N, C, H, W), (N, H, W, C) or (N, D);
    uint8, integer, float or bool pixels; the last `config.val_fraction` of the images are
    validation. Limits and scale="none" are not applied here (`data_for_training` does)."""
    where = "data"
    if isinstance(images, torch.Tensor):
        tensor = images.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
            tensor = tensor.float()
        array = tensor.numpy()
    elif isinstance(images, np.ndarray):
        array = images
    else:
        raise DataError(
            f"{where} must be an aelab.ImageData, a torch tensor or a numpy array of images, got "
            f"{type(images).__name__}; pass an array of shape (N, H, W), (N, C, H, W) or (N, D)"
        )
    pixels, scale = _as_images(array, where)
    n_train = _train_count(len(pixels), _val_fraction(config), where)
    return _image_data(
        IN_MEMORY,
        pixels[:n_train],
        pixels[n_train:],
        None,
        None,
        scale,
        f"images passed in memory: first {n_train} train, last {len(pixels) - n_train} validation",
    )


def data_fingerprint(data: ImageData) -> str:
    """One line that identifies `data`: dtype, split sizes and image shape in words, and a
    sha256 over both splits, their labels and the scale."""
    digest = hashlib.sha256()
    for split in ("train", "val", "train_labels", "val_labels"):
        tensor = getattr(data, split)
        digest.update(split.encode())
        if tensor is not None:
            array = tensor.detach().cpu().contiguous().numpy()
            digest.update(f"{array.dtype} {array.shape}".encode())
            digest.update(array.reshape(-1).view(np.uint8))
    digest.update(repr(float(data.scale)).encode())
    dtype = str(data.train.dtype).removeprefix("torch.")
    return (
        f"{dtype}, {data.train.shape[0]} train + {data.val.shape[0]} validation images of "
        f"{_shape_text(data.image_shape)}, sha256 {digest.hexdigest()}"
    )


def data_for_training(config: DataConfig, data: ImagesLike | None) -> tuple[DataConfig, ImageData | None]:
    """What `aelab.train` trains on: (the DataConfig to record, the images, limits and scale of
    `config` applied), or (config, None) when the dataset is to be loaded from `config`.

    An `ImageData` named like `config.name` (as `load_dataset(config)` returns it) is that
    dataset. Anything else (a tensor, an array, another ImageData) is recorded as dataset
    "in-memory" with its fingerprint, and data.path / data.data_dir cleared."""
    if data is None:
        if config.name == IN_MEMORY:
            DATASETS[IN_MEMORY].load(config)  # raises: the images must be passed
        return config, None
    if isinstance(data, ImageData) and data.name == config.name and config.name != IN_MEMORY:
        return config, _apply_limits(data, config)
    images = _apply_limits(data if isinstance(data, ImageData) else images_from_array(data, config), config)
    recorded = dataclasses.replace(
        config,
        name=IN_MEMORY,
        path=None,
        data_dir=None,
        val_fraction=_val_fraction(config),
        fingerprint=data_fingerprint(images),
    )
    return recorded, images


def data_for_run(config: DataConfig, data: ImagesLike | None, where: str, call: str) -> ImageData:
    """The images a run folder was trained on, to evaluate, check or resume it: `config`'s
    dataset loaded, or `data` when given (limits and scale of `config` applied).

    A run on dataset "in-memory" needs its images passed: without them a DataError says so and
    names `call` (how to pass them); with them, their fingerprint must match the recorded
    `config.fingerprint`, else a DataError. `where` names the run folder in messages."""
    if data is None:
        if config.name == IN_MEMORY:
            raise DataError(
                f"{where} was trained on images passed from Python ({short_fingerprint(config.fingerprint)}), "
                f"which are not saved in the folder; pass the same images as data=, e.g. {call}"
            )
        return load_dataset(config)
    images = _apply_limits(data if isinstance(data, ImageData) else images_from_array(data, config), config)
    if config.name == IN_MEMORY and config.fingerprint is not None:
        found = data_fingerprint(images)
        if found != config.fingerprint:
            raise DataError(
                f"the images passed are not those {where} was trained on: they are {short_fingerprint(found)}, its "
                f"data.fingerprint records {short_fingerprint(config.fingerprint)}; pass the same images "
                f"(split by data.val_fraction {_val_fraction(config):g})"
            )
    return images


def short_fingerprint(fingerprint: str | None) -> str:
    """A fingerprint with its hash cut to 12 digits, for messages."""
    if fingerprint is None:
        return "no fingerprint recorded"
    head, _, digest = fingerprint.rpartition("sha256 ")
    return f"{head}sha256 {digest[:12]}" if head else fingerprint


def _apply_limits(data: ImageData, config: DataConfig) -> ImageData:
    """`data` with config's train_limit / val_limit and scale="none" applied (idempotent)."""
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
    inputs = stored.to(torch.float32, copy=True).mul_(scale)  # one allocation, `stored` untouched
    if binarize == "threshold":
        return (inputs > threshold).float()
    if binarize == "bernoulli":
        return torch.bernoulli(inputs.clamp(0.0, 1.0), generator=generator)
    return inputs


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
    n_train = _train_count(len(images), _val_fraction(config), path.name)
    return _image_data(
        spec.name,
        images[:n_train],
        images[n_train:],
        None if labels is None else labels[:n_train],
        None if labels is None else labels[n_train:],
        scale,
        f"{path}: first {n_train} images train, last {len(images) - n_train} validation",
    )


def _read_in_memory(spec: DatasetSpec, config: DataConfig) -> ImageData:
    raise DataError(
        f"dataset {IN_MEMORY!r} is images passed from Python (aelab.train(config, out, data=images)) and cannot be "
        "loaded by name; pass the images as data=, or save them with np.save and use dataset 'array' with data.path"
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
        n_train = _train_count(count, _val_fraction(config), str(root / folder_name))
        train_parts.append(pixels[start : start + n_train])
        val_parts.append(pixels[start + n_train : start + count])
        train_labels.append(np.full(n_train, label, dtype=np.int64))
        val_labels.append(np.full(count - n_train, label, dtype=np.int64))
        start += count
    has_classes = bool(class_folders)
    mode = "grayscale" if grayscale else "RGB"
    split = f"the last {_val_fraction(config):g}"
    if has_classes:
        split = f"{len(groups)} classes by subfolder, {split} of each"
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


def _val_fraction(config: DataConfig) -> float:
    return DEFAULT_VAL_FRACTION if config.val_fraction is None else config.val_fraction


def _train_count(count: int, val_fraction: float, where: str) -> int:
    """Images in the training split: the first floor(count * (1 - val_fraction)), at least one
    image in each split."""
    if count < 2:
        raise DataError(f"{where}: holds {count} image; need at least 2 (one to train on, one to validate)")
    n_train = math.floor(round(count * (1.0 - val_fraction), 6))
    return min(max(n_train, 1), count - 1)


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


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


# ---------------------------------------------------------------------------------------------
# The registry

IN_MEMORY = "in-memory"

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
            source="MNIST test set by LeCun, Cortes and Burges, shipped in aelab/bundled",
            shape=(1, 28, 28),
            read=_read_bundled_mnist,
            files=_MNIST_FILES[2:],
        ),
        DatasetSpec(
            name="digits",
            description="scikit-learn's 1,797 8x8 digits, values 0..16: 1,437 train, 360 validation",
            source="sklearn.datasets.load_digits, from the UCI optical handwritten digits",
            shape=(1, 8, 8),
            read=_read_digits,
        ),
        DatasetSpec(
            name="mnist",
            description="MNIST handwritten digits, 28x28 gray: 60,000 train, 10,000 test as validation, 11 MB download",
            source="http://yann.lecun.com/exdb/mnist/ by LeCun, Cortes and Burges",
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
            description="Fashion-MNIST clothing, 28x28 gray: 60,000 train, 10,000 test as validation, 30 MB download",
            source="https://github.com/zalandoresearch/fashion-mnist, Xiao, Rasul and Vollgraf 2017",
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
            description="Kuzushiji-MNIST cursive Japanese, 28x28 gray: 60,000 train, 10,000 test as validation"
            ", 21 MB download",
            source="https://github.com/rois-codh/kmnist, Clanuwat et al. 2018",
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
            source="your file",
            shape=None,
            read=_read_array_dataset,
            user_data=True,
        ),
        DatasetSpec(
            name="folder",
            description="your PNG/JPEG images in a folder (data.path), one subfolder per class if labelled",
            source="your folder",
            shape=None,
            read=_read_folder_dataset,
            user_data=True,
        ),
        DatasetSpec(
            name=IN_MEMORY,
            description="images passed from Python as data= (a tensor or array); the last val_fraction is validation",
            source="your tensor or array, recorded by its fingerprint, not saved in the run folder",
            shape=None,
            read=_read_in_memory,
        ),
    )
}
