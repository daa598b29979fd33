"""A corpus of malformed inputs, each run through `aelab train`: every one must give its own
clear line and exit 2, never a traceback. The files are built here, small, in each test's
temporary folder. (The readers themselves are tested and fuzzed in test_data*.py.)"""

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from aelab.cli import main

from .conftest import MakesMarker

FLAGS = ["--epochs", "1", "--batch-size", "4", "--hidden", "4", "--latent", "2", "--threads", "1", "--quiet"]


def idx(array):
    """IDX bytes of `array` as unsigned bytes (type 0x08), the MNIST layout."""
    array = np.asarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def mnist_dir(tmp_path, **replace):
    """A --data-dir with the four MNIST files, 4 images each; `replace` swaps in other bytes."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    images = idx(np.arange(4 * 28 * 28).reshape(4, 28, 28) % 256)
    labels = idx(np.array([0, 1, 2, 3]))
    files = {
        "train-images-idx3-ubyte.gz": gzip.compress(images),
        "train-labels-idx1-ubyte.gz": gzip.compress(labels),
        "t10k-images-idx3-ubyte.gz": gzip.compress(images),
        "t10k-labels-idx1-ubyte.gz": gzip.compress(labels),
    }
    files.update(replace)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return ["--dataset", "mnist", "--data-dir", str(folder)]


def array_file(tmp_path, name, data):
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif name.endswith(".npz"):
        np.savez(path, **data)
    else:
        np.save(path, data, allow_pickle=True)
    return ["--data-path", str(path)]


def image_folder(tmp_path, files):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, content in files.items():
        if isinstance(content, tuple):
            Image.new("L", content, color=128).save(folder / name)
        else:
            (folder / name).write_bytes(content)
    return ["--data-path", str(folder)]


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def corrupt_middle(data):
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 16]) + data[middle + 16 :]


def npz_with_damaged_zip():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", npy_bytes(np.zeros((4, 8, 8), np.uint8)))
    return corrupt_middle(buffer.getvalue())


IMAGES = np.full((4, 8, 8), 0.5, dtype=np.float32)
GOOD_IDX = idx(np.zeros((4, 28, 28), np.uint8))

DATA_CASES = {
    # gzip and IDX, through --dataset mnist --data-dir
    "truncated-gzip": (
        lambda t: mnist_dir(t, **{"train-images-idx3-ubyte.gz": gzip.compress(GOOD_IDX)[:-30]}),
        "train-images-idx3-ubyte.gz: the gzip data is truncated or corrupt",
    ),
    "corrupt-gzip": (
        lambda t: mnist_dir(t, **{"train-images-idx3-ubyte.gz": corrupt_middle(gzip.compress(os.urandom(4000)))}),
        "train-images-idx3-ubyte.gz: the gzip data is truncated or corrupt",
    ),
    "wrong-idx-magic": (
        lambda t: mnist_dir(t, **{"t10k-images-idx3-ubyte.gz": gzip.compress(b"\x12\x34" + GOOD_IDX[2:])}),
        "t10k-images-idx3-ubyte.gz: not an IDX file (it starts with 12 34 08 03",
    ),
    "idx-dims-over-bytes": (
        lambda t: mnist_dir(t, **{"train-images-idx3-ubyte.gz": gzip.compress(GOOD_IDX[:-784])}),
        "IDX says 4x28x28 = 3136 bytes but the file holds 2352; the file is truncated",
    ),
    "idx-dims-under-bytes": (
        lambda t: mnist_dir(t, **{"train-images-idx3-ubyte.gz": gzip.compress(GOOD_IDX + b"\x00" * 10)}),
        "IDX says 4x28x28 = 3136 bytes but the file holds 3146; the file is corrupt",
    ),
    "idx-labels-count": (
        lambda t: mnist_dir(t, **{"t10k-labels-idx1-ubyte.gz": gzip.compress(idx(np.array([1, 2, 3])))}),
        "t10k-labels-idx1-ubyte.gz: 3 labels for 4 images",
    ),
    "idx-wrong-image-size": (
        lambda t: mnist_dir(
            t,
            **{
                "train-images-idx3-ubyte.gz": gzip.compress(idx(np.zeros((4, 8, 8), np.uint8))),
                "t10k-images-idx3-ubyte.gz": gzip.compress(idx(np.zeros((4, 8, 8), np.uint8))),
            },
        ),
        "mnist: images are 1x8x8 but mnist images are 1x28x28",
    ),
    # .npy and .npz, through --data-path
    "empty-array": (lambda t: array_file(t, "x.npy", np.zeros((0, 8, 8), np.uint8)), "the array is empty"),
    "one-dimension": (
        lambda t: array_file(t, "x.npy", np.zeros(16, np.uint8)),
        "images must be (N, H, W), (N, H, W, C) or (N, D), got a 1-d array",
    ),
    "five-dimensions": (
        lambda t: array_file(t, "x.npy", np.zeros((2, 2, 8, 8, 1), np.uint8)),
        "got a 5-d array of shape (2, 2, 8, 8, 1)",
    ),
    "nan-pixels": (
        lambda t: array_file(t, "x.npy", np.where(np.arange(256).reshape(4, 8, 8) == 70, np.nan, IMAGES)),
        "1 pixels are NaN or Inf (first in image 1)",
    ),
    "inf-pixels": (
        lambda t: array_file(t, "x.npy", np.where(np.arange(256).reshape(4, 8, 8) == 200, np.inf, IMAGES)),
        "1 pixels are NaN or Inf (first in image 3)",
    ),
    "negative-pixels": (lambda t: array_file(t, "x.npy", IMAGES - 1), "pixels must not be negative, found -0.5"),
    "huge-float-pixels": (
        lambda t: array_file(t, "x.npy", IMAGES * 1e9),
        "pixel values reach 5e+08, over 1e+06, which is no image range",
    ),
    "huge-integer-pixels": (
        lambda t: array_file(t, "x.npy", np.full((4, 8, 8), 70000, np.int32)),
        "integer pixels reach 70000, above 16-bit (65535)",
    ),
    "labels-count": (
        lambda t: array_file(t, "x.npz", {"x": IMAGES, "y": np.arange(3)}),
        "x.npz labels: 3 labels for 4 images",
    ),
    "object-array": (
        lambda t: array_file(t, "x.npy", np.array([[1], "a", None, 2.0], dtype=object)),
        "holds Python objects (dtype object), which would need pickle, and aelab never unpickles",
    ),
    "pickle-named-npy": (
        lambda t: array_file(t, "x.npy", pickle.dumps(MakesMarker(t / "marker"))),
        "x.npy: this is a Python pickle, which aelab never loads",
    ),
    "truncated-npy": (
        lambda t: array_file(t, "x.npy", npy_bytes(IMAGES)[:-100]),
        "the file is truncated, save or copy it again",
    ),
    "not-an-array-file": (
        lambda t: array_file(t, "x.npy", b"pixel,pixel\n1,2\n"),
        "x.npy: not a .npy or .npz file",
    ),
    "damaged-npz": (lambda t: array_file(t, "x.npz", npz_with_damaged_zip()), "x.npz: not a valid .npz file"),
    # folders of images, through --data-path
    "mixed-image-sizes": (
        lambda t: image_folder(t, {"a.png": (8, 8), "b.png": (9, 8), "c.png": (8, 8)}),
        "b.png is 9x8 but",
    ),
    "non-image-file": (
        lambda t: image_folder(t, {"a.png": (8, 8), "b.png": (8, 8), "notes.txt": b"hello"}),
        "notes.txt: not a PNG or JPEG image; remove it or move it out of",
    ),
    "corrupt-png": (
        lambda t: image_folder(t, {"a.png": (8, 8), "b.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 20}),
        "b.png: not a readable image",
    ),
    "empty-folder": (lambda t: image_folder(t, {}), "holds no PNG or JPEG images"),
}


def assert_one_line_exit_2(argv, capsys, message, tmp_path):
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("aelab: error: "), error
    assert message in error
    assert error.count("\n") == 1 and "Traceback" not in error
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_malformed_data_gives_one_line_and_exit_2(tmp_path, capsys, case):
    build, message = DATA_CASES[case]
    flags = build(tmp_path)
    assert_one_line_exit_2(["train", *FLAGS, *flags, "--out", str(tmp_path / "run")], capsys, message, tmp_path)
    assert not (tmp_path / "marker").exists()  # nothing was unpickled


CONFIG_CASES = {
    "unknown-key": ("train:\n  learning_rat: 0.1\n", "unknown key 'learning_rat' in train; valid keys: loss,"),
    "unknown-section": ("trainer:\n  epochs: 3\n", "unknown key 'trainer' in config; valid keys: data, model, train"),
    "section-not-mapping": ("train: 5\n", "config section 'train' must be a mapping"),
    "not-a-mapping": ("- data\n- model\n", "must hold a mapping of sections (data, model, train)"),
    "yaml-syntax": ("train: {{epochs: 3\n", "is not valid YAML"),
    "integer-as-text": ("train:\n  batch_size: big\n", "train.batch_size must be an integer, got 'big'"),
    "float-for-integer": ("train:\n  epochs: 2.5\n", "train.epochs must be an integer, got 2.5"),
    "text-for-number": ("train:\n  learning_rate: fast\n", "train.learning_rate must be a number, got 'fast'"),
    "text-for-bool": ("model:\n  tied: 'yes'\n", "model.tied must be true or false, got 'yes'"),
    "number-for-list": ("model:\n  hidden_dims: 100\n", "model.hidden_dims must be a list, got 100"),
    "text-in-list": ("model:\n  hidden_dims: [100, wide]\n", "model.hidden_dims[1] must be an integer, got 'wide'"),
    "batch-size-0": ("train:\n  batch_size: 0\n", "train.batch_size must be at least 1, got 0"),
    "negative-learning-rate": ("train:\n  learning_rate: -0.1\n", "train.learning_rate must be positive, got -0.1"),
    "epochs-0": ("train:\n  epochs: 0\n", "train.epochs must be at least 1, got 0"),
    "momentum-1": ("train:\n  momentum: 1.0\n", "train.momentum must be in [0, 1), got 1.0"),
    "val-fraction-1.5": ("data:\n  val_fraction: 1.5\n", "data.val_fraction must be in (0, 1), got 1.5"),
    "latent-0": ("model:\n  latent_dim: 0\n", "model.latent_dim must be at least 1, got 0"),
    "negative-width": ("model:\n  hidden_dims: [-5]\n", "model.hidden_dims must be positive, got [-5]"),
    # An empty hidden list is the Keras tutorial's 784-32-784 dense model; only conv refuses it.
    "empty-hidden-conv": (
        "model:\n  kind: conv\n  hidden_dims: []\n",
        "model.hidden_dims must list at least one channel count for conv",
    ),
    "unknown-loss": ("train:\n  loss: hinge\n", "unknown loss 'hinge'; valid: bce, mse, mae, cb"),
    "python-tag": (
        "train: !!python/object/apply:os.mkdir ['{marker}']\n",
        "is not valid YAML (could not determine a constructor for the tag",
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_files_give_one_line_and_exit_2(tmp_path, capsys, case):
    text, message = CONFIG_CASES[case]
    config = tmp_path / "run.yaml"
    config.write_text(text.format(marker=tmp_path / "marker"))
    argv = ["train", "--config", str(config), "--quiet", "--out", str(tmp_path / "run")]
    assert_one_line_exit_2(argv, capsys, message, tmp_path)
    assert not (tmp_path / "marker").exists()


def test_the_installed_entry_point_prints_no_traceback_either(tmp_path):
    flags = mnist_dir(tmp_path, **{"train-images-idx3-ubyte.gz": gzip.compress(GOOD_IDX)[:-30]})
    done = subprocess.run(
        [sys.executable, "-m", "aelab", "train", *FLAGS, *flags, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("aelab: error: train-images-idx3-ubyte.gz: the gzip data is truncated or corrupt")
    assert done.stderr.count("\n") == 1
