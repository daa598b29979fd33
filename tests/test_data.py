"""Tests for aelab.data: bundled data, readers, splits, scaling, downloads and hostile input."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import importlib.resources
import pickle
import re
import socket
import struct
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import platformdirs
import pytest
import torch
from PIL import Image

from aelab.config import DataConfig
from aelab.data import (
    DATASETS,
    ImageData,
    data_cache_dir,
    download,
    load_dataset,
    prepare_batch,
    read_arrays,
    read_idx,
)
from aelab.errors import DataError

IDX_TYPES = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of `array`: magic, big-endian dimensions, big-endian values."""
    header = bytes([0, 0, IDX_TYPES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def random_images(count: int, height: int = 28, width: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, height, width), dtype=np.uint8)


def array_config(path: Path, **changes) -> DataConfig:
    return DataConfig(name="array", path=str(path), **changes)


def load_array(tmp_path: Path, array: np.ndarray, **changes) -> ImageData:
    path = tmp_path / "images.npy"
    np.save(path, array)
    return load_dataset(array_config(path, **changes))


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


# --- bundled MNIST test set -------------------------------------------------------------------


def bundled_bytes(filename: str) -> bytes:
    return importlib.resources.files("aelab").joinpath("bundled").joinpath(filename).read_bytes()


@pytest.mark.parametrize(
    ("filename", "md5"),
    [
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ],
)
def test_bundled_files_match_the_published_md5(filename, md5):
    assert hashlib.md5(bundled_bytes(filename), usedforsecurity=False).hexdigest() == md5


def test_mnist_10k_is_the_default_and_splits_8000_2000():
    data = load_dataset(DataConfig())
    assert data.name == "mnist-10k"
    assert data.train.shape == (8000, 1, 28, 28) and data.val.shape == (2000, 1, 28, 28)
    assert data.train.dtype == torch.uint8 and data.val.dtype == torch.uint8
    assert data.train_labels.shape == (8000,) and data.val_labels.shape == (2000,)
    assert data.train_labels.dtype == torch.int64
    assert data.scale == pytest.approx(1 / 255)
    assert data.image_shape == (1, 28, 28) and data.num_pixels == 784
    assert int(data.train.max()) == 255 and int(data.train.min()) == 0
    # The well-known first MNIST test labels, and the split boundary at image 8000 of the file.
    assert data.train_labels[:5].tolist() == [7, 2, 1, 0, 4]
    images = read_idx(bundled_bytes("t10k-images-idx3-ubyte.gz"))
    labels = read_idx(bundled_bytes("t10k-labels-idx1-ubyte.gz"))
    assert torch.equal(data.val[0, 0], torch.from_numpy(images[8000]))
    assert torch.equal(data.train[-1, 0], torch.from_numpy(images[7999]))
    assert int(data.val_labels[0]) == int(labels[8000])
    assert sorted(set(data.val_labels.tolist())) == list(range(10))
    assert "bundled" in data.source and "\n" not in data.source


def test_limits_keep_the_first_images_and_scale_none_keeps_raw_values():
    full = load_dataset(DataConfig())
    small = load_dataset(DataConfig(train_limit=10, val_limit=3, scale="none"))
    assert small.train.shape == (10, 1, 28, 28) and small.val.shape == (3, 1, 28, 28)
    assert torch.equal(small.train, full.train[:10]) and torch.equal(small.val, full.val[:3])
    assert torch.equal(small.val_labels, full.val_labels[:3])
    assert small.scale == 1.0 and small.train.dtype == torch.uint8
    # The forgot-to-divide mistake on purpose: inputs reach 255.
    assert float(prepare_batch(small.train, small.scale).max()) == 255.0


def test_digits_are_uint8_0_to_16_with_scale_one_sixteenth():
    data = load_dataset(DataConfig(name="digits"))
    assert data.train.shape == (1437, 1, 8, 8) and data.val.shape == (360, 1, 8, 8)
    assert data.train.dtype == torch.uint8
    assert int(data.train.max()) == 16
    assert data.scale == pytest.approx(1 / 16)
    assert float(prepare_batch(data.train, data.scale).max()) == 1.0
    assert data.train_labels.shape == (1437,) and data.val_labels.shape == (360,)
    assert load_dataset(DataConfig(name="digits", scale="none")).scale == 1.0


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(DataError, match="unknown dataset 'cifar'; valid names: mnist-10k, digits, mnist"):
        load_dataset(DataConfig(name="cifar"))


def test_registry_holds_the_documented_datasets():
    assert list(DATASETS) == ["mnist-10k", "digits", "mnist", "fashion-mnist", "kmnist", "array", "folder", "in-memory"]
    for name in ("mnist", "fashion-mnist", "kmnist"):
        spec = DATASETS[name]
        assert spec.mirrors and all(mirror.endswith("/") for mirror in spec.mirrors)
        assert {file.role for file in spec.files} == {"train_images", "train_labels", "val_images", "val_labels"}
    for file in DATASETS["mnist"].files + DATASETS["fashion-mnist"].files:
        assert file.md5 is not None and len(file.md5) == 32
    assert DATASETS["array"].shape is None and DATASETS["folder"].shape is None


# --- IDX reader -------------------------------------------------------------------------------


def test_read_idx_reads_plain_and_gzip_files(tmp_path):
    images = random_images(5, 4, 3)
    plain = tmp_path / "images-idx3-ubyte"
    plain.write_bytes(idx_bytes(images))
    packed = tmp_path / "images-idx3-ubyte.gz"
    packed.write_bytes(gzip.compress(idx_bytes(images)))
    for path in (plain, packed, str(packed)):
        loaded = read_idx(path)
        assert loaded.shape == (5, 4, 3) and loaded.dtype == np.uint8
        np.testing.assert_array_equal(loaded, images)
        assert loaded.flags.writeable


def test_read_idx_reads_1d_labels_and_big_endian_types():
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(idx_bytes(labels)), labels)
    values = np.array([[1.5, -2.0], [1e3, 0.25]], dtype=np.float32)
    loaded = read_idx(idx_bytes(values))
    assert loaded.dtype == np.float32 and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, values)
    shorts = np.array([-300, 7, 1000], dtype=np.int16)
    np.testing.assert_array_equal(read_idx(idx_bytes(shorts)), shorts)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"PK\x03\x04rest", "not an IDX file (it starts with 50 4b 03 04"),
        (b"", "not an IDX file"),
        (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 9]), "IDX type code 0x07 is not one of"),
        (bytes([0, 0, 0x08, 0]), "IDX header says 0 dimensions"),
        (bytes([0, 0, 0x08, 3, 0, 0]), "IDX header is cut short"),
        (
            idx_bytes(random_images(10))[:1250],
            "IDX says 10x28x28 = 7840 bytes but the file holds 1234; the file is truncated",
        ),
        (
            idx_bytes(random_images(2, 2, 2)) + b"extra",
            "IDX says 2x2x2 = 8 bytes but the file holds 13; the file is corrupt",
        ),
        (gzip.compress(idx_bytes(random_images(3)))[:-20], "the gzip data is truncated or corrupt"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"garbage that is not deflate", "the gzip data is truncated or corrupt"),
    ],
)
def test_read_idx_refuses_hostile_bytes(data, fragment):
    with pytest.raises(DataError, match=fragment.replace("(", r"\(")):
        read_idx(data, name="t10k-images-idx3-ubyte.gz")


def test_read_idx_names_the_file_and_a_missing_path(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(idx_bytes(random_images(10))[:1250])
    with pytest.raises(DataError, match=r"^t10k-images-idx3-ubyte.gz: IDX says 10x28x28 = 7840 bytes"):
        read_idx(path)
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "absent.gz")


# --- .npy / .npz ------------------------------------------------------------------------------


def test_npy_n_h_w_uint8_stays_uint8_and_splits_off_the_last_fraction(tmp_path):
    images = random_images(10, 5, 6)
    data = load_array(tmp_path, images)
    assert data.train.shape == (8, 1, 5, 6) and data.val.shape == (2, 1, 5, 6)
    assert data.train.dtype == torch.uint8 and data.scale == pytest.approx(1 / 255)
    np.testing.assert_array_equal(data.val[:, 0].numpy(), images[8:])
    assert data.train_labels is None and data.val_labels is None
    data = load_array(tmp_path, images, val_fraction=0.3)
    assert data.train.shape[0] == 7 and data.val.shape[0] == 3


def test_npy_channels_last_becomes_channels_first(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(4, 5, 6, 3), dtype=np.uint8)
    data = load_array(tmp_path, images)
    assert data.image_shape == (3, 5, 6)
    np.testing.assert_array_equal(data.train[2].numpy(), images[2].transpose(2, 0, 1))
    channels_first = images.transpose(0, 3, 1, 2)
    assert load_array(tmp_path, channels_first).image_shape == (3, 5, 6)


def test_npy_flat_rows_become_square_images_or_1_by_d(tmp_path):
    flat = random_images(5, 1, 16)[:, 0]  # (5, 16)
    data = load_array(tmp_path, flat)
    assert data.image_shape == (1, 4, 4)
    np.testing.assert_array_equal(data.train[1, 0].numpy(), flat[1].reshape(4, 4))
    assert load_array(tmp_path, random_images(5, 1, 10)[:, 0]).image_shape == (1, 1, 10)


def test_float_pixels_keep_scale_one_and_0_to_255_floats_are_allowed(tmp_path):
    images = np.random.default_rng(2).random((6, 3, 3)).astype(np.float64)
    data = load_array(tmp_path, images)
    assert data.train.dtype == torch.float32 and data.scale == 1.0
    np.testing.assert_allclose(data.train[:, 0].numpy(), images[:4], rtol=1e-6)
    raw = load_array(tmp_path, images * 255)
    assert raw.scale == 1.0 and float(raw.train.max()) > 1.0


def test_integer_pixels_in_byte_range_are_stored_as_uint8(tmp_path):
    data = load_array(tmp_path, random_images(4).astype(np.int64))
    assert data.train.dtype == torch.uint8 and data.scale == pytest.approx(1 / 255)
    sixteen_bit = load_array(tmp_path, np.full((3, 2, 2), 4000, dtype=np.uint16))
    assert sixteen_bit.train.dtype == torch.float32 and sixteen_bit.scale == pytest.approx(1 / 65535)


@pytest.mark.parametrize("keys", [("x", "y"), ("images", "labels")])
def test_npz_with_images_and_labels(tmp_path, keys):
    images, labels = random_images(10, 3, 3), np.arange(10) % 4
    path = tmp_path / "set.npz"
    np.savez_compressed(path, **{keys[0]: images, keys[1]: labels, "other": np.zeros(2)})
    data = load_dataset(array_config(path))
    assert data.train.shape == (8, 1, 3, 3)
    assert data.train_labels.dtype == torch.int64
    assert data.train_labels.tolist() == labels[:8].tolist() and data.val_labels.tolist() == labels[8:].tolist()


def test_npz_column_labels_are_flattened(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, x=random_images(5, 2, 2), y=np.arange(5).reshape(5, 1))
    data = load_dataset(array_config(path))
    assert data.train_labels.tolist() == [0, 1, 2, 3] and data.val_labels.tolist() == [4]


def test_npz_arr_0_and_read_arrays_from_bytes(tmp_path):
    path = tmp_path / "kmnist-like.npz"
    images = random_images(3)
    np.savez(path, images)
    loaded, labels = read_arrays(path)
    np.testing.assert_array_equal(loaded, images)
    assert labels is None
    loaded, _ = read_arrays(path.read_bytes())
    np.testing.assert_array_equal(loaded, images)


def save_npz(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def save_npy(tmp_path: Path, array: np.ndarray) -> Path:
    path = tmp_path / "bad.npy"
    np.save(path, array, allow_pickle=True)
    return path


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: save_npy(d, np.zeros((0, 28, 28), np.uint8)), r"the array is empty \(shape \(0, 28, 28\)\)"),
        (lambda d: save_npy(d, np.zeros(784, np.uint8)), "images must be .* got a 1-d array of shape"),
        (lambda d: save_npy(d, np.zeros((2, 1, 2, 2, 2), np.uint8)), "got a 5-d array"),
        (lambda d: save_npy(d, np.zeros((2, 6, 7, 8), np.uint8)), "has no channel axis of size 1-4"),
        (
            lambda d: save_npy(d, np.array([[[0.5, np.nan]], [[0.1, 0.2]]])),
            r"1 pixels are NaN or Inf \(first in image 0\)",
        ),
        (lambda d: save_npy(d, np.array([[[0.5]], [[np.inf]]])), r"NaN or Inf \(first in image 1\)"),
        (lambda d: save_npy(d, np.array([[[0.5]], [[-0.25]]])), "pixels must not be negative, found -0.25"),
        (lambda d: save_npy(d, np.array([[[-3]], [[4]]], np.int32)), "pixels must not be negative, found -3"),
        (lambda d: save_npy(d, np.array([[[0.5]], [[3e7]]])), "pixel values reach 3e\\+07, over 1e\\+06"),
        (lambda d: save_npy(d, np.array([[[1]], [[70000]]])), "integer pixels reach 70000"),
        (lambda d: save_npy(d, np.array([[["a"]], [["b"]]])), "pixels have dtype <U1, not numbers"),
        (lambda d: save_npy(d, np.array([[[1]], [None]], dtype=object)), "holds Python objects .* never unpickles"),
        (lambda d: save_npz(d, x=np.array([[[1]], [None]], dtype=object)), r"bad.npz\['x'\]: holds Python objects"),
        (
            lambda d: save_npz(d, a=np.zeros((2, 2, 2)), b=np.ones(2)),
            "no images under 'x', 'images', 'arr_0'; keys found: a, b",
        ),
        (lambda d: save_npz(d, x=random_images(4), y=np.arange(3)), "3 labels for 4 images"),
        (lambda d: save_npz(d, x=random_images(4), y=np.linspace(0, 1, 4)), "labels must be integers"),
        (lambda d: save_npz(d, x=random_images(1)), "holds 1 image; need at least 2"),
    ],
)
def test_hostile_arrays_raise_a_clear_data_error(tmp_path, make, fragment):
    path = make(tmp_path)
    with pytest.raises(DataError, match=fragment):
        load_dataset(array_config(path))


def test_hostile_array_files(tmp_path):
    pickled = tmp_path / "images.npy"
    pickled.write_bytes(pickle.dumps({"x": [1, 2, 3]}))
    with pytest.raises(DataError, match="this is a Python pickle, which aelab never loads"):
        load_dataset(array_config(pickled))
    text = tmp_path / "notes.npy"
    text.write_text("hello")
    with pytest.raises(DataError, match=re.escape("not a .npy or .npz file")):
        load_dataset(array_config(text))
    truncated = tmp_path / "cut.npy"
    np.save(truncated, random_images(10))
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"cut.npy: the header says \(10, 28, 28\) uint8 = 7840 bytes .* truncated"):
        load_dataset(array_config(truncated))
    broken_zip = tmp_path / "broken.npz"
    np.savez_compressed(broken_zip, x=random_images(10))
    broken_zip.write_bytes(broken_zip.read_bytes()[:200])
    with pytest.raises(DataError, match=re.escape("broken.npz: not a valid .npz file")):
        load_dataset(array_config(broken_zip))


def test_missing_or_wrong_paths_for_user_data(tmp_path):
    with pytest.raises(DataError, match=re.escape("dataset 'array' needs data.path: a .npy or .npz file")):
        load_dataset(DataConfig(name="array"))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(array_config(tmp_path / "absent.npy"))
    with pytest.raises(DataError, match="is a folder; dataset 'array' needs"):
        load_dataset(array_config(tmp_path))
    (tmp_path / "x.npy").write_bytes(b"")
    with pytest.raises(DataError, match="is a file; dataset 'folder' needs"):
        load_dataset(DataConfig(name="folder", path=str(tmp_path / "x.npy")))


# --- folder of images -------------------------------------------------------------------------


def test_folder_with_class_subfolders_gives_labels_and_splits_each_class(tmp_path):
    rng = np.random.default_rng(3)
    written = {}
    for name in ("cat", "ant", "bee"):
        for index in range(5):
            pixels = rng.integers(0, 256, size=(6, 4), dtype=np.uint8)
            write_png(tmp_path / name / f"{index:02d}.png", pixels)
            written[(name, index)] = pixels
    (tmp_path / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    data = load_dataset(DataConfig(name="folder", path=str(tmp_path)))
    assert data.image_shape == (1, 6, 4) and data.train.dtype == torch.uint8
    assert data.scale == pytest.approx(1 / 255)
    # Classes by sorted name: ant=0, bee=1, cat=2; the last 20% of each class validates.
    assert data.train_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.val_labels.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(data.train[0, 0].numpy(), written[("ant", 0)])
    np.testing.assert_array_equal(data.val[2, 0].numpy(), written[("cat", 4)])
    assert "3 classes" in data.source


def test_folder_is_rgb_unless_every_image_is_grayscale(tmp_path):
    gray = np.full((3, 3), 200, dtype=np.uint8)
    for index in range(3):
        write_png(tmp_path / f"{index}.png", gray)
    plain = load_dataset(DataConfig(name="folder", path=str(tmp_path)))
    assert plain.image_shape == (1, 3, 3) and plain.train_labels is None
    color = np.zeros((3, 3, 3), dtype=np.uint8)
    color[..., 0] = 255
    write_png(tmp_path / "3.png", color)
    data = load_dataset(DataConfig(name="folder", path=str(tmp_path), val_fraction=0.25))
    assert data.image_shape == (3, 3, 3)
    assert data.train[0].tolist() == [[[200] * 3] * 3] * 3  # gray replicated to R, G, B
    assert data.val[0, :, 0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize(
    ("arrange", "fragment"),
    [
        (
            lambda d: write_png(d / "b.png", np.zeros((5, 4), np.uint8)),
            "b.png is 4x5 but .*a.png is 3x3; all images must",
        ),
        (lambda d: (d / "notes.txt").write_text("hi"), "notes.txt: not a PNG or JPEG image; remove it"),
        (lambda d: (d / "c.png").write_bytes(b"not a png at all"), "c.png: not a readable image"),
        (
            lambda d: write_png(d / "sub" / "x.png", np.zeros((3, 3), np.uint8)),
            "holds class subfolders and loose files",
        ),
    ],
)
def test_hostile_folders_raise_a_clear_data_error(tmp_path, arrange, fragment):
    write_png(tmp_path / "a.png", np.zeros((3, 3), np.uint8))
    write_png(tmp_path / "a2.png", np.zeros((3, 3), np.uint8))
    arrange(tmp_path)
    with pytest.raises(DataError, match=fragment):
        load_dataset(DataConfig(name="folder", path=str(tmp_path)))


def test_empty_folder_and_truncated_png(tmp_path):
    with pytest.raises(DataError, match="holds no PNG or JPEG images"):
        load_dataset(DataConfig(name="folder", path=str(tmp_path)))
    noise = random_images(2, 64, 64)  # incompressible, so that cutting the file cuts pixel data
    write_png(tmp_path / "a.png", noise[0])
    write_png(tmp_path / "b.png", noise[1])
    (tmp_path / "b.png").write_bytes((tmp_path / "b.png").read_bytes()[:300])
    with pytest.raises(DataError, match=re.escape("b.png: not a readable image")):
        load_dataset(DataConfig(name="folder", path=str(tmp_path)))


# --- prepare_batch ----------------------------------------------------------------------------


def test_prepare_batch_scales_to_float32_without_touching_the_stored_batch():
    stored = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    batch = prepare_batch(stored, 1 / 255)
    assert batch.dtype == torch.float32
    torch.testing.assert_close(batch, torch.tensor([[0.0, 0.2, 1.0]]))
    floats = torch.tensor([0.25, 0.75])
    out = prepare_batch(floats, 1.0)
    out += 1
    assert floats.tolist() == [0.25, 0.75]


def test_prepare_batch_threshold():
    stored = torch.tensor([0, 127, 128, 255], dtype=torch.uint8)
    assert prepare_batch(stored, 1 / 255, "threshold", 0.5).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert prepare_batch(stored, 1 / 255, "threshold", 0.9).tolist() == [0.0, 0.0, 0.0, 1.0]
    # Strictly greater: a pixel exactly at the threshold is off.
    assert prepare_batch(torch.tensor([0.5, 0.51]), 1.0, "threshold", 0.5).tolist() == [0.0, 1.0]


def test_prepare_batch_bernoulli_is_seeded_binary_and_follows_the_pixel_value():
    stored = torch.full((200, 1, 10, 10), 77, dtype=torch.uint8)  # p = 77/255 ~ 0.302
    first = prepare_batch(stored, 1 / 255, "bernoulli", generator=torch.Generator().manual_seed(0))
    again = prepare_batch(stored, 1 / 255, "bernoulli", generator=torch.Generator().manual_seed(0))
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(first, again)
    generator = torch.Generator().manual_seed(0)
    draw_one = prepare_batch(stored, 1 / 255, "bernoulli", generator=generator)
    draw_two = prepare_batch(stored, 1 / 255, "bernoulli", generator=generator)
    assert not torch.equal(draw_one, draw_two)
    assert float(first.mean()) == pytest.approx(77 / 255, abs=0.01)
    # Raw 0..255 values (scale 1.0) clamp to probability 1, never an error.
    assert prepare_batch(stored, 1.0, "bernoulli").min() == 1.0


def test_prepare_batch_refuses_an_unknown_mode():
    with pytest.raises(DataError, match="binarize must be one of none, threshold, bernoulli"):
        prepare_batch(torch.zeros(2), 1.0, "sample")


# --- downloads --------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving tmp_path/www, recording the paths requested."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{httpd.server_port}/", requests=requests)
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_download_fetches_and_verifies(server, tmp_path):
    (server.root / "file.bin").write_bytes(b"payload" * 1000)
    dest = tmp_path / "cache" / "sub" / "file.bin"
    result = download([server.url + "file.bin"], dest, md5_of(server.root / "file.bin"))
    assert result == dest and dest.read_bytes() == b"payload" * 1000
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]


def test_download_md5_mismatch_leaves_nothing_in_place(server, tmp_path):
    (server.root / "file.bin").write_bytes(b"tampered")
    dest = tmp_path / "cache" / "file.bin"
    with pytest.raises(
        DataError, match=r"file.bin: could not download a good copy \(http://127.0.0.1:\d+/file.bin: md5 is"
    ):
        download([server.url + "file.bin"], dest, "0" * 32)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_download_falls_back_to_the_next_mirror(server, tmp_path):
    (server.root / "good").mkdir()
    (server.root / "good" / "file.bin").write_bytes(b"right")
    md5 = md5_of(server.root / "good" / "file.bin")
    for first in (server.url + "missing/", closed_port_url()):
        dest = tmp_path / "cache" / "file.bin"
        dest.unlink(missing_ok=True)
        download([first + "file.bin", server.url + "good/file.bin"], dest, md5)
        assert dest.read_bytes() == b"right"
    assert "/missing/file.bin" in server.requests


def test_download_failure_names_every_mirror(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(DataError, match=r"HTTP 404.*; .*set data\.data_dir") as caught:
        download([server.url + "a/file.bin", closed_port_url() + "file.bin"], dest, None)
    assert "a/file.bin" in str(caught.value) and "\n" not in str(caught.value)
    assert not dest.exists()


def test_download_accepts_file_urls(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"local")
    dest = download([source.as_uri()], tmp_path / "out" / "copy.bin", md5_of(source))
    assert dest.read_bytes() == b"local"


def test_data_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AELAB_DATA_DIR", str(tmp_path / "data"))
    assert data_cache_dir() == tmp_path / "data"
    monkeypatch.delenv("AELAB_DATA_DIR")
    assert data_cache_dir() == Path(platformdirs.user_cache_dir("aelab"))


def fake_mnist(folder: Path, height: int = 28) -> dict[str, np.ndarray]:
    """Small MNIST-format files: 6 train and 4 test images."""
    arrays = {
        "train-images-idx3-ubyte.gz": random_images(6, height, height, seed=4),
        "train-labels-idx1-ubyte.gz": np.array([5, 0, 4, 1, 9, 2], dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": random_images(4, height, height, seed=5),
        "t10k-labels-idx1-ubyte.gz": np.array([7, 2, 1, 0], dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for filename, array in arrays.items():
        (folder / filename).write_bytes(gzip.compress(idx_bytes(array)))
    return arrays


def point_at(monkeypatch, name: str, mirrors: list[str], folder: Path | None = None) -> None:
    """Replace DATASETS[name] by a copy with these mirrors and the md5s of the files in `folder`."""
    spec = DATASETS[name]
    files = spec.files
    if folder is not None:
        files = tuple(dataclasses.replace(file, md5=md5_of(folder / file.filename)) for file in files)
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(spec, mirrors=tuple(mirrors), files=files))


def test_mnist_downloads_once_into_the_cache(server, tmp_path, monkeypatch):
    arrays = fake_mnist(server.root)
    point_at(monkeypatch, "mnist", [closed_port_url(), server.url], server.root)
    monkeypatch.setenv("AELAB_DATA_DIR", str(tmp_path / "cache"))
    data = load_dataset(DataConfig(name="mnist"))
    assert data.train.shape == (6, 1, 28, 28) and data.val.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(data.val[:, 0].numpy(), arrays["t10k-images-idx3-ubyte.gz"])
    assert data.train_labels.tolist() == [5, 0, 4, 1, 9, 2]
    assert (tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    assert len(server.requests) == 4
    load_dataset(DataConfig(name="mnist"))
    assert len(server.requests) == 4  # served from the cache
    # A cached file that fails its md5 is fetched again.
    (tmp_path / "cache" / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"rotten")
    assert load_dataset(DataConfig(name="mnist")).val_labels.tolist() == [7, 2, 1, 0]
    assert len(server.requests) == 5


def test_mnist_reads_data_dir_without_downloading(server, tmp_path, monkeypatch):
    fake_mnist(tmp_path / "mine")
    point_at(monkeypatch, "mnist", [server.url])
    monkeypatch.setenv("AELAB_DATA_DIR", str(tmp_path / "cache"))
    data = load_dataset(DataConfig(name="mnist", data_dir=str(tmp_path / "mine"), train_limit=2))
    assert data.train.shape == (2, 1, 28, 28) and data.val.shape == (4, 1, 28, 28)
    assert server.requests == [] and not (tmp_path / "cache").exists()
    (tmp_path / "mine" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=re.escape("lacks t10k-labels-idx1-ubyte.gz for mnist; put the standard")):
        load_dataset(DataConfig(name="mnist", data_dir=str(tmp_path / "mine")))


def test_downloaded_files_of_the_wrong_shape_or_count_are_refused(tmp_path):
    fake_mnist(tmp_path / "small", height=8)
    with pytest.raises(DataError, match="mnist: images are 1x8x8 but mnist images are 1x28x28"):
        load_dataset(DataConfig(name="mnist", data_dir=str(tmp_path / "small")))
    fake_mnist(tmp_path / "short")
    labels = tmp_path / "short" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.arange(5, dtype=np.uint8))))
    with pytest.raises(DataError, match=re.escape("train-labels-idx1-ubyte.gz: 5 labels for 6 images")):
        load_dataset(DataConfig(name="mnist", data_dir=str(tmp_path / "short")))


def test_kmnist_npz_files_download_and_load(server, tmp_path, monkeypatch):
    np.savez_compressed(server.root / "kmnist-train-imgs.npz", random_images(5))
    np.savez_compressed(server.root / "kmnist-train-labels.npz", np.arange(5, dtype=np.uint8))
    np.savez_compressed(server.root / "kmnist-test-imgs.npz", random_images(2))
    np.savez_compressed(server.root / "kmnist-test-labels.npz", np.array([3, 4], dtype=np.uint8))
    point_at(monkeypatch, "kmnist", [server.url])
    monkeypatch.setenv("AELAB_DATA_DIR", str(tmp_path / "cache"))
    data = load_dataset(DataConfig(name="kmnist"))
    assert data.train.shape == (5, 1, 28, 28) and data.val_labels.tolist() == [3, 4]
    assert data.train.dtype == torch.uint8 and data.scale == pytest.approx(1 / 255)
