"""What `aelab explain` is made of: a `Question` (a public thread) holds its `Experiment`s
(ordinary sweeps in the output folder), a `measure` function from those sweeps to numbers, and
its `Claim`s; each claim's `decide` turns the measured numbers into a `Verdict`.

Every conclusion the pages print is a `Verdict.sentence` written by a `decide` function from
the numbers it was given; nothing else in `aelab.explain` writes answer text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aelab.config import DataConfig, RunConfig
from aelab.sweep import SweepSpec

VERDICTS = ("supported", "contradicted", "depends")

Measured = Mapping[str, Any]  # a question's measured numbers by name (floats, a few short texts and series)


@dataclass(frozen=True)
class Verdict:
    """A claim judged on measured numbers.

    verdict: one of VERDICTS ("depends": the sentence says on what).
    sentence: the answer in words, every number in it taken from `numbers`.
    numbers: the measured values that decided it, by name (floats or short texts).
    threshold: the rule that decided it, in words with its value."""

    verdict: str
    sentence: str
    numbers: dict[str, Any]
    threshold: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")


@dataclass(frozen=True)
class Claim:
    """One claim of a thread. id: short name; text: the claim as the thread makes it; source:
    who makes it (the question, an answer, a comment); decide: measured numbers -> Verdict;
    quick: how `--quick` (fewer seeds and epochs) weakens this verdict, or None when it does not."""

    id: str
    text: str
    source: str
    decide: Callable[[Measured], Verdict]
    quick: str | None = None


@dataclass(frozen=True)
class Budget:
    """How much an explain run trains: the seeds of each setting, the epochs of the blob and
    Keras experiments, and the epochs of the softmax thread's model (5 as posted)."""

    quick: bool
    seeds: tuple[int, ...]
    epochs: int
    posted_epochs: int

    @classmethod
    def choose(cls, quick: bool) -> Budget:
        if quick:
            return cls(quick=True, seeds=(0,), epochs=4, posted_epochs=2)
        return cls(quick=False, seeds=(0, 1), epochs=10, posted_epochs=5)


@dataclass(frozen=True)
class Experiment:
    """One sweep of a question, trained into OUT/QUESTION/NAME. what: what it varies, in words."""

    name: str
    what: str
    spec: SweepSpec


@dataclass(frozen=True)
class Setup:
    """What every experiment starts from: the user's data settings and the budget."""

    data: DataConfig
    budget: Budget

    def base(
        self, model: Mapping[str, Any], train: Mapping[str, Any], data: Mapping[str, Any] | None = None
    ) -> RunConfig:
        """A run config on the user's data with these model and train settings."""
        raw = {"data": {**self.data.__dict__, **(data or {})}, "model": dict(model), "train": dict(train)}
        raw["data"] = {k: v for k, v in raw["data"].items() if v is not None}
        return RunConfig.from_dict(raw)


@dataclass(frozen=True)
class Figure:
    """A figure of the answer page: a caption and a function drawing it from the measured numbers
    onto a `matplotlib.figure.Figure`."""

    caption: str
    draw: Callable[[Measured, Any], None]


@dataclass(frozen=True)
class Question:
    """A thread and the experiments and claims that answer it.

    name: the word on the command line (blob, keras, floor, softmax); thread: the file in the
    questions folder; title: the question in one line; experiments: Setup -> the sweeps;
    measure: (sweep results by experiment name, Setup) -> measured numbers; claims: in page
    order; short: the ids of the claims whose sentences are the terminal's short answer;
    figures: the page's figures; notes: what the experiments leave out (e.g. a likelihood
    another issue adds), as plain method notes."""

    name: str
    thread: str
    title: str
    experiments: Callable[[Setup], list[Experiment]]
    measure: Callable[[Mapping[str, Any], Setup], dict[str, Any]]
    claims: tuple[Claim, ...]
    short: tuple[str, ...]
    figures: tuple[Figure, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def claim(self, claim_id: str) -> Claim:
        for claim in self.claims:
            if claim.id == claim_id:
                return claim
        raise KeyError(claim_id)


# --- small helpers the decide functions share


def finite(*values: Any) -> bool:
    """Whether every value is a finite number."""
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def unmeasured(numbers: dict[str, Any], what: str) -> Verdict:
    """The verdict when the numbers a claim needs are missing or not finite (a run diverged)."""
    return Verdict(
        "depends",
        f"Not decided: {what} could not be measured on this data (a run diverged or was left out).",
        numbers,
        "needs finite measurements",
    )


def fmt(value: Any, digits: int = 4) -> str:
    """A number as the pages print it, to `digits` significant digits: 0.04253, 1.300e-05, 12.5, nan."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def percent(value: float) -> str:
    return f"{100 * value:.0f}%" if finite(value) else str(value)
