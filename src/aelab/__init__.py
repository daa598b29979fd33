"""aelab: a lab for image autoencoders.

Train dense and convolutional autoencoders with any output activation and reconstruction
loss, compare them on equal footing, and see why a model gives a blob.
"""

from aelab.callbacks import LOGGERS, Callback, Logger
from aelab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from aelab.data import DATASETS, ImageData, load_dataset
from aelab.errors import AelabError, ConfigError, DataError, DivergenceError, RunFolderError, SetupFindingsError
from aelab.likelihoods import LIKELIHOODS, Likelihood
from aelab.losses import LOSS_FLOORS, LOSSES
from aelab.nn.models import INITS, MODELS, build_model
from aelab.runs import Run, load_run
from aelab.train import OPTIMIZERS, TrainResult, resume, train, train_ensemble

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "INITS",
    "LIKELIHOODS",
    "LOGGERS",
    "LOSSES",
    "LOSS_FLOORS",
    "MODELS",
    "OPTIMIZERS",
    "AelabError",
    "Callback",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DivergenceError",
    "ImageData",
    "Likelihood",
    "Logger",
    "ModelConfig",
    "Run",
    "RunConfig",
    "RunFolderError",
    "SetupFindingsError",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "build_model",
    "load_dataset",
    "load_run",
    "resume",
    "train",
    "train_ensemble",
]
