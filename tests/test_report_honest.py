"""The report says what the runs did, no more: each loss column agrees with the run's own
validation loss, training time adds up to the time it took, one collapse threshold for the
report and the doctor, nothing is "best" alone or when it collapsed, PCA axes in equal units,
and rendering leaves matplotlib's global state alone (issue 10 item 14, issue 11 point 6)."""

import re

import pytest

from aelab import RunConfig
from aelab.report import METRICS, render_report
from aelab.runs import read_metrics
from aelab.sweep import SweepSpec, parse_grid, run_sweep

from .conftest import TINY

OWN_COLUMN = {"bce": "bce", "mse": "mse", "mae": "mae", "cb": "cb_nll"}


@pytest.fixture(scope="module")
def loss_sweep(tmp_path_factory):
    """Four tiny runs, one per loss, trained stacked by the sweep, and their report."""
    out = tmp_path_factory.mktemp("honest") / "losses"
    base = RunConfig.from_dict({**TINY, "model": {**TINY["model"], "activation": "relu"}})
    result = run_sweep(SweepSpec(base, parse_grid(["loss=bce,mse,mae,cb"])), out)
    render_report(out, evaluations=result.evaluations)
    return out, result


def _table_rows(html: str) -> dict[str, list[str]]:
    """Summary table: run label -> the text of its cells after the name."""
    table = html.split("<h2>Summary</h2>", 1)[1].split("</table>", 1)[0]
    rows = {}
    for row in re.findall(r"<tr class=\"[^\"]*\">(.*?)</tr>", table, flags=re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)
        rows[re.sub(r"<span.*", "", cells[0]).strip()] = [re.sub(r"<[^>]+>", "", c).strip() for c in cells[1:]]
    return rows


def test_each_runs_own_loss_column_is_its_validation_loss(loss_sweep):
    out, result = loss_sweep
    html = (out / "report.html").read_text()
    table = _table_rows(html)
    cb_index = [m[0] for m in METRICS].index("cb_nll")
    for evaluation in result.evaluations:
        loss = evaluation.config.train.loss
        history = read_metrics(evaluation.run_dir)
        own = OWN_COLUMN[loss]
        # The column the report shows for the run's own loss is the number it trained towards.
        assert evaluation.metrics[own] == pytest.approx(history[-1]["val_loss"], rel=1e-6, abs=1e-9), loss
        for row in history:  # and so is metrics.jsonl's, every epoch
            assert row[f"val_{own}"] == pytest.approx(row["val_loss"], rel=1e-6, abs=1e-9), (loss, row["epoch"])
        if loss == "cb":
            assert table[loss][cb_index] == format(history[-1]["val_loss"], ".3f")
