import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from aelab import RunConfig, load_run
from aelab.cli import main
from aelab.findings import Finding, save_findings
from aelab.runs import save_model
from aelab.sweep import SweepSpec, parse_grid, run_sweep

from .conftest import TINY_FLAGS

# scikit-learn's 8x8 digits: small enough to train off the blob plateau in about a second,
# and it runs SSIM on images smaller than the paper's 11x11 window.
DIGITS_BASE = RunConfig.from_dict(
    {
        "data": {"name": "digits"},
        "model": {"hidden_dims": [32], "latent_dim": 8},
        "train": {"epochs": 5, "batch_size": 32, "learning_rate": 0.01, "threads": 1},
    }
)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """A tiny sweep of two runs; the mse run is then made to output one fixed image (a collapse)
    and the bce run gets a finding, as the diagnostics would attach."""
    out = tmp_path_factory.mktemp("report") / "sweep"
    run_sweep(SweepSpec(DIGITS_BASE, parse_grid(["loss=bce,mse", "activation=relu"])), out)
    collapsed = out / "loss-mse_activation-relu"
    run = load_run(collapsed)
    with torch.no_grad():
        run.model.decoder[-1].weight.zero_()  # logits = bias: the same image whatever the input
    save_model(collapsed, run.model, run.config)
    save_findings(
        out / "loss-bce_activation-relu",
        [
            Finding(
                "dead-units",
                "warning",
                "12 of 16 hidden units never fire",
                {"dead": 12},
                "ReLU units died.",
                "lower the learning rate",
                epoch=1,
            )
        ],
    )
    assert main(["report", str(out)]) == 0  # re-rendered from the folders alone
    return out


def test_report_shows_every_run_flags_the_collapse_in_words_and_shows_findings(sweep_dir):
    html = (sweep_dir / "report.html").read_text()
    assert html.count('<tr class="') == 2  # one summary row per run
    assert "bce · relu" in html and "mse · relu" in html
    assert "<b>mse · relu</b>" not in html
    failures = html.split("What went wrong", 1)[1].split("</section>", 1)[0]
    assert "mse · relu</span>: collapsed to a constant image" in failures
    assert "bce · relu</span>: collapsed" not in failures
    assert "warning: 12 of 16 hidden units never fire" in failures
    assert "lower the learning rate" in html and "dead = 12" in html
    assert "Most faithful: bce · relu" in html  # the collapsed run has the higher MSE
    # self-contained: every image is embedded, nothing is fetched
    assert html.count('src="data:image/png;base64,') == html.count("<img ") == 6
    assert "http://" not in html and "https://" not in html


def test_report_of_a_damaged_run_says_so_instead_of_failing(sweep_dir, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_dir, copy)
    (copy / "loss-bce_activation-relu" / "model.safetensors").write_bytes(b"not safetensors")
    path = Path(main(["report", str(copy), "--out", str(tmp_path / "r.html")]) == 0 and tmp_path / "r.html")
    html = path.read_text()
    assert "no model to evaluate" in html and "damaged" in html


def test_report_command_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("aelab: error: ")
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no run folders" in capsys.readouterr().err


def test_train_writes_a_report_for_its_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(out)]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert "1 run on <b>mnist-10k</b>" in html and html.count('<tr class="') == 1


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run_chromium(browser: str, profile: str, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120, check=False)


def test_report_opens_in_a_real_browser_with_every_image_loaded(sweep_dir, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium when it can); browser check not run")
    url = (sweep_dir / "report.html").resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        shot = tmp_path / "shot.png"
        done = _run_chromium(
            browser, profile, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars", url
        )
        assert shot.exists(), done.stderr[-2000:]
        dom = _run_chromium(browser, profile, "--virtual-time-budget=5000", "--dump-dom", url).stdout
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 2400)
    histogram = image.histogram()
    assert max(histogram) < 0.97 * sum(histogram), "the screenshot is (nearly) one colour: a blank page"
    assert len([count for count in histogram if count]) > 50  # text and figures give many grey levels
    assert 'data-images-loaded="6/6"' in dom, dom[-500:]


def test_compare_command_end_to_end_and_rerun_skips(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", *TINY_FLAGS, "--epochs", "1", "--grid", "loss=bce,cb", "--activation", "relu", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 runs (0 done before, 0 to resume, 2 to train)" in printed
    assert f"results: {out / 'results.csv'}" in printed and f"report: {out / 'report.html'}" in printed
    assert {p.name for p in out.iterdir()} >= {"loss-bce", "loss-cb", "results.csv", "results.json", "report.html"}
    assert main([*argv, "--no-report"]) == 0
    assert "2 runs (2 done before, 0 to resume, 0 to train)" in capsys.readouterr().out
