"""The divergence guard: a training loss that is NaN or Inf, or that rises above
DIVERGENCE_FACTOR times the larger of 1 and the run's first loss, or weights that become NaN
or Inf, stop the run with a DivergenceError; the checkpoint on disk stays the last good one,
the folder is marked "diverged" and gets a "divergence" finding (`record_divergence`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from aelab.errors import DivergenceError
from aelab.findings import Finding, read_findings, save_findings
from aelab.runs import write_status

# A training loss above this many times max(1, |first loss|) counts as divergence: learning
# rates far too high (1e4 on the Keras model) push BCE from 0.69 to 1e4-1e5 within two steps
# without ever producing a NaN, while no working run climbs that far above where it started.
DIVERGENCE_FACTOR = 1000.0
# On an accelerator the step losses are read back this many times per epoch, not every step.
DIVERGENCE_CHECKS_PER_EPOCH = 8


class DivergenceGuard:
    """One run's yardstick (its first finite step loss) and the last finite loss it saw; both
    are checkpointed so a resumed run judges its losses as the uninterrupted one would."""

    def __init__(self, learning_rate: float, steps_per_epoch: int) -> None:
        self.learning_rate = learning_rate
        self.steps_per_epoch = steps_per_epoch
        self.reference_loss: float | None = None  # the first step's loss
        self.last_finite_loss: float | None = None

    @property
    def limit(self) -> float:
        return DIVERGENCE_FACTOR * max(1.0, abs(self.reference_loss or 0.0))

    def check_losses(self, losses: list[float], epoch: int, first_index: int) -> None:
        """Raise DivergenceError at the first of these step losses (steps first_index,
        first_index + 1, ... of epoch `epoch`, 0-based, that is not finite or has exploded."""
        for offset, value in enumerate(losses):
            step = epoch * self.steps_per_epoch + first_index + offset + 1
            if self.reference_loss is None and math.isfinite(value):
                self.reference_loss = value
            if not math.isfinite(value):
                raise self.error(step, epoch, value, f"the training loss became {value}")
            if value > self.limit:
                raise self.error(
                    step,
                    epoch,
                    value,
                    f"the training loss exploded to {value:.4g} (it started at {self.reference_loss:.4g}; "
                    f"the limit is {self.limit:.4g})",
                )
            self.last_finite_loss = value

    def check_weights(self, model: torch.nn.Module, epoch: int) -> None:
        """Raise DivergenceError when any weight is NaN or Inf (one synchronisation)."""
        finite = torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all()
        if not bool(finite):
            raise self.error((epoch + 1) * self.steps_per_epoch, epoch, math.nan, "the weights became NaN or Inf")

    def error(self, step: int, epoch: int, loss: float, what: str) -> DivergenceError:
        """The error for a divergence seen at global step `step` (1-based) in epoch `epoch`
        (0-based), its numbers in `.evidence`."""
        rate = self.learning_rate
        error = DivergenceError(
            f"training diverged at step {step} (epoch {epoch + 1}): {what}; lower the learning rate "
            f"(now {rate:g}, try {rate / 10:g}) or try another loss or activation"
        )
        error.evidence = {  # type: ignore[attr-defined]
            "step": step,
            "epoch": epoch + 1,
            "steps_per_epoch": self.steps_per_epoch,
            "learning_rate": rate,
            "loss": loss if math.isfinite(loss) else str(loss),
            "first_loss": self.reference_loss,
            "last_finite_loss": self.last_finite_loss,
            "limit": self.limit,
            "last_good_epoch": epoch,
        }
        return error

    def state(self) -> dict[str, Any]:
        return {"reference_loss": self.reference_loss, "last_finite_loss": self.last_finite_loss}

    def load_state(self, state: dict[str, Any]) -> None:
        self.reference_loss = state.get("reference_loss")
        self.last_finite_loss = state.get("last_finite_loss")


def record_divergence(run_dir: Path | None, error: DivergenceError, epochs_done: int, threads: int) -> DivergenceError:
    """Mark the run folder diverged and add a "divergence" finding; the checkpoint on disk is
    left as it is (the last good epoch, `epochs_done`). Returns the error to raise, naming
    that checkpoint."""
    evidence = dict(getattr(error, "evidence", {}))
    if run_dir is None:
        return error
    message = f"{error}; the last good checkpoint (epoch {epochs_done}) is kept in {run_dir}"

    def number(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    explanation = (
        f"At learning rate {number(evidence.get('learning_rate'))} the training loss went from "
        f"{number(evidence.get('first_loss'))} at the first step to {number(evidence.get('loss'))} at step "
        f"{evidence.get('step')} (last finite loss {number(evidence.get('last_finite_loss'))}). Steps that large "
        "overshoot, so the weights grow until the loss explodes or turns NaN."
    )
    finding = Finding(
        id="divergence",
        severity="error",
        title=f"training diverged at step {evidence.get('step')} (epoch {evidence.get('epoch')})",
        evidence=evidence,
        explanation=explanation,
        fix="lower the learning rate (10x is a good first step), or try another loss or activation",
        epoch=evidence.get("epoch"),
    )
    others = [f for f in read_findings(run_dir) if f.id != "divergence"]
    save_findings(run_dir, [*others, finding])
    write_status(
        run_dir, "diverged", epochs_done=epochs_done, step=evidence.get("step"), message=str(error), threads=threads
    )
    diverged = DivergenceError(message)
    diverged.evidence = evidence  # type: ignore[attr-defined]
    return diverged
