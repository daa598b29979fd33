"""aelab: a lab for image autoencoders.

Train dense and convolutional autoencoders with any output activation and likelihood, compare
them on equal footing, and see why a model gives a blob.

The public API is what this module exports (`__all__`); everything else may change:

- configs: `RunConfig` (`DataConfig`, `ModelConfig`, `TrainConfig`), frozen and serialisable;
- data: `load_dataset`, `ImageData`, `DATASETS`;
- models and likelihoods: `build_model`, `MODELS`, `INITS`, `ACTIVATIONS`, `LIKELIHOODS`, `Likelihood`;
- training: `train`, `resume`, `train_ensemble`, `TrainResult`, `RunState`, `OPTIMIZERS`;
- regularisation (denoising, sparse, contractive): `NOISES`, `PENALTIES`;
- outputs: `Callback`, `Logger`, `LOGGERS`;
- evaluation: `evaluate`, `Validation`, `evaluate_run`;
- run folders, the doctor, sweeps and reports: `load_run`, `Run`, `Doctor`, `check`,
  `run_sweep`, `SweepSpec`, `render_report`;
- the classic questions answered by experiment: `explain` (`aelab.explain`);
- errors: `AelabError` and its kinds.
"""

from aelab.callbacks import LOGGERS, Callback, Logger
from aelab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from aelab.data import DATASETS, ImageData, load_dataset
from aelab.doctor import Doctor, check
from aelab.errors import AelabError, ConfigError, DataError, DivergenceError, RunFolderError, SetupFindingsError
from aelab.evaluate import Validation, evaluate, evaluate_run
from aelab.explain import explain
from aelab.likelihoods import LIKELIHOODS, Likelihood
from aelab.losses import LOSS_FLOORS, LOSSES
from aelab.nn.activations import ACTIVATIONS
from aelab.nn.models import INITS, MODELS, build_model
from aelab.regularizers import NOISES, PENALTIES
from aelab.report import render_report
from aelab.runs import Run, load_run
from aelab.sweep import SweepSpec, run_sweep
from aelab.train import OPTIMIZERS, RunState, TrainResult, resume, train, train_ensemble

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "DATASETS",
    "INITS",
    "LIKELIHOODS",
    "LOGGERS",
    "LOSSES",
    "LOSS_FLOORS",
    "MODELS",
    "NOISES",
    "OPTIMIZERS",
    "PENALTIES",
    "AelabError",
    "Callback",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DivergenceError",
    "Doctor",
    "ImageData",
    "Likelihood",
    "Logger",
    "ModelConfig",
    "Run",
    "RunConfig",
    "RunFolderError",
    "RunState",
    "SetupFindingsError",
    "SweepSpec",
    "TrainConfig",
    "TrainResult",
    "Validation",
    "__version__",
    "build_model",
    "check",
    "evaluate",
    "evaluate_run",
    "explain",
    "load_dataset",
    "load_run",
    "render_report",
    "resume",
    "run_sweep",
    "train",
    "train_ensemble",
]
