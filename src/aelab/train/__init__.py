"""Training: one loop for one run or many stacked ones, with pluggable steps.

- `state`: `RunState`, one run's training state (what a checkpoint holds, what callbacks see);
  `OPTIMIZERS`; `check_config`.
- `checkpoint`: the state as one safetensors file, and back.
- `divergence`: the guard that stops a run whose loss or weights blow up.
- `steps`: `AutogradStep`, `FastStep`, `StackedStep` behind one interface, and the tables that
  classify every config field for the fast step and for stacking.
- `fast`: the hand-written dense step's kernels and fused optimizer calls.
- `threads`: how many CPU threads a run uses, applied for a block only.
- `loop`: `fit`, the one training loop.
- `run`: `train` and `resume`, one run from a config or its folder.
- `stacking`: `train_ensemble`, many runs with the runs that can share matmuls stacked.
"""

from aelab.train.loop import TrainResult
from aelab.train.run import resume, train
from aelab.train.stacking import train_ensemble
from aelab.train.state import OPTIMIZERS, RunState

__all__ = ["OPTIMIZERS", "RunState", "TrainResult", "resume", "train", "train_ensemble"]
