"""`aelab explain`: every claim's decision flips its verdict and sentence with the numbers, no
conclusion is written outside the decisions, the experiments are valid sweeps, and the command
writes its pages end to end."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from aelab.cli import main
from aelab.config import DataConfig
from aelab.errors import ConfigError
from aelab.explain import QUESTIONS, VERDICTS, Answer, Budget, ExplainResult, Setup, Verdict, choose_questions
from aelab.explain.page import render_html, render_markdown
from aelab.explain.softmax import simplex_projection


def _settings() -> list[dict]:
    return [
        {"setting": f"adam lr {lr}", "loss": loss, "failed_share": 0.0, "val_mse": 0.04, "escape_epochs": epochs}
        for lr, epochs in ((0.001, [None, None]), (0.01, [7, None]), (0.1, [6, 8]))
        for loss in ("bce", "mse")
    ]


BLOB = {
    "settings": _settings(),
    "blob_share_bce": 0.5,
    "blob_share_mse": 0.5,
    "settings_both_blob": ["adam lr 0.001"],
    "settings_both_escape": ["adam lr 0.01"],
    "best_val_mse_bce": 0.04,
    "best_val_mse_mse": 0.04,
    "best_val_mse_bce_adam": 0.04,
    "best_val_mse_bce_sgd": 0.04,
    "best_val_mse_mse_adam": 0.04,
    "best_val_mse_mse_sgd": 0.04,
    "weights_from_blobbed_runs": True,
    "first_weight_ratio_min": 1.0,
    "first_weight_ratio_max": 1.1,
    "saturation_blobbed": 0.3,
    "saturation_escaped": 0.6,
    "activation_lr": 0.001,
    "blob_share_sigmoid_at_lr": 1.0,
    "blob_share_relu_at_lr": 1.0,
    "selu_val_mse_bce": 0.03,
    "selu_val_mse_mse": 0.031,
    "selu_blob_share": 0.0,
    "bce_excess_above": 0.03,
    "bce_excess_below": 0.03,
    "mse_above": 0.01,
    "mse_below": 0.01,
    "minimiser_deviation_bce": 0.0,
    "minimiser_deviation_mse": 0.0,
    "minimiser_grid_step": 0.0005,
}


def _keras_run(**values: object) -> dict:
    return {
        "val_mse": 0.01,
        "val_bce": 0.1,
        "failed": False,
        "sharpness": 0.5,
        "relative_bias": 0.0,
        "outside_share": 0.0,
        "extreme_share": 0.9,
        "histogram": [1.0] * 50,
        **values,
    }


def _keras(**runs: dict) -> dict:
    names = [f"{o}-{loss}" for o in ("sigmoid", "relu", "linear") for loss in ("bce", "mse")]
    table = {name: _keras_run(**runs.get(name.replace("-", "_"), {})) for name in names}
    return {"runs": table, "target_extreme_share": 0.95, "target_histogram": [1.0] * 50, "histogram_range": [-0.5, 1.5]}


FLOOR = {
    "user_close": 0.7174,
    "user_exact": 0.5806,
    "user_entropy": 0.5806,
    "binary_exact": 1e-7,
    "argmin": [0.5, 0.3, 0.5, 0.9],
    "argmin_deviation": 0.0,
    "grid_step": 0.001,
    "bce_at_half_for_0.3": 0.693,
    "bce_at_target_for_0.3": 0.611,
    "grey_val_bce": 0.2,
    "grey_floor": 0.06,
    "grey_excess": 0.14,
    "grey_val_mse": 0.04,
    "grey_failed": False,
    "grey_share": 0.2,
    "exact_share": 0.8,
    "binary_floor": 0.0,
    "binary_val_bce": 0.1,
    "cb_floor": -math.inf,
    "cb_val_nll": -1.3,
    "cb_val_mse": 0.04,
    "cb_failed": False,
    "normalised_floor": 4.5,
    "uniform_entropy": 6.66,
    "dimmed_change": 0.0,
    "sum_variation": 0.3,
    "best_case_mse": 0.02,
}


def _softmax(**runs: dict) -> dict:
    names = ("as posted", "divide by 255", "sigmoid output", "both fixes", "both fixes, mse")
    base = {
        "val_bce": 0.1,
        "val_mse": 0.1,
        "blob_score": 0.0,
        "failed": True,
        "output_sum": 1.0,
        "output_mean": 0.001,
        "findings": ["softmax-output"],
    }
    table = {name: {**base, **runs.get(name, {})} for name in names}
    return {
        "runs": table,
        "unit": 255.0,
        "stored_above_one": True,
        "image_sum": 103.0,
        "target_mean": 0.13,
        "best_sum_one_mse": 0.1,
        "mean_image_mse": 0.067,
        "zero_image_mse": 0.1,
        "example": {},
    }


WORKS = {"failed": False, "blob_score": 0.4, "val_mse": 0.01}
# For every claim: (measured numbers where it holds, where it fails).
CASES = {
    ("blob", "bce-causes-blob"): ({**BLOB, "blob_share_bce": 1.0, "blob_share_mse": 0.0}, BLOB),
    ("blob", "bce-ill-suited"): ({**BLOB, "best_val_mse_bce": 0.06}, BLOB),
    ("blob", "weights-collapse"): ({**BLOB, "first_weight_ratio_min": 0.05, "first_weight_ratio_max": 0.08}, BLOB),
    ("blob", "saturation"): ({**BLOB, "saturation_blobbed": 0.95, "saturation_escaped": 0.5}, BLOB),
    ("blob", "relu-helps"): ({**BLOB, "blob_share_relu_at_lr": 0.0}, BLOB),
    ("blob", "bce-asymmetric"): ({**BLOB, "bce_excess_above": 0.044, "bce_excess_below": 0.026}, BLOB),
    ("blob", "same-minimiser"): (BLOB, {**BLOB, "minimiser_deviation_bce": 0.1}),
    ("blob", "selu-similar"): (BLOB, {**BLOB, "selu_val_mse_mse": 0.05}),
    ("blob", "sgd-worse"): ({**BLOB, "best_val_mse_bce_sgd": 0.07}, BLOB),
    ("keras", "sigmoid-fits"): (_keras(), _keras(sigmoid_mse={"val_mse": 0.02})),
    ("keras", "relu-output"): (_keras(), _keras(relu_mse={"failed": True}, relu_bce={"failed": True})),
    ("keras", "bce-appropriate"): (_keras(), _keras(sigmoid_bce={"failed": True})),
    ("keras", "bce-dims"): (_keras(sigmoid_bce={"relative_bias": -0.1}), _keras()),
    ("keras", "mse-as-well"): (_keras(), _keras(sigmoid_mse={"val_mse": 0.02})),
    ("keras", "mostly-binary"): (_keras(), {**_keras(), "target_extreme_share": 0.5}),
    ("floor", "user-numbers"): (FLOOR, {**FLOOR, "user_close": 0.8}),
    ("floor", "floor-is-entropy"): (FLOOR, {**FLOOR, "user_exact": 0.0}),
    ("floor", "minimum-at-target"): (FLOOR, {**FLOOR, "argmin_deviation": 0.2}),
    ("floor", "binarised-zero"): (FLOOR, {**FLOOR, "binary_floor": 0.05}),
    ("floor", "normalise"): ({**FLOOR, "normalised_floor": 0.0}, FLOOR),
    ("floor", "data-floor"): (FLOOR, {**FLOOR, "grey_floor": 0.0}),
    ("floor", "cb-density"): ({**FLOOR, "cb_floor": -0.5}, FLOOR),
    ("softmax", "sums-to-one"): (_softmax(), _softmax(**{"divide by 255": {"output_sum": 0.5}})),
    ("softmax", "cannot-draw"): (_softmax(), {**_softmax(), "best_sum_one_mse": 0.01}),
    ("softmax", "above-one"): (_softmax(**{"sigmoid output": {"val_bce": -100.0}}), _softmax()),
    ("softmax", "binary-only"): (_softmax(**{"both fixes": WORKS}), _softmax()),
    ("softmax", "fixed-works"): (_softmax(**{"both fixes": WORKS, "both fixes, mse": WORKS}), _softmax()),
    ("softmax", "fixes-together"): (
        _softmax(**{"both fixes": WORKS}),
        _softmax(**{"both fixes": WORKS, "divide by 255": WORKS}),
    ),
}


def test_every_claim_of_every_question_has_a_case_here():
    assert set(CASES) == {(q.name, c.id) for q in QUESTIONS.values() for c in q.claims}


@pytest.mark.parametrize(("question", "claim"), sorted(CASES))
def test_a_decision_flips_its_verdict_and_sentence_with_the_numbers(question, claim):
    decide = QUESTIONS[question].claim(claim).decide
    holds, fails = (decide(numbers) for numbers in CASES[question, claim])
    for verdict in (holds, fails):
        assert verdict.verdict in VERDICTS
        assert verdict.numbers and verdict.threshold and verdict.sentence
    assert holds.verdict != fails.verdict
    assert holds.sentence != fails.sentence
    # the sentence opens with its verdict, so a reader cannot get one without the other
    assert holds.sentence.lower().startswith(holds.verdict) or holds.verdict == "depends"


def test_the_blob_decision_follows_which_loss_blobbed():
    decide = QUESTIONS["blob"].claim("bce-causes-blob").decide
    mse_worse = decide({**BLOB, "blob_share_bce": 0.0, "blob_share_mse": 1.0})
    assert mse_worse.verdict == "contradicted" and "MSE blobbed more often" in mse_worse.sentence
    assert decide({**BLOB, "blob_share_bce": 1.0, "blob_share_mse": 0.0}).verdict == "supported"


def test_the_cb_verdict_follows_the_data_it_ran_on():
    decide = QUESTIONS["floor"].claim("cb-density").decide
    assert "-inf" in decide(FLOOR).sentence  # MNIST: exact zeros, no floor
    assert decide({**FLOOR, "cb_floor": -0.4}).verdict == "supported"


def test_data_in_unit_range_makes_the_above_one_claim_depend_on_the_data():
    verdict = QUESTIONS["softmax"].claim("above-one").decide({**_softmax(), "stored_above_one": False})
    assert verdict.verdict == "depends" and "stored in [0, 1]" in verdict.sentence


def _fake_result(tmp_path: Path) -> ExplainResult:
    """Every question with every decision replaced by a marker verdict: what the pages show
    besides the verdicts' own sentences."""
    setup = Setup(DataConfig(), Budget.choose(quick=True))
    answers = []
    for question in QUESTIONS.values():
        verdicts = [
            (c, Verdict("depends", f"MARKER-{question.name}-{c.id}", {"x": 1.0}, "RULE")) for c in question.claims
        ]
        answers.append(Answer(question, [], {}, {}, verdicts))
    return ExplainResult(tmp_path, setup, answers, 1.0)


def test_no_conclusion_is_written_outside_the_decisions(tmp_path):
    result = _fake_result(tmp_path)
    for page in (render_markdown(result, "aelab explain --quick"), render_html(result)):
        for question in QUESTIONS.values():
            for claim in question.claims:
                assert f"MARKER-{question.name}-{claim.id}" in page
        # all verdicts are "depends": no other text may conclude anything (the style sheet names the classes)
        text = re.sub(r"<style>.*?</style>", "", page, flags=re.DOTALL)
        assert not re.search(r"supported|contradicted", text, re.IGNORECASE)


def test_questions_are_chosen_by_name_and_an_unknown_one_is_refused():
    assert [q.name for q in choose_questions(["floor", "blob"])] == ["floor", "blob"]
    assert len(choose_questions(None)) == 4
    with pytest.raises(ConfigError, match="unknown question 'blobs'; valid: blob, keras, floor, softmax"):
        choose_questions(["blobs"])


@pytest.mark.parametrize("quick", [False, True])
def test_every_experiment_is_a_valid_sweep_on_the_users_data(quick):
    setup = Setup(DataConfig(name="digits", train_limit=100), Budget.choose(quick))
    for question in QUESTIONS.values():
        for experiment in question.experiments(setup):
            points = experiment.spec.points()  # every config valid and named
            assert points and all(p.config.data.name == "digits" for p in points)
            assert all(p.config.data.train_limit == 100 for p in points)
    assert Budget.choose(True).epochs < Budget.choose(False).epochs
    assert len(Budget.choose(True).seeds) < len(Budget.choose(False).seeds)


def test_explain_refuses_data_settings_it_sets_itself(tmp_path):
    from aelab.explain import explain

    with pytest.raises(ConfigError, match=r"data\.binarize and data\.scale"):
        explain(["floor"], tmp_path, data=DataConfig(binarize="threshold"))


def test_the_simplex_projection_is_the_nearest_output_summing_to_one():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(5, 20, generator=generator, dtype=torch.float64)
    projected = simplex_projection(images)
    assert torch.allclose(projected.sum(dim=1), torch.ones(5, dtype=torch.float64))
    assert (projected >= 0).all()
    others = torch.rand(200, 20, generator=generator, dtype=torch.float64)
    others = others / others.sum(dim=1, keepdim=True)
    for image, best in zip(images, projected, strict=True):
        assert (best - image).square().sum() <= (others - image).square().sum(dim=1).min()


def test_the_cli_names_an_unknown_question_in_one_line(tmp_path, capsys):
    assert main(["explain", "blobs", "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "unknown question 'blobs'" in error


def _check_markdown(text: str) -> None:
    """Headings, paragraphs and pipe tables whose rows all have the header's column count."""
    lines = text.splitlines()
    assert lines[0].startswith("# ")
    for index, line in enumerate(lines):
        if line.startswith("|") and index + 1 < len(lines) and set(lines[index + 1]) <= set("|-"):
            columns = line.count("|") - line.count("\\|")
            body = index + 2
            while body < len(lines) and lines[body].startswith("|"):
                assert lines[body].count("|") - lines[body].count("\\|") == columns, lines[body]
                body += 1
    markdown = pytest.importorskip("markdown")
    rendered = markdown.markdown(text, extensions=["tables"])
    assert rendered.count("<table>") == text.count("| # | claim |")
    assert "<h2>" in rendered


def test_explain_quick_end_to_end_on_a_small_dataset(tmp_path, capsys):
    out = tmp_path / "explain"
    flags = ["--dataset", "digits", "--train-limit", "300", "--val-limit", "100", "--out", str(out), "--quick"]
    assert main(["explain", *flags, "--quiet"]) == 0
    printed = capsys.readouterr().out
    for name in QUESTIONS:
        assert f"{name}: " in printed
    for page in ("answers.md", "answers.html", "answers.json"):
        assert (out / page).stat().st_size > 0
    answers = json.loads((out / "answers.json").read_text())
    assert [q["question"] for q in answers["questions"]] == list(QUESTIONS)
    for question in answers["questions"]:
        assert len(question["claims"]) == len(QUESTIONS[question["question"]].claims)
        for claim in question["claims"]:
            assert claim["verdict"] in VERDICTS and claim["sentence"] and claim["threshold"]
            assert claim["numbers"], claim["id"]
    text = (out / "answers.md").read_text()
    _check_markdown(text)
    assert "--quick" in text and "aelab explain --dataset digits" in text
    html = (out / "answers.html").read_text()
    assert html.count("data:image/png;base64,") >= 6  # the figures, inside the page
    # the experiments are ordinary sweep folders; a rerun trains nothing and gives the same verdicts
    assert (out / "blob" / "adam" / "sweep.yaml").exists() and (out / "blob" / "adam" / "results.csv").exists()
    assert main(["explain", *flags]) == 0
    assert "0 to train" in capsys.readouterr().out
    again = json.loads((out / "answers.json").read_text())
    assert [c["verdict"] for q in again["questions"] for c in q["claims"]] == [
        c["verdict"] for q in answers["questions"] for c in q["claims"]
    ]


def test_one_question_on_tiny_data_writes_pages_from_ordinary_sweeps(tmp_path):
    from aelab.explain import explain
    from aelab.runs import load_run

    data = DataConfig(name="digits", train_limit=64, val_limit=32)
    result = explain(["floor"], tmp_path / "out", data=data, quick=True)
    (answer,) = result.answers
    assert [c.id for c, _ in answer.verdicts] == [c.id for c in QUESTIONS["floor"].claims]
    assert all(v.numbers and v.threshold for _, v in answer.verdicts)
    # the user's own numbers do not depend on the data
    assert answer.measured["user_exact"] == pytest.approx(0.5806, abs=5e-5)
    for sweep in answer.sweeps.values():
        for point in sweep.points:
            run = load_run(sweep.out / point.name)
            assert run.finished and run.config.data.name == "digits"
            assert "explain_first_weight_ratio" in run.history[-1]
    text = (tmp_path / "out" / "answers.md").read_text()
    _check_markdown(text)
    assert "## 1. Binary cross-entropy is not zero" in text


def test_a_folder_of_another_explain_budget_is_refused_before_anything_trains(tmp_path):
    import yaml

    from aelab.errors import RunFolderError
    from aelab.explain import explain

    data = DataConfig(name="digits", train_limit=64, val_limit=32)
    quick = QUESTIONS["floor"].experiments(Setup(data, Budget.choose(quick=True)))[0]
    folder = tmp_path / "floor" / quick.name
    folder.mkdir(parents=True)
    (folder / "sweep.yaml").write_text(yaml.safe_dump(quick.spec.to_dict(), sort_keys=False))
    with pytest.raises(RunFolderError, match=r"train\.epochs is 4 there, 10 here"):
        explain(["floor"], tmp_path, data=data)
    assert sorted(p.name for p in folder.iterdir()) == ["sweep.yaml"]
    assert not (tmp_path / "floor" / "binarized").exists()
