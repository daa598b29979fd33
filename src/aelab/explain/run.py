"""`explain`: run each question's experiments as sweeps in OUT/QUESTION/NAME (finished runs are
reused, unfinished ones resumed), measure, decide every claim, and write answers.md,
answers.html and answers.json in OUT."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aelab.config import DataConfig
from aelab.errors import ConfigError, RunFolderError
from aelab.explain import blob, floor, keras, softmax
from aelab.explain.measure import FirstLayerNorm
from aelab.explain.records import Budget, Claim, Experiment, Question, Setup, Verdict
from aelab.runs import atomic_write_text
from aelab.sweep import SweepResult, run_sweep

QUESTIONS: dict[str, Question] = {q.name: q for q in (blob.QUESTION, keras.QUESTION, floor.QUESTION, softmax.QUESTION)}

ANSWERS_MD = "answers.md"
ANSWERS_HTML = "answers.html"
ANSWERS_JSON = "answers.json"


@dataclass
class Answer:
    """One question answered: its experiments and their sweeps, what was measured, and each
    claim with its verdict, in the question's order."""

    question: Question
    experiments: list[Experiment]
    sweeps: dict[str, SweepResult]
    measured: dict[str, Any]
    verdicts: list[tuple[Claim, Verdict]]

    def short(self) -> list[tuple[Claim, Verdict]]:
        """The claims whose verdicts make the short answer."""
        return [(c, v) for c, v in self.verdicts if c.id in self.question.short]


@dataclass
class ExplainResult:
    """What `explain` did: the output folder, the answers, the pages and the seconds it took."""

    out: Path
    setup: Setup
    answers: list[Answer]
    seconds: float
    pages: dict[str, Path] = field(default_factory=dict)


def choose_questions(names: Iterable[str] | None) -> list[Question]:
    """The questions called `names` in the order given (all four for None or none); a
    ConfigError listing the valid names for any other name."""
    chosen = list(names or [])
    if not chosen:
        return list(QUESTIONS.values())
    unknown = [name for name in chosen if name not in QUESTIONS]
    if unknown:
        raise ConfigError(f"unknown question {unknown[0]!r}; valid: {', '.join(QUESTIONS)}")
    return [QUESTIONS[name] for name in dict.fromkeys(chosen)]


def explain(
    questions: Iterable[str] | None = None,
    out: str | Path = "runs/explain",
    *,
    data: DataConfig | None = None,
    quick: bool = False,
    echo: Callable[[str], None] | None = None,
    progress: bool = False,
    command: str | None = None,
) -> ExplainResult:
    """Answer the questions called `questions` (keys of QUESTIONS; None: all) with experiments
    on `data` (the user's data settings; default mnist-10k), trained into `out`.

    Each question's experiments are ordinary sweeps in OUT/QUESTION/NAME (`aelab.run_sweep`):
    a rerun reuses the finished runs and finishes the unfinished ones, so an interrupted explain
    run picks up where it stopped. quick: one seed and fewer epochs (the pages say how that
    weakens each verdict). command: the command line that asked, for the pages' header.
    Writes OUT/answers.md, OUT/answers.html and OUT/answers.json."""
    from aelab.explain.page import render_html, render_json, render_markdown

    data = data or DataConfig()
    if data.binarize != "none" or data.scale != "auto":
        raise ConfigError(
            "aelab explain sets data.binarize and data.scale itself, per experiment; leave them at none and auto"
        )
    chosen = choose_questions(questions)
    setup = Setup(data, Budget.choose(quick))
    say = echo or (lambda line: None)
    out = Path(out)
    planned = {question.name: question.experiments(setup) for question in chosen}
    for name, experiments in planned.items():
        for experiment in experiments:
            check_folder(out / name / experiment.name, experiment)
    started = time.perf_counter()
    answers = []
    for question in chosen:
        say(f"{question.name}: {question.title}")
        experiments = planned[question.name]
        sweeps = {}
        for experiment in experiments:
            sweeps[experiment.name] = run_sweep(
                experiment.spec,
                out / question.name / experiment.name,
                progress=progress,
                echo=say,
                make_callbacks=lambda: [FirstLayerNorm()],
            )
        measured = question.measure(sweeps, setup)
        verdicts = [(claim, claim.decide(measured)) for claim in question.claims]
        answers.append(Answer(question, experiments, sweeps, measured, verdicts))
    result = ExplainResult(out, setup, answers, time.perf_counter() - started)
    out.mkdir(parents=True, exist_ok=True)
    for name, render in ((ANSWERS_MD, render_markdown), (ANSWERS_HTML, render_html), (ANSWERS_JSON, render_json)):
        atomic_write_text(out / name, render(result, command))
        result.pages[name] = out / name
    return result


def check_folder(folder: Path, experiment: Experiment) -> None:
    """Refuse, before anything trains, an experiment folder that an explain run with other
    settings (--quick, other data) made: its runs answer another question."""
    from aelab.sweep import read_sweep
    from aelab.sweep.grid import _config_difference

    recorded = read_sweep(folder) if folder.is_dir() else None
    if recorded is None or any(spec.same_runs(experiment.spec) for spec in recorded.specs):
        return
    difference = _config_difference(experiment.spec.base, recorded.specs[0].base)
    raise RunFolderError(
        template="{folder} holds the runs of an explain run with other settings ({difference}: another budget "
        "or other data); choose another {out}, or remove that folder to train it again",
        folder=folder,
        difference=difference,
    )


def short_answer(answer: Answer) -> list[str]:
    """The terminal's lines for one question: its name and title, then each short claim's
    verdict with the first sentence of its answer."""
    lines = [f"{answer.question.name}: {answer.question.title}"]
    for claim, verdict in answer.short():
        lines.append(f"  {claim.id}: {first_sentence(verdict.sentence)}")
    return lines


def first_sentence(text: str) -> str:
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def plain(value: Any) -> Any:
    """`value` with non-finite floats as text, for JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dump(value: Any) -> str:
    return json.dumps(plain(value), indent=1)
