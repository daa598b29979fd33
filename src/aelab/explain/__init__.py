"""`aelab explain`: the classic questions about autoencoders on MNIST-like images, answered with
experiments on the user's own data.

Each question (`QUESTIONS`: blob, keras, floor, softmax) is a `Question` record: its experiments
are ordinary sweeps in the output folder, a measure function reads their numbers, and each
`Claim` of the thread has a decision function from those numbers to a `Verdict` (supported,
contradicted or depends), its sentence and the threshold that decided it. `explain` runs them
and writes answers.md, answers.html and answers.json.
"""

from aelab.explain.records import VERDICTS, Budget, Claim, Experiment, Figure, Question, Setup, Verdict
from aelab.explain.run import QUESTIONS, Answer, ExplainResult, choose_questions, explain, short_answer

__all__ = [
    "QUESTIONS",
    "VERDICTS",
    "Answer",
    "Budget",
    "Claim",
    "Experiment",
    "ExplainResult",
    "Figure",
    "Question",
    "Setup",
    "Verdict",
    "choose_questions",
    "explain",
    "short_answer",
]
