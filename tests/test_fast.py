import copy
import json
import os

import pytest
import torch
from safetensors import safe_open

from aelab import RunConfig, load_run, train
from aelab.data import load_dataset
from aelab.errors import ConfigError
from aelab.likelihoods import LIKELIHOODS
from aelab.losses import LOSSES
from aelab.nn.activations import ACTIVATIONS, OUTPUT_ONLY
from aelab.train import OPTIMIZERS, RunState
from aelab.train.checkpoint import checkpoint_bytes, load_checkpoint
from aelab.train.fast import ACTIVATION_GRADIENTS, optimizer_step
from aelab.train.loop import run_epoch
from aelab.train.stacking import train_ensemble
from aelab.train.steps import make_step
from aelab.train.threads import _running_here, choose_threads, usable_cores

from .conftest import TINY

HIDDEN = [a for a in ACTIVATIONS if a not in OUTPUT_ONLY]


# Trainers built directly do not apply train.threads; on a busy 2-core machine two threads are
# many times slower (the fixture is in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(model: dict | None = None, **train_values) -> RunConfig:
    return RunConfig.from_dict(
        {**TINY, "model": {**TINY["model"], **(model or {})}, "train": {**TINY["train"], **train_values}}
    )


def train_both(config: RunConfig, steps: int = 3) -> tuple[RunState, RunState, list[tuple[float, float]]]:
    data = load_dataset(config.data)
    reference = RunState(config.replace(train={"engine": "autograd"}), data)
    fast = RunState(config.replace(train={"engine": "fast"}), data)
    assert (reference.engine, fast.engine) == ("autograd", "fast")
    reference_step, fast_step = make_step([reference]), make_step([fast])
    losses = []
    for step in range(steps):
        images = reference.batch(torch.arange(step * 32, step * 32 + 32))[None]  # (1, B, C, H, W)
        losses.append((float(reference_step(images)[0]), float(fast_step(images)[0])))
    return reference, fast, losses


def assert_same_weights(first: torch.nn.Module, second: torch.nn.Module, atol: float) -> None:
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=atol), f"{name} differs by {(a - b).abs().max():.2e}"


def test_every_hidden_activation_has_a_gradient():
    assert set(ACTIVATION_GRADIENTS) == set(HIDDEN)


@pytest.mark.parametrize("activation", HIDDEN)
@pytest.mark.parametrize("loss", [name for name in LOSSES if LIKELIHOODS[name].parameters_per_pixel == 1])
def test_fast_step_equals_autograd_for_every_activation_and_loss(activation, loss):
    # SGD passes gradient differences straight into the weights (Adam would rescale them).
    config = tiny({"activation": activation, "code_activation": "tanh"}, loss=loss, optimizer="sgd", learning_rate=0.5)
    reference, fast, losses = train_both(config)
    for autograd_loss, fast_loss in losses:
        assert fast_loss == pytest.approx(autograd_loss, rel=1e-5, abs=1e-6)
    assert_same_weights(reference.model, fast.model, atol=1e-6)
    assert not torch.equal(reference.model.encoder[0].weight, RunState(config, reference.data).model.encoder[0].weight)


@pytest.mark.parametrize(
    "model",
    [
        {"output_activation": "softmax", "activation": "relu"},
        {"output_activation": "linear"},
        {"output_activation": "tanh", "tied": True},
        {"tied": True, "hidden_dims": [16, 8]},
        {"hidden_dims": []},
    ],
)
@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_fast_step_equals_autograd_for_other_outputs_and_shapes(model, loss):
    config = tiny(model, loss=loss, optimizer="sgd", learning_rate=0.5)
    reference, fast, _ = train_both(config)
    assert_same_weights(reference.model, fast.model, atol=1e-6)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_fused_optimizers_follow_the_same_path(optimizer):
    config = tiny(optimizer=optimizer, learning_rate=0.01, momentum=0.5 if optimizer in ("sgd", "rmsprop") else 0.0)
    reference, fast, _ = train_both(config, steps=4)
    assert_same_weights(reference.model, fast.model, atol=1e-5)


def test_engine_fast_refuses_a_conv_model_and_auto_falls_back():
    config = tiny({"kind": "conv", "hidden_dims": [4], "latent_dim": 4})
    data = load_dataset(config.data)
    assert RunState(config, data).engine == "autograd"
    with pytest.raises(ConfigError, match="engine fast"):
        RunState(config.replace(train={"engine": "fast"}), data)
    with pytest.raises(ConfigError, match=r"train\.engine"):
        tiny(engine="jit")


def test_fast_engine_checkpoint_resumes_bit_identically(tmp_path, tiny_config):
    data = load_dataset(tiny_config.data)
    straight = RunState(tiny_config, data)
    assert straight.engine == "fast"
    run_epoch(straight)
    (tmp_path / "ckpt").write_bytes(checkpoint_bytes(straight))
    run_epoch(straight)
    resumed = RunState(tiny_config, data)
    load_checkpoint(resumed, tmp_path / "ckpt")
    run_epoch(resumed)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    strip = lambda row: {k: v for k, v in row.items() if k != "seconds"}  # noqa: E731
    assert strip(straight.history[-1]) == strip(resumed.history[-1])


def test_threads_follow_step_size_and_only_the_load_rule_follows_other_load():
    cores = usable_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    # "auto" (the default): the step's size and the cores, whatever else is running
    assert choose_threads(8 * 784) == 1
    assert choose_threads(256 * 784) == cores
    assert choose_threads(256 * 784, busy=cores + 3) == cores
    # "load": less the cores other programs keep busy
    assert choose_threads(8 * 784, "load", busy=0) == 1
    assert choose_threads(256 * 784, "load", busy=0) == cores
    assert choose_threads(256 * 784, "load", busy=cores + 3) == 1
    assert choose_threads(256 * 784, "load", busy=1) == max(1, cores - 1)


def test_cb_head_normaliser_matches_the_loss_module_on_both_sides_of_the_series_switch():
    from aelab.losses import cb_log_normalizer
    from aelab.train.fast import _cb_log_normalizer_and_gradient

    logits = torch.tensor([0.0, 1e-6, -0.005, 0.0199, -0.0201, 0.5, -3.0, 30.0, -80.0], dtype=torch.float64)
    leaf = logits.clone().requires_grad_()
    expected = cb_log_normalizer(leaf)
    (expected_gradient,) = torch.autograd.grad(expected.sum(), leaf)
    log_c, gradient = _cb_log_normalizer_and_gradient(logits)
    assert torch.isfinite(log_c).all() and torch.isfinite(gradient).all()
    assert torch.allclose(log_c, expected.detach(), rtol=1e-12, atol=1e-15)
    assert torch.allclose(gradient, expected_gradient, rtol=1e-10, atol=1e-12)


def test_own_worker_threads_do_not_count_as_other_load():
    # torch's worker threads spin after a parallel region; counted as another program's work
    # they made aelab pick one thread right after any computation.
    import hashlib
    import threading

    buffer = bytes(300 * 2**20)
    worker = threading.Thread(target=hashlib.sha256, args=(buffer,))  # runs without the GIL
    worker.start()
    seen = 0
    while worker.is_alive():
        seen = max(seen, _running_here())
    worker.join()
    assert seen >= 2  # this thread and the hashing one: both ours, and not "elsewhere"


@pytest.mark.parametrize(
    ("make", "options"),
    [
        (torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.1}),
        (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
        (torch.optim.Adam, {"lr": 0.01, "amsgrad": True}),
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    ],
)
def test_optimizer_step_equals_the_optimizers_own_step(make, options):
    torch.manual_seed(0)
    shapes = [(5, 3), (5,), (2, 5)]
    ours = [torch.randn(shape) for shape in shapes]
    theirs = [p.clone() for p in ours]
    fused = {"fused": True} if make is not torch.optim.SGD else {}
    first, second = make(ours, **options, **fused), make(theirs, **options, **fused)
    calls = 0
    original = first.step

    def counted_step(*args, **kwargs):
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    first.step = counted_step
    for step in range(4):
        grads = [torch.randn(shape) for shape in shapes]
        for a, b, grad in zip(ours, theirs, grads, strict=True):
            a.grad, b.grad = grad.clone(), grad.clone()
        if step == 2:  # a state dict loaded mid-run (as a resume does) is picked up
            first.load_state_dict(copy.deepcopy(second.state_dict()))
        optimizer_step(first)
        second.step()
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(first.state.values(), second.state.values(), strict=True):
        assert all(torch.equal(a[key], b[key]) for key in b)
    direct = make is not torch.optim.SGD and not options.get("amsgrad")
    # Adam and AdamW's fused kernel: only the first step (which creates the state) goes through
    # Optimizer.step; others always do.
    assert calls == (1 if direct else 4)


def test_ensemble_mixes_activations_that_run_in_place_with_those_that_cannot(tmp_path):
    configs = [
        tiny({"activation": activation, "code_activation": code}, loss=loss, epochs=1)
        for activation, code, loss in [
            ("relu", "relu", "bce"),
            ("elu", "relu", "bce"),
            ("sigmoid", "gelu", "mse"),
            ("tanh", "linear", "cb"),
        ]
    ]
    results = train_ensemble(configs, progress=False)
    for config, result in zip(configs, results, strict=True):
        solo = train(config, progress=False)
        expected = pytest.approx(strip_seconds(solo.history)[0], rel=1e-5, abs=1e-7, nan_ok=True)
        assert strip_seconds(result.history)[0] == expected
        assert_same_weights(result.model, solo.model, atol=1e-6)


def grid(epochs: int = 2) -> list[RunConfig]:
    configs = []
    for loss in ("bce", "mse", "mae", "cb"):
        for activation in ("sigmoid", "relu"):
            for seed in (0, 1):
                optimizer = {"optimizer": "sgd", "learning_rate": 0.5, "momentum": 0.9} if seed else {}
                configs.append(tiny({"activation": activation}, loss=loss, seed=seed, epochs=epochs, **optimizer))
    return configs


def strip_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_ensemble_members_equal_their_solo_runs_and_write_the_same_folders(tmp_path):
    configs = [*grid(), tiny({"output_activation": "softmax"}, loss="mse", learning_rate=0.02)]
    outs = [tmp_path / f"run{index}" for index in range(len(configs))]
    results = train_ensemble(configs, outs, progress=False)
    for config, out, result in zip(configs, outs, results, strict=True):
        solo = train(config, tmp_path / "solo", progress=False, overwrite=True, doctor=False, report=False)
        for row, solo_row in zip(strip_seconds(result.history), strip_seconds(solo.history), strict=True):
            assert row.keys() == solo_row.keys()
            for key, value in row.items():
                assert value == pytest.approx(solo_row[key], rel=1e-4, abs=1e-6, nan_ok=True), (config.train, key)
        assert_same_weights(result.model, solo.model, atol=1e-5)
        assert {p.name for p in out.iterdir()} == {p.name for p in (tmp_path / "solo").iterdir()}
        assert json.loads((out / "status.json").read_text())["state"] == "finished"
        run = load_run(out)
        assert run.config == config
        assert json.dumps(strip_seconds(run.history)) == json.dumps(strip_seconds(result.history))  # NaN-safe
        with (
            safe_open(out / "checkpoint.safetensors", "pt") as ours,
            safe_open(tmp_path / "solo" / "checkpoint.safetensors", "pt") as theirs,
        ):
            keys = ours.keys()
            assert set(keys) == set(theirs.keys())
            for key in keys:
                if key.startswith("optimizer/"):
                    assert torch.allclose(ours.get_tensor(key), theirs.get_tensor(key), rtol=1e-3, atol=1e-6), key


def test_ensemble_checkpoint_resumes_as_a_solo_run(tmp_path):
    config = grid(epochs=2)[0]
    train_ensemble([config, config.replace(train={"seed": 5})], [tmp_path / "a", tmp_path / "b"], progress=False)
    data = load_dataset(config.data)
    resumed = RunState(config, data)
    load_checkpoint(resumed, tmp_path / "a" / "checkpoint.safetensors")
    run_epoch(resumed)  # a third epoch from the ensemble's state
    straight = RunState(config, data)
    for _ in range(3):
        run_epoch(straight)
    assert resumed.history[-1]["val_loss"] == pytest.approx(straight.history[-1]["val_loss"], rel=1e-5)


def test_ensemble_shares_batches_on_request_and_falls_back_for_other_runs():
    configs = grid(epochs=1)[:2]  # seeds 0 and 1
    shared = train_ensemble(configs, progress=False, share_batches=True)
    own = train_ensemble(configs, progress=False)
    assert shared[0].history[-1]["train_loss"] == pytest.approx(own[0].history[-1]["train_loss"], rel=1e-6)
    assert shared[1].history[-1]["train_loss"] != pytest.approx(own[1].history[-1]["train_loss"], rel=1e-6)
    conv = tiny({"kind": "conv", "hidden_dims": [4], "latent_dim": 4}, epochs=1)
    stopping = tiny(epochs=1, patience=1)
    results = train_ensemble([conv, stopping, configs[0]], progress=False)
    assert [len(r.history) for r in results] == [1, 1, 1]
    assert strip_seconds(results[2].history) == strip_seconds(own[0].history)
    with pytest.raises(ValueError, match="output folders"):
        train_ensemble(configs, [None])


def test_a_diverging_member_is_marked_diverged_and_the_others_finish(tmp_path):
    from aelab.doctor import Doctor
    from aelab.findings import read_findings

    healthy = grid(epochs=2)[0]
    wild = healthy.replace(train={"learning_rate": 1e4, "seed": 3})
    alone = tiny({"kind": "conv", "hidden_dims": [4], "latent_dim": 4}, epochs=1, learning_rate=1e4)
    outs = [tmp_path / "healthy", tmp_path / "wild", tmp_path / "alone"]
    doctors: list[Doctor] = []

    def make_doctor() -> list[Doctor]:
        doctors.append(Doctor())
        return [doctors[-1]]

    results = train_ensemble([healthy, wild, alone], outs, progress=False, make_callbacks=make_doctor)
    assert len(doctors) == 3  # one per run: the doctor keeps per-run state
    assert "diverged" not in results[0].extras and results[0].history[-1]["epoch"] == 2
    assert json.loads((outs[0] / "status.json").read_text())["state"] == "finished"
    solo = train(healthy, progress=False)
    assert strip_seconds(results[0].history)[-1]["val_loss"] == pytest.approx(solo.history[-1]["val_loss"], rel=1e-4)
    for result, out in zip(results[1:], outs[1:], strict=True):  # stacked and alone alike
        assert "lower the learning rate" in result.extras["diverged"]
        assert json.loads((out / "status.json").read_text())["state"] == "diverged"
        assert "divergence" in {finding.id for finding in read_findings(out)}
        assert not (out / "model.safetensors").exists()
        assert (out / "checkpoint.safetensors").exists()  # the last good state is kept
        # the result holds the last good weights, not the diverged ones
        assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_cli_takes_the_engine_and_rejects_an_unknown_one(tmp_path, capsys):
    from aelab.cli import main

    from .conftest import TINY_FLAGS

    assert main(["train", *TINY_FLAGS, "--engine", "jit", "--out", str(tmp_path / "bad")]) == 2
    assert "train.engine must be auto, autograd or fast" in capsys.readouterr().err
    assert main(["train", *TINY_FLAGS, "--engine", "autograd", "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert load_run(tmp_path / "run").config.train.engine == "autograd"
