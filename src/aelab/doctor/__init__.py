"""The doctor: finds what is wrong with an autoencoder set-up or training run, says why with the
numbers that show it, and says what to change.

- `check_setup(config, data)`: the checks made before training (data range, output activation,
  softmax, BCE floor, code width).
- `Doctor`: a `train.Callback` that runs those checks and monitors every epoch (blob, dead and
  saturated units, weight norms, gradients, NaN/Inf), keeping `findings.json` in the run folder.
- `check(model, data, loss=...)`: the same checks on any PyTorch autoencoder (a VAE returning
  `(recon, mu, logvar)` also gets the posterior checks of `aelab.doctor.posterior`).
- `diagnose_run(run_dir)`: the checks again, from a run folder alone; `recheck_run` also saves them.
"""

from aelab.doctor.check import check, check_setup, diagnose_run, recheck_run
from aelab.doctor.monitor import DOCTOR_IDS, Doctor, State, measure, state_findings
from aelab.doctor.probe import Subject
from aelab.doctor.setup import Setup, setup_findings

__all__ = [
    "DOCTOR_IDS",
    "Doctor",
    "Setup",
    "State",
    "Subject",
    "check",
    "check_setup",
    "diagnose_run",
    "measure",
    "recheck_run",
    "setup_findings",
    "state_findings",
]
