import math

import pytest
from PIL import Image
from scipy.optimize import brentq

from aelab.cli import main

TARGETS = [0.5, 0.3, 0.5, 0.9]
PREDICTIONS = [0.1, 0.3, 0.5, 0.8]


def _cb_nll(x: float, lam: float) -> float:
    """Continuous Bernoulli NLL written out: -log C(lam) - x log lam - (1 - x) log(1 - lam)."""
    log_c = math.log(2.0) if abs(lam - 0.5) < 1e-9 else math.log(2 * math.atanh(1 - 2 * lam) / (1 - 2 * lam))
    return -(log_c + x * math.log(lam) + (1 - x) * math.log(1 - lam))


def _cb_mean(lam: float) -> float:
    return 0.5 if abs(lam - 0.5) < 1e-9 else lam / (2 * lam - 1) + 1 / (2 * math.atanh(1 - 2 * lam))


def _lam_for_mean(mean: float) -> float:
    return 0.5 if mean == 0.5 else brentq(lambda lam: _cb_mean(lam) - mean, 1e-12, 1 - 1e-12, xtol=1e-15)


def _printed(capsys) -> dict[str, list[str]]:
    """The calculator's table rows by loss name: [name, value, floor, excess, where...]."""
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        words = line.split()
        if len(words) > 4 and words[0] in ("bce", "mse", "mae", "cb"):
            try:
                float(words[1])
            except ValueError:
                continue
            rows[words[0]] = words
    return rows


def test_loss_calculator_example_matches_values_computed_by_hand(capsys):
    assert main(["loss", "--target", "0.5,0.3,0.5,0.9", "--pred", "0.1,0.3,0.5,0.8"]) == 0
    rows = _printed(capsys)
    pairs = list(zip(TARGETS, PREDICTIONS, strict=True))
    bce = sum(-(t * math.log(p) + (1 - t) * math.log(1 - p)) for t, p in pairs) / 4
    entropy = sum(-(t * math.log(t) + (1 - t) * math.log(1 - t)) for t in TARGETS) / 4
    cb = sum(_cb_nll(t, _lam_for_mean(p)) for t, p in pairs) / 4
    cb_floor = sum(_cb_nll(t, _lam_for_mean(t)) for t in TARGETS) / 4
    expected = {
        "bce": (bce, entropy),
        "mse": (sum((p - t) ** 2 for t, p in pairs) / 4, 0.0),  # 0.0425
        "mae": (sum(abs(p - t) for t, p in pairs) / 4, 0.0),  # 0.125
        "cb": (cb, cb_floor),
    }
    for name, (value, floor) in expected.items():
        printed_value, printed_floor, printed_excess = (float(v) for v in rows[name][1:4])
        assert printed_value == pytest.approx(value, abs=6e-5), name
        assert printed_floor == pytest.approx(floor, abs=6e-5), name
        assert printed_excess == pytest.approx(value - floor, abs=1e-4), name
    assert rows["mse"][1] == "0.0425" and rows["mae"][1] == "0.1250"
    assert " ".join(rows["bce"][4:]).startswith("prediction = target")
    # cb is minimal where its mean equals the target, not where lambda does: 0.3 -> lambda 0.065
    assert f"{_lam_for_mean(0.3):.3f}" in " ".join(rows["cb"])


def test_cb_floor_is_minus_infinity_for_targets_exactly_0_or_1(capsys):
    assert main(["loss", "--target", "0,1", "--pred", "0.2,0.9"]) == 0
    rows = _printed(capsys)
    assert rows["cb"][2] == "-inf" and rows["cb"][3] == "inf"
    assert rows["bce"][2] == "0.0000"  # binary targets: BCE's floor is 0


def test_loss_plot_draws_a_png(tmp_path, capsys):
    path = tmp_path / "curves.png"
    assert main(["loss", "--target", "0,0.3,0.5,0.8,1", "--plot", str(path)]) == 0
    assert f"curves: {path}" in capsys.readouterr().out
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 600


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "0.5,0.3", "--pred", "0.1"], "2 targets but 1 predictions"),
        (["--target", "255", "--pred", "0.5"], "values must lie in [0, 1] (divide 0..255 pixels by 255)"),
        (["--target", "a", "--pred", "0.5"], "--target takes comma-separated numbers"),
        (["--target", "0.5"], "give --pred"),
    ],
)
def test_loss_command_user_errors(argv, message, capsys):
    assert main(["loss", *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("aelab: error: ") and message in error and error.count("\n") == 1
