"""The report says what the runs did, no more: each loss column agrees with the run's own
validation loss, training time adds up to the time it took, one collapse threshold for the
report and the doctor, nothing is "best" alone or when it collapsed, PCA axes in equal units,
and rendering leaves matplotlib's global state alone (issue 10 item 14, issue 11 point 6)."""

import math
import re
import time
from pathlib import Path

import matplotlib
import pytest
import torch

from aelab import RunConfig
from aelab.data import load_dataset
from aelab.doctor.monitor import State, state_findings
from aelab.evaluate import Evaluation
from aelab.evaluate.metrics import COLLAPSE_BLOB_SCORE
from aelab.report import METRICS, build_rows, figure_codes, headline, render_report, table_cells
from aelab.report.loss_curves import plot_loss_curves
from aelab.runs import read_metrics
from aelab.sweep import SweepSpec, parse_grid, run_sweep
from aelab.train.stacking import train_ensemble

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
        assert f"val_{own}" in history[-1]
        for row in (row for row in history if f"val_{own}" in row):  # and so is metrics.jsonl's, every full epoch
            assert row[f"val_{own}"] == pytest.approx(row["val_loss"], rel=1e-6, abs=1e-9), (loss, row["epoch"])
        if loss == "cb":
            assert table[loss][cb_index] == format(history[-1]["val_loss"], ".3f")


def test_train_seconds_add_up_to_the_time_stacked_runs_took():
    configs = [
        RunConfig.from_dict(
            {
                "data": {"val_limit": 256},
                "model": {"hidden_dims": [64], "latent_dim": 8, "activation": "relu"},
                "train": {"epochs": 2, "batch_size": 64, "learning_rate": 0.01, "threads": 1, "loss": loss},
            }
        )
        for loss in ("bce", "mse", "mae", "cb")
    ]
    data = load_dataset(configs[0].data)
    started = time.perf_counter()
    results = train_ensemble(configs, data=data, progress=False)
    wall = time.perf_counter() - started
    seconds = [sum(row["seconds"] for row in result.history) for result in results]
    assert all(value > 0 for value in seconds)
    # Each stacked run is charged its share of the group's step, so the runs' times add up to at
    # most the wall time (before, each one counted the whole step: about 4x the wall time).
    assert sum(seconds) <= wall


def test_report_states_the_training_time_the_column_adds_up_to(loss_sweep):
    out, result = loss_sweep
    html = (out / "report.html").read_text()
    total = sum(row["seconds"] for e in result.evaluations for row in read_metrics(e.run_dir))
    shown = f"{total:.0f}" if total >= 10 else f"{total:.2g}"
    assert f"Training took {shown} s" in html
    assert "charged an equal share" in html


# --- built evaluations: the report's judgement without training


def _evaluation(
    name: str, mse: float, blob: float = 0.8, sharpness: float = 0.9, state: str = "finished", loss: str = "bce"
) -> Evaluation:
    config = RunConfig.from_dict({"train": {"loss": loss}})
    metrics = {
        "mse": mse,
        "mae": mse * 2,
        "psnr": -10 * math.log10(mse),
        "ssim": 0.5,
        "bce": 0.2,
        "bce_excess": 0.1,
        "cb_nll": -1.0,
        "intensity_bias": 0.0,
        "blob_score": blob,
        "sharpness": sharpness,
        "probe_accuracy": 0.5,
    }
    history = [{"epoch": 1, "seconds": 1.5, "train_loss": 0.2, "val_loss": 0.2, "val_mse": mse, "val_blob_score": blob}]
    return Evaluation(Path("/nowhere") / name, config, {"state": state}, history, [], metrics)


def _state(variation_ratio: float) -> State:
    """A model whose loss closed nearly all the gap to the floor: only its variation can make
    the doctor call it a blob."""
    return State(
        epoch=3, loss="mse", images=256, loss_value=0.002, mean_image_loss=0.07, loss_floor=0.0, mse=0.002,
        mean_image_mse=0.07, variation_ratio=variation_ratio, distance_to_mean_image=0.5, layer_stats=[],
        weights={}, reference_weights={}, reference="initial", gradients={},
    )  # fmt: skip


def test_the_doctor_and_the_report_share_one_collapse_threshold():
    for score in (0.05, 0.12, 0.15, 0.19, 0.21, 0.4, math.nan):
        blob_errors = [f for f in state_findings(_state(score)) if f.id == "blob" and f.severity == "error"]
        evaluation = _evaluation("run", 0.05, blob=score)
        assert bool(blob_errors) == evaluation.collapsed == (score < COLLAPSE_BLOB_SCORE), score


def test_a_run_the_doctor_calls_an_error_level_blob_gets_the_collapsed_badge():
    score = 0.15  # the run: the doctor said error, the report said nothing
    assert [f.severity for f in state_findings(_state(score)) if f.id == "blob"] == ["error"]
    blob, fine = _evaluation("blob", 0.05, blob=score), _evaluation("fine", 0.03)
    rows = build_rows([blob, fine], ["blob", "fine"], ["blob", "fine"])
    cells = table_cells(rows)
    assert ("collapsed", "COLLAPSED") in cells[0]["flags"] and cells[0]["css"] == "collapsed"
    assert not cells[1]["flags"]


def test_a_single_run_report_names_no_best_and_stars_nothing(loss_sweep, tmp_path):
    out, _ = loss_sweep
    for evaluation, kind in ((_evaluation("alone", 0.05, blob=0.02), "bad"), (_evaluation("alone", 0.03), "neutral")):
        rows = build_rows([evaluation], ["alone"], ["alone"])
        assert not any(cell["best"] for cell in table_cells(rows)[0]["cells"])
        cards = headline(rows)
        assert [card.get("kind") for card in cards] == [kind]
        assert not any(word in card["title"] for card in cards for word in ("Most faithful", "Sharpest"))
        html = render_report(out, tmp_path / f"{kind}.html", evaluations=[evaluation]).read_text()
        assert "Most faithful" not in html and "Sharpest" not in html and 'class="best"' not in html
        assert f'class="card {kind}"' in html and "One run: alone" in html


def test_a_collapsed_or_diverged_run_is_never_most_faithful_or_sharpest():
    evaluations = [
        _evaluation("blob", 0.01, blob=0.05, sharpness=1.0),  # lowest MSE, perfect sharpness, collapsed
        _evaluation("nan", 0.02, sharpness=1.0, state="diverged"),
        _evaluation("good", 0.03, sharpness=0.7),
        _evaluation("fair", 0.04, sharpness=0.5, loss="mse"),
    ]
    labels = [e.name for e in evaluations]
    rows = build_rows(evaluations, labels, labels)
    cards = headline(rows)
    titles = [card["title"] for card in cards]
    assert titles[:2] == ["Most faithful: good", "Sharpest: good"]
    assert "Not ranked: blob (collapsed), nan (diverged)" in cards[0]["text"]
    assert cards[2]["title"] == "Losses ranked by their best run's MSE"
    assert not any(f"({name})" in line for line in cards[2]["lines"] for name in ("blob", "nan"))
    cells = table_cells(rows)
    assert not any(cell["best"] for row in cells[:2] for cell in row["cells"])
    assert all(cell["best"] for cell in cells[2]["cells"][:1])  # good has the lowest MSE of the ranked runs


def test_pca_panels_use_the_same_units_on_both_axes(monkeypatch):
    drawn = []
    monkeypatch.setattr("aelab.report.figures._figure_png", lambda figure: drawn.append(figure) or "png")
    line = _evaluation("line", 0.03)
    x = torch.linspace(-3, 3, 200).double().numpy()
    line.codes_2d = torch.stack([torch.tensor(x), torch.zeros(200, dtype=torch.float64)], dim=1).numpy()
    line.explained = (1.0, 0.0)  # "100% + 0%": a line, and it must look like one
    assert figure_codes([line], ["line"]) == "png"
    (axis,) = [a for a in drawn[0].axes if a.get_visible()]
    assert axis.get_aspect() == 1.0
    drawn[0].draw_without_rendering()  # the limits after the equal-aspect adjustment
    (left, right), (bottom, top) = axis.get_xlim(), axis.get_ylim()
    width, height = axis.get_window_extent().width, axis.get_window_extent().height
    assert (right - left) / width == pytest.approx((top - bottom) / height, rel=1e-6)


def test_rendering_a_report_keeps_the_users_backend_and_pyplot_figures(loss_sweep, tmp_path):
    import matplotlib.pyplot as plt

    out, result = loss_sweep
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a backend the user chose
    mine = plt.figure()
    try:
        figures = plt.get_fignums()
        render_report(out, tmp_path / "report.html", evaluations=result.evaluations)
        plot_loss_curves()
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == figures and plt.gcf() is mine
    finally:
        plt.close(mine)
        matplotlib.use(before)
