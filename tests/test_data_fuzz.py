"""Fuzzing the file readers: whatever the bytes, the answer is a valid array or a DataError.

Each test mutates valid files (flipped, inserted and deleted bytes, cuts) as well as trying
raw random bytes, so that the mutations reach the headers, the zip directory and the
compressed streams rather than failing at the first magic number.
"""

from __future__ import annotations

import gzip
import io
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aelab.config import DataConfig
from aelab.data import load_dataset, read_arrays, read_idx
from aelab.errors import DataError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def npz_bytes(compressed: bool, **arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, size=(4, 3, 3), dtype=np.uint8)

IDX_SEEDS = [
    idx_bytes(IMAGES, 0x08),
    idx_bytes(np.arange(5, dtype=np.uint8), 0x08),
    idx_bytes(np.arange(-3, 3, dtype=np.int16).reshape(2, 3), 0x0B),
    idx_bytes(RNG.random((2, 2, 2)).astype(np.float32), 0x0D),
]
IDX_SEEDS += [gzip.compress(seed) for seed in IDX_SEEDS]

ARRAY_SEEDS = [
    npy_bytes(IMAGES),
    npy_bytes(RNG.random((3, 9))),
    npy_bytes(RNG.random((2, 2, 2, 3)).astype(np.float32)),
    npy_bytes(np.arange(12, dtype=np.int64).reshape(3, 2, 2)),
    npy_bytes(np.asfortranarray(RNG.random((3, 2, 4)))),
    npy_bytes(np.array([[[1]], [None]], dtype=object)),
    npz_bytes(False, x=IMAGES, y=np.arange(4)),
    npz_bytes(True, images=IMAGES, labels=np.arange(4, dtype=np.uint8)),
    npz_bytes(True, arr_0=RNG.random((3, 4, 4))),
    npz_bytes(False, other=IMAGES),
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed file with a few byte-level edits, mostly near the start where the headers are."""
    data = bytearray(draw(st.sampled_from(seeds)))
    edits = st.tuples(
        st.sampled_from(["overwrite", "insert", "delete", "cut"]),
        st.one_of(st.integers(0, 96), st.integers(0, 1 << 16)),
        st.binary(min_size=1, max_size=4),
    )
    for kind, position, blob in draw(st.lists(edits, min_size=1, max_size=3)):
        position %= len(data) + 1
        if kind == "overwrite":
            data[position : position + len(blob)] = blob
        elif kind == "insert":
            data[position:position] = blob
        elif kind == "delete":
            del data[position : position + len(blob)]
        else:
            del data[position:]
        if not data:
            break
    return bytes(data)


def check_array(array: np.ndarray) -> None:
    assert isinstance(array, np.ndarray)
    assert array.dtype.kind in "biuf"


@FUZZ
@given(st.one_of(st.binary(max_size=64), mutated(IDX_SEEDS)))
def test_read_idx_gives_an_array_or_a_data_error(data):
    try:
        array = read_idx(data)
    except DataError as error:
        assert str(error) and "\n" not in str(error)
        return
    check_array(array)
    assert array.flags.writeable and array.dtype.isnative


@FUZZ
@given(st.one_of(st.binary(max_size=64), mutated(ARRAY_SEEDS)))
def test_read_arrays_gives_arrays_or_a_data_error(data):
    try:
        images, labels = read_arrays(data)
    except DataError as error:
        assert str(error) and "\n" not in str(error)
        return
    check_array(images)
    if labels is not None:
        assert isinstance(labels, np.ndarray)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "images.npz"


@FUZZ
@given(data=mutated(ARRAY_SEEDS))
def test_array_dataset_gives_clean_images_or_a_data_error(fuzz_file, data):
    fuzz_file.write_bytes(data)
    try:
        images = load_dataset(DataConfig(name="array", path=str(fuzz_file)))
    except DataError as error:
        assert str(error) and "\n" not in str(error)
        return
    for split in (images.train, images.val):
        assert split.ndim == 4 and split.dtype in (torch.uint8, torch.float32)
        assert torch.isfinite(split.float()).all() and split.min() >= 0
