"""The loss explorer: its JavaScript against aelab.likelihoods, and its sliders in a real Chromium."""

import dataclasses
import json
import math
import re

import pytest
import torch

from aelab.cli import main
from aelab.likelihoods import LIKELIHOODS
from aelab.report.loss_curves import elementwise_loss
from aelab.report.loss_explorer import explorer_section, write_explorer

from .browser import KEYS, Browser

TARGETS = [0.0, 1e-3, 0.01, 0.3, 0.5, 0.8, 0.99, 1.0]
PREDICTIONS = [0.0, 1e-9, 1e-3, 0.05, 0.3, 0.5, 0.7, 0.8, 0.9, 0.999, 1.0]


def python_loss(name: str, target: float, prediction: float) -> float:
    as_double = {"dtype": torch.float64}
    return float(
        elementwise_loss(name, torch.tensor([prediction], **as_double), torch.tensor([target], **as_double))[0]
    )


def python_floor(name: str, target: float) -> float:
    return float(LIKELIHOODS[name].lowest(torch.tensor([[target]], dtype=torch.float64))[0])


def close(shown: float, expected: float, tolerance: float) -> bool:
    if math.isinf(expected) or math.isnan(expected):
        return shown == expected or (math.isnan(shown) and math.isnan(expected))
    return abs(shown - expected) <= tolerance * max(1.0, abs(expected))


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    path = write_explorer(tmp_path_factory.mktemp("explorer") / "explorer.html")
    with Browser() as browser:
        browser.open(path.resolve().as_uri())
        yield browser


def test_the_pages_formulas_are_pythons(explorer):
    names = [name for name, record in LIKELIHOODS.items() if record.javascript]
    assert names == list(LIKELIHOODS)  # every built-in likelihood is drawn
    pairs = [(t, p) for t in TARGETS for p in PREDICTIONS]
    # Non-finite numbers travel as text ("-Infinity", "NaN"), which float() reads back.
    numbers = json.loads(
        explorer.evaluate(
            f"(() => {{ const E = window.aelabLossExplorer; const out = {{}}; for (const name of {json.dumps(names)}) "
            f"out[name] = {json.dumps(pairs)}.map(([t, p]) => E.evaluate(name, t, p)); return JSON.stringify(out, "
            "(key, value) => typeof value === 'number' && !Number.isFinite(value) ? String(value) : value); })()"
        )
    )
    for name in names:
        for (target, prediction), shown in zip(pairs, numbers[name], strict=True):
            shown = {key: float(value) for key, value in shown.items()}
            assert close(shown["value"], python_loss(name, target, prediction), 1e-9), (name, target, prediction)
            assert close(shown["floor"], python_floor(name, target), 1e-9), (name, target)
            minimiser = shown["minimiser"]
            if math.isnan(python_floor(name, target)):  # a floor not computed (beta): none to reach
                continue
            if math.isnan(minimiser):  # no minimiser: the floor is -inf, no prediction reaches it
                assert python_floor(name, target) == -math.inf
                continue
            # The page's minimiser reaches Python's floor (bce to its Keras clip, 1e-7 at a target
            # of 0 or 1), and no prediction does better.
            assert close(python_loss(name, target, minimiser), python_floor(name, target), 2e-7), (name, target)
            grid = [python_loss(name, target, p) for p in PREDICTIONS]
            assert min(grid) >= python_floor(name, target) - 1e-9


def shown_values(browser: Browser) -> dict:
    return browser.evaluate(
        """(() => { const out = {}; for (const row of document.querySelectorAll('#le-table tbody tr')) {
            out[row.dataset.loss] = {}; for (const cell of row.querySelectorAll('[data-field]'))
            out[row.dataset.loss][cell.dataset.field] = cell.textContent; } return {
            target: document.getElementById('le-target-value').textContent,
            prediction: document.getElementById('le-prediction-value').textContent,
            mirror: document.getElementById('le-mirror-value').textContent,
            asymmetry: document.getElementById('le-asymmetry').textContent,
            panels: document.querySelectorAll('#le-panels svg').length, rows: out }; })()"""
    )


def as_shown(value: float) -> str:
    if math.isnan(value):
        return "none"
    return f"{value:.4f}" if math.isfinite(value) else ("-inf" if value < 0 else "inf")


def check_against_python(state: dict, target: float, prediction: float) -> None:
    assert float(state["target"]) == pytest.approx(target) and float(state["prediction"]) == pytest.approx(prediction)
    mirror = 2 * target - prediction
    for name, cells in state["rows"].items():
        value, floor = python_loss(name, target, prediction), python_floor(name, target)
        expected = {"value": value, "floor": floor, "excess": value - floor}
        if 0 <= mirror <= 1:
            expected["mirror"] = python_loss(name, target, mirror)
        for field, number in expected.items():
            shown = cells[field]
            if not math.isfinite(number):
                assert shown == as_shown(number), (name, field)
            else:  # four decimals shown: within half a unit of the last digit
                assert abs(float(shown) - number) <= 5.01e-5, (name, field, shown, number)


def slider_box(browser: Browser, slider: str) -> list[float]:
    return browser.evaluate(
        f"(() => {{ const r = document.getElementById('{slider}').getBoundingClientRect(); "
        "return [r.left, r.top, r.width, r.height]; })()"
    )


def press(browser: Browser, slider: str, key: str, times: int = 1) -> None:
    browser.evaluate(f"document.getElementById('{slider}').focus()")
    code, key_code = KEYS[key]
    for _ in range(times):
        browser.press(key, code, key_code)


def test_moving_both_sliders_shows_pythons_numbers(explorer):
    state = shown_values(explorer)
    assert state["panels"] == len(LIKELIHOODS)
    check_against_python(state, 0.8, 0.7)  # the page opens on BCE's asymmetry: 0.7 and 0.9 for 0.8
    bce = state["rows"]["bce"]
    assert bce["value"] == "0.5261" and bce["mirror"] == "0.5448" and state["mirror"] == "0.90"
    assert state["rows"]["mse"]["value"] == state["rows"]["mse"]["mirror"] == "0.0100"
    differ, same = state["asymmetry"].split("; the same for ")
    assert "bce 0.5261 vs 0.5448" in differ and "mse" in same and "mae" in same and "bce" not in same

    left, top, width, height = slider_box(explorer, "le-target")
    explorer.click(left + 1, top + height / 2)  # a click at the slider's left end: target 0
    check_against_python(shown_values(explorer), 0.0, 0.7)
    state = shown_values(explorer)
    assert state["rows"]["cb"]["floor"] == "-inf" and state["rows"]["cb"]["minimiser"] == "none"
    assert state["rows"]["bce"]["floor"] == "0.0000"

    explorer.click(left + width / 2, top + height / 2)  # the middle: target 0.5
    check_against_python(shown_values(explorer), 0.5, 0.7)

    press(explorer, "le-target", "End")  # target 1
    check_against_python(shown_values(explorer), 1.0, 0.7)
    press(explorer, "le-prediction", "Home")
    press(explorer, "le-prediction", "ArrowRight", 3)  # prediction 0.03
    check_against_python(shown_values(explorer), 1.0, 0.03)

    press(explorer, "le-target", "ArrowLeft", 70)  # target 0.3
    left, top, width, height = slider_box(explorer, "le-prediction")
    explorer.click(left + width - 1, top + height / 2)  # prediction 1
    check_against_python(shown_values(explorer), 0.3, 1.0)
    assert shown_values(explorer)["mirror"] == "outside [0, 1]"


def test_every_report_holds_the_explorer(tmp_path, capsys):
    from .conftest import TINY_FLAGS

    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert html.count('id="loss-explorer"') == 1 and "window.aelabLossExplorer" in html
    with Browser() as browser:
        browser.open((out / "report.html").resolve().as_uri())
        check_against_python(shown_values(browser), 0.8, 0.7)
        press(browser, "le-target", "Home")
        check_against_python(shown_values(browser), 0.0, 0.7)


def test_loss_command_writes_a_self_contained_page(tmp_path, capsys):
    path = tmp_path / "explorer.html"
    assert main(["loss", "--html", str(path)]) == 0
    assert capsys.readouterr().out == f"loss explorer: {path}\n"
    html = path.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html) and "fetch(" not in html and "<link" not in html
    assert 'id="le-target" type="range" min="0" max="1" step="0.01" value="0.8"' in html
    assert main(["loss", "--target", "0.3,0.5", "--pred", "0.6,0.5", "--html", str(path)]) == 0
    assert "bce" in capsys.readouterr().out  # the table is printed as before
    assert (
        'value="0.3"' in path.read_text()
        and 'id="le-prediction" type="range" min="0" max="1" step="0.01" value="0.6"' in path.read_text()
    )
    assert main(["loss", "--pred", "0.5", "--html", str(path)]) == 2
    assert main(["loss"]) == 2
    assert "--html FILE for the loss explorer" in capsys.readouterr().err


def test_a_likelihood_without_javascript_is_listed_not_drawn(monkeypatch):
    monkeypatch.setitem(LIKELIHOODS, "mse2", dataclasses.replace(LIKELIHOODS["mse"], name="mse2", javascript=None))
    section = explorer_section()
    assert "Not plotted (their records give no <code>javascript</code> formula): mse2." in section
    assert 'data-loss="mse2"' not in section
