"""The loss explorer: an interactive page section where each loss is drawn against the
prediction for a target chosen with a slider, computed in the browser.

Every likelihood of `aelab.likelihoods.LIKELIHOODS` whose record gives `javascript` (its
per-element NLL of a prediction given as a pixel mean, its floor and its minimiser, the same
formulas as Python's) gets a panel: the curve, the floor (dashed), the minimiser (a cross),
the value at the prediction chosen with a second slider, and the value as far from the
target on the other side, which makes BCE's asymmetry visible (0.7 and 0.9 for a 0.8 target).
Plain JavaScript in the page: no server, nothing fetched. Every report.html holds it
(`aelab.report`), and `write_explorer` writes it as a page of its own (`aelab loss --html`).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from aelab.likelihoods import LIKELIHOODS
from aelab.report.loss_curves import PREDICTION_EDGE
from aelab.runs import atomic_write_text

DEFAULT_TARGET = 0.8
DEFAULT_PREDICTION = 0.7
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>aelab loss explorer</title>
<style>
  body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; margin: 24px 28px; }}
  h2 {{ font-size: 19px; }}
  code {{ background: #f0f1f3; padding: 1px 4px; border-radius: 3px; }}
  table {{ border-collapse: collapse; font-size: 13px; margin-top: 6px; }}
  th, td {{ padding: 5px 8px; border-bottom: 1px solid #e3e6ea; }}
  th {{ background: #f0f1f3; }}
  td.name, th.name {{ text-align: left; font-weight: 600; }}
</style>
</head>
<body>
{section}
</body>
</html>
"""


def explorer_section(target: float = DEFAULT_TARGET, prediction: float = DEFAULT_PREDICTION) -> str:
    """The explorer as an HTML section (its style, markup and script), starting at `target`
    and `prediction` (in [0, 1], on the sliders' 0.01 steps)."""
    from jinja2 import Environment, StrictUndefined

    for name, value in (("target", target), ("prediction", prediction)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"the explorer's {name} must lie in [0, 1]; got {value}")
    drawn = {name: record for name, record in LIKELIHOODS.items() if record.javascript}
    formulas = "{" + ", ".join(f"{name!r}: {record.javascript}" for name, record in drawn.items()) + "}"
    nats = [name for name, record in drawn.items() if record.unit == "nats"]
    template = importlib.resources.files("aelab").joinpath("templates", "loss_explorer.html").read_text("utf-8")
    environment = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template).render(
        names=list(drawn),
        labels={name: f"{name} (x: {r.mean_words})" if r.mean_words else name for name, r in drawn.items()},
        missing=[name for name in LIKELIHOODS if name not in drawn],
        formulas=formulas,
        edge=PREDICTION_EDGE,
        units=f", in nats for {', '.join(nats)}" if nats else "",
        target=f"{round(target, 2):g}",
        prediction=f"{round(prediction, 2):g}",
    )


def explorer_page(target: float = DEFAULT_TARGET, prediction: float = DEFAULT_PREDICTION) -> str:
    """The explorer as a self-contained HTML page."""
    return _PAGE.format(section=explorer_section(target, prediction))


def write_explorer(path: str | Path, target: float = DEFAULT_TARGET, prediction: float = DEFAULT_PREDICTION) -> Path:
    """Write the explorer page to `path` (atomically) and return the path."""
    path = Path(path)
    atomic_write_text(path, explorer_page(target, prediction))
    return path
