"""Image datasets: the registry, the readers and the pixels-to-inputs step.

`load_dataset(config)` turns a `DataConfig` into an `ImageData` (see `aelab.data.datasets`);
`prepare_batch` turns one batch of stored pixels into model inputs. The file formats live in
`aelab.data.readers`, the cache folder and downloads in `aelab.data.download`.
"""

from aelab.data.datasets import (
    DATASETS,
    IN_MEMORY,
    DatasetSpec,
    ImageData,
    RemoteFile,
    check_data_config,
    data_fingerprint,
    data_for_run,
    data_for_training,
    images_from_array,
    load_dataset,
    prepare_batch,
)
from aelab.data.download import data_cache_dir, download
from aelab.data.readers import read_arrays, read_idx

__all__ = [
    "DATASETS",
    "IN_MEMORY",
    "DatasetSpec",
    "ImageData",
    "RemoteFile",
    "check_data_config",
    "data_cache_dir",
    "data_fingerprint",
    "data_for_run",
    "data_for_training",
    "download",
    "images_from_array",
    "load_dataset",
    "prepare_batch",
    "read_arrays",
    "read_idx",
]
