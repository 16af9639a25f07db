import json
import re
import subprocess
import sys

import pytest

from pmoe.analysis.rates import fit_rate, needed_per_x, samples_needed
from pmoe.cli import build_parser, main
from pmoe.experiments import sample_complexity

TINY = ["--data", "synthetic", "--samples", "30", "--test-samples", "40", "--n", "6", "--d", "12", "--epochs", "2"]


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ck")
    assert main(["train", "--model", "pmoe", "-l", "2", *TINY, "--out", str(out), "--json"]) == 0
    return out


def test_train_json_has_the_promised_fields(checkpoint):
    cfg = json.loads((checkpoint / "config.json").read_text())
    assert cfg["model"]["l"] == 2 and cfg["result"]["epochs"] == 2
    assert {"test_accuracy", "train_accuracy", "epochs", "seconds", "params"} <= cfg["result"].keys()


def test_json_is_the_one_stdout_line_and_progress_goes_to_stderr_unless_quiet(tmp_path, capsys):
    args = ["train", "--model", "pmoe", "-l", "2", *TINY, "--json"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 1 and json.loads(out.out)["epochs"] == 2 and "train" in out.err
    assert main([*args, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 1 and out.err == ""


def test_eval_reproduces_the_training_result(checkpoint, capsys):
    assert main(["eval", str(checkpoint), "--json"]) == 0
    out = last_json(capsys)
    saved = json.loads((checkpoint / "config.json").read_text())["result"]
    assert out["test_accuracy"] == saved["test_accuracy"] and out["params"] == saved["params"]


def test_route_reports_each_expert_against_chance(checkpoint, capsys):
    assert main(["route", str(checkpoint), "--json"]) == 0
    out = last_json(capsys)
    assert out["chance"] == pytest.approx(2 / 6) and len(out["per_expert"]) == 8
    assert main(["route", str(checkpoint)]) == 0
    assert "chance (l/n) = 0.333" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["train", "--model", "pmoe", "-l", "7", *TINY, "--out", "{tmp}/a"], "l=7"),
    (["train", "--model", "pmoe", "-l", "0", *TINY, "--out", "{tmp}/a"], "l=0"),
    (["train", "--data", "fashion-patches", "--data-dir", "{tmp}/nowhere", "--samples", "10", "--out", "{tmp}/b"],
     "nowhere"),
    (["eval", "{tmp}/missing"], "does not exist"),
    (["eval", "{tmp}/cnn/config.json"], "is a file, not a folder"),
    (["train", "--data", "fashion-patches", "--data-dir", "{tmp}/cnn/config.json", "--samples", "10", "--out",
      "{tmp}/c"], "is a file, not a folder"),
    (["route", "{tmp}/cnn"], "has no routers"),
])
def test_bad_input_is_a_clear_error_without_traceback(tmp_path, capsys, args, message):
    main(["train", "--model", "cnn", *TINY, "--out", str(tmp_path / "cnn")])
    capsys.readouterr()
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    main(["train", "--model", "cnn", *TINY, "--out", str(tmp_path)])
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    capsys.readouterr()
    assert main(["eval", str(tmp_path)]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err


def test_unknown_model_name_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "transformer", "--out", "x"])
    assert e.value.code == 2 and "invalid choice: 'transformer'" in capsys.readouterr().err


def test_console_script_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "pmoe.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("train", "eval", "route", "experiment", "hf-prune"):
        assert command in out.stdout


def test_sample_complexity_experiment_writes_json_plot_and_table(tmp_path, capsys):
    args = ["experiment", "sample-complexity", "--out", str(tmp_path), "--data", "synthetic", "--samples", "20", "40",
            "--seeds", "2", "--epochs", "2", "--models", "cnn", "pmoe:l=2", "--workers", "1", "--json"]
    assert main(args) == 0
    summary = last_json(capsys)
    results = json.loads((tmp_path / "results.json").read_text())
    assert summary["runs"] == len(results["runs"]) == 2 * 2 * 2
    assert (tmp_path / "accuracy_vs_samples.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "results.md").read_text()
    assert "| N | cnn | pmoe:l=2 |" in table and "reaches the CNN's accuracy" in table


def test_n_over_l_experiment_reports_samples_needed(tmp_path, capsys):
    args = ["experiment", "sample-complexity", "--mode", "n-over-l", "--quick", "--out", str(tmp_path),
            "--samples", "20", "--seeds", "1", "--epochs", "1", "--models", "cnn", "pmoe", "--workers", "1", "--json"]
    assert main(args) == 0
    assert "samples_needed_vs_n_over_l" in " ".join(p.name for p in tmp_path.iterdir())
    report = last_json(capsys)["report"]
    assert "| n | n/l |" in report and "| model | exponent b [95% CI] | draws |" in report
    rows = [line for line in report.splitlines() if line.startswith(("| 4 | 2 |", "| 8 | 4 |", "| 16 | 8 |"))]
    cells = [c.strip() for row in rows for c in row.strip("|").split("|")[2:]]  # one N: every need is off the grid
    assert len(cells) == 6 and all(c == "≤ 20" or re.fullmatch(r"> 20 \(0\.\d\d at 20\)", c) for c in cells), cells


def test_bad_model_spec_in_experiment(tmp_path, capsys):
    assert main(["experiment", "sample-complexity", "--out", str(tmp_path), "--models", "cnn:depth=3"]) == 2
    assert "bad model option(s) ['depth'] in 'cnn:depth=3'" in capsys.readouterr().err


def test_routing_experiment_records_hit_rates_over_training(tmp_path, capsys):
    args = ["experiment", "routing", "--out", str(tmp_path), "--data", "synthetic", "--samples", "40", "--seeds", "2",
            "--epochs", "3", "--models", "pmoe:l=2", "pmoe-separate", "--workers", "1", "--json"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 1 and "runs: 100%" in out.err  # progress on stderr, the JSON on stdout
    results = json.loads((tmp_path / "results.json").read_text())
    joint = [r for r in results["runs"] if r["spec"] == "pmoe:l=2"]
    separate = [r for r in results["runs"] if r["spec"] == "pmoe-separate"]
    assert len(joint) == len(separate) == 2
    assert [c["epoch"] for c in joint[0]["curve"]] == [0, 1, 2, 3]  # initial weights, then every epoch
    assert len(separate[0]["curve"]) == 101  # the router stage (default 100 epochs), not the expert stage
    assert all(0 <= c["best_expert"] <= 1 for r in results["runs"] for c in r["curve"])
    assert all(r["curve"][0]["best_expert"] == r["routing"]["initial"]["best_expert"] for r in results["runs"])
    assert (tmp_path / "routing_over_training.png").read_bytes()[:4] == b"\x89PNG"
    assert "| epoch | pmoe:l=2 | pmoe-separate |" in json.loads(out.out)["report"]
    assert main(["experiment", "routing", "--out", str(tmp_path / "x"), "--models", "cnn", "--seeds", "1"]) == 2


def test_rate_fit_matches_a_hand_computed_slope():
    grid = [50, 100, 200, 400, 800]
    # Crossings of 0.9 exactly at N = 100, 400, 800 for x = 2, 4, 8: log-log points (1, 0), (2, 2), (3, 3) in units
    # of log 2 (+ log 100), slope = cov / var = 3 / 2. Identical seeds: every bootstrap draw gives the same.
    accs = {2: [0.5, 0.9, 0.95, 1, 1], 4: [0.5, 0.6, 0.7, 0.9, 1], 8: [0.5, 0.5, 0.6, 0.7, 0.9],
            16: [0.5, 0.5, 0.5, 0.6, 0.7]}  # 16: never reaches 0.9, left out of the fit
    curves = {x: {N: [a] * 3 for N, a in zip(grid, acc)} for x, acc in accs.items()}
    fit = fit_rate(curves, 0.9, resamples=50)
    assert fit["exponent"] == pytest.approx(1.5) and fit["ci"] == pytest.approx([1.5, 1.5])
    assert fit["resamples"] == 50 and fit["points"][16] is None and fit["points"][4] == pytest.approx(400)
    assert samples_needed([100, 400, 1600], [0.5, 0.8, 1.0], 0.9) == pytest.approx(800)  # halfway in log N
    assert samples_needed([100, 400], [0.95, 1.0], 0.9) is None  # reached at the first N: below the grid
    # A seed that never trains (0.5) does not move the median curve.
    assert needed_per_x({2: {50: [0.5, 0.5, 0.5], 100: [0.5, 0.95, 0.9]}}, 0.9) == {2: pytest.approx(100)}


def test_fine_n_over_l_grid_and_its_refusal(capsys):
    cfg = sample_complexity.config(build_parser().parse_args(
        ["experiment", "sample-complexity", "--out", "x", "--mode", "n-over-l", "--fine", "--quick", "--seeds", "4"]))
    assert (cfg.n_values, cfg.samples[0], cfg.seeds) == ([4, 6, 8, 12, 16], 16, 4)
    assert main(["experiment", "sample-complexity", "--out", "x", "--fine"]) == 2
    assert "error: --fine is a grid of the n-over-l mode" in capsys.readouterr().err
