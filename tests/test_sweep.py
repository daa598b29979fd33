import csv
import json

import pytest

from aelab import RunConfig
from aelab.errors import ConfigError, RunFolderError
from aelab.runs import read_metrics, read_status, write_status
from aelab.sweep import DEFAULT_BASE, SweepSpec, load_sweep_file, parse_grid, run_sweep

from .conftest import TINY

TINY_BASE = RunConfig.from_dict({**TINY, "train": {**TINY["train"], "epochs": 1}})


def test_command_line_grid_expands_to_every_combination_in_order():
    grid = parse_grid(["loss=bce,mse", "activation=sigmoid,relu", "optimizer=adam,sgd", "seed=0,1,2"])
    points = SweepSpec(TINY_BASE, grid).points()
    assert len(points) == 24 and len({p.name for p in points}) == 24
    assert points[0].name == "loss-bce_activation-sigmoid_optimizer-adam_seed-0"
    assert points[1].values == {"loss": "bce", "activation": "sigmoid", "optimizer": "adam", "seed": 1}
    assert points[-1].values == {"loss": "mse", "activation": "relu", "optimizer": "sgd", "seed": 2}
    last = points[-1].config
    assert (last.train.loss, last.model.activation, last.train.optimizer, last.train.seed) == ("mse", "relu", "sgd", 2)
    assert last.data == TINY_BASE.data and last.train.epochs == 1  # the rest comes from the base


def test_grid_values_are_typed_by_their_field():
    grid = parse_grid(["lr=1e-2,0.001", "train.loss=cb", "hidden=[128,64],100,none", "latent=4", "patience=none,3"])
    points = SweepSpec(TINY_BASE, grid).points()
    assert {p.config.train.learning_rate for p in points} == {0.01, 0.001}
    assert {p.config.model.hidden_dims for p in points} == {(128, 64), (100,), ()}
    assert {p.config.train.patience for p in points} == {None, 3}
    assert all(p.config.train.loss == "cb" and p.config.model.latent_dim == 4 for p in points)
    assert "lr-0.01_loss-cb_hidden-128x64_latent-4_patience-none" in {p.name for p in points}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["los=bce"], "unknown grid key 'los'"),
        (["loss"], "the grid takes KEY=VALUE"),
        (["lr=fast"], "grid key lr: 'fast' is not a number"),
        (["lr=0.1", "train.learning_rate=0.2"], "name the same field"),
        (["loss=hinge"], "unknown loss 'hinge'"),
        (["epochs=0"], "train.epochs must be at least 1"),
    ],
)
def test_bad_grids_fail_before_training_with_one_clear_message(items, message):
    with pytest.raises(ConfigError, match=message):
        SweepSpec(TINY_BASE, parse_grid(items)).points()


def test_default_grid_is_four_losses_times_two_activations_on_the_measured_settings():
    points = SweepSpec().points()
    assert [(p.config.train.loss, p.config.model.activation) for p in points] == [
        (loss, activation) for loss in ("bce", "mse", "mae", "cb") for activation in ("sigmoid", "relu")
    ]
    config = points[0].config
    assert config.data.name == "mnist-10k"
    assert (config.model.hidden_dims, config.model.latent_dim, config.model.output_activation) == (
        (100,),
        50,
        "sigmoid",
    )
    assert (config.train.optimizer, config.train.learning_rate, config.train.epochs) == ("adam", 0.01, 20)


def test_sweep_file_sets_the_base_and_grid_and_fixed_axes_leave_the_default_grid(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("train: {epochs: 3}\ngrid:\n  lr: [1e-2, 1e-3]\n  seed: [0, 1]\n")
    points = load_sweep_file(path).points()
    assert [p.values for p in points] == [{"lr": lr, "seed": s} for lr in (0.01, 0.001) for s in (0, 1)]
    assert all(p.config.train.epochs == 3 and p.config.model.latent_dim == 50 for p in points)
    path.write_text("train: {loss: mse}\n")  # no grid: the default one, less the loss axis fixed here
    assert [p.values for p in load_sweep_file(path).points()] == [{"activation": "sigmoid"}, {"activation": "relu"}]
    path.write_text("grids: {loss: [bce]}\n")
    with pytest.raises(ConfigError, match="unknown key 'grids' in sweep file"):
        load_sweep_file(path)
    assert DEFAULT_BASE.train.learning_rate == 0.01


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "grid"
    spec = SweepSpec(TINY_BASE, parse_grid(["loss=bce,mse", "activation=relu"]))
    return spec, out, run_sweep(spec, out)


def test_sweep_writes_a_run_folder_per_point_and_results_with_every_metric(tiny_sweep):
    _, out, result = tiny_sweep
    assert result.trained == ["loss-bce_activation-relu", "loss-mse_activation-relu"] and not result.skipped
    with (out / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(row["run"], row["loss"], row["activation"]) for row in rows] == [
        ("loss-bce_activation-relu", "bce", "relu"),
        ("loss-mse_activation-relu", "mse", "relu"),
    ]
    for key in ("mse", "mae", "psnr", "ssim", "bce", "bce_excess", "cb_nll", "intensity_bias", "blob_score",
                "sharpness", "probe_accuracy", "state", "epochs_done", "val_loss"):  # fmt: skip
        assert key in rows[0], key
    for row in rows:
        history = read_metrics(out / row["run"])
        assert row["state"] == "finished" and row["epochs_done"] == "1"
        # Equal footing: the table's MSE is the one the trainer measured on the validation split.
        assert float(row["mse"]) == pytest.approx(history[-1]["val_mse"], rel=1e-4)
        assert float(row["ssim"]) == pytest.approx(history[-1]["val_ssim"], rel=1e-4)
        assert 0 <= float(row["probe_accuracy"]) <= 1
    as_json = json.loads((out / "results.json").read_text())
    assert [row["run"] for row in as_json] == [row["run"] for row in rows]
    assert as_json[0]["mse"] == pytest.approx(float(rows[0]["mse"]), rel=1e-5)
    assert (out / "sweep.yaml").exists()


def test_rerun_skips_finished_runs_and_finishes_a_killed_one(tiny_sweep):
    spec, out, _ = tiny_sweep
    kept = out / "loss-bce_activation-relu" / "model.safetensors"
    before = (kept.read_bytes(), kept.stat().st_mtime_ns)
    killed = out / "loss-mse_activation-relu"
    write_status(killed, "running", epochs_done=0)  # as if killed before it finished
    (killed / "model.safetensors").unlink()
    result = run_sweep(spec, out)
    assert result.skipped == ["loss-bce_activation-relu"]
    assert result.resumed == ["loss-mse_activation-relu"] and result.trained == []
    assert (kept.read_bytes(), kept.stat().st_mtime_ns) == before
    assert read_status(killed)["state"] == "finished" and (killed / "model.safetensors").exists()
    again = run_sweep(spec, out)
    assert again.skipped == [p.name for p in again.points] and not again.trained and not again.resumed


def test_a_finished_folder_with_another_config_is_never_overwritten(tiny_sweep):
    _, out, _ = tiny_sweep
    other = SweepSpec(TINY_BASE.replace(train={"epochs": 2}), parse_grid(["loss=bce", "activation=relu"]))
    model = out / "loss-bce_activation-relu" / "model.safetensors"
    before, recorded = model.read_bytes(), (out / "sweep.yaml").read_text()
    # The sweep was made with another base config: refused, saying what differs (issue 10).
    with pytest.raises(RunFolderError, match=r"another base config \(train.epochs is 1 there, 2 here\)"):
        run_sweep(other, out)
    # Extending the sweep with it would put another config into a run folder of that name.
    with pytest.raises(RunFolderError, match=r"has another config than .* \(train.epochs is 1 there, 2 here\)"):
        run_sweep(other, out, extend=True)
    assert model.read_bytes() == before and (out / "sweep.yaml").read_text() == recorded
