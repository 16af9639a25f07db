"""`pmoe experiment spurious` end to end at minimum size, its presets and its refusals."""
import json

import pytest

from pmoe.cli import main
from pmoe.experiments.image_sweep import parse_model
from pmoe.experiments.spurious import preset

TINY = ["--quick", "--samples", "64", "--test-samples", "100", "--seeds", "1", "--epochs", "1", "--json"]


def test_spurious_experiment_writes_json_png_and_table(tmp_path, capsys):
    assert main(["experiment", "spurious", "--out", str(tmp_path), *TINY]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    results = json.loads((tmp_path / "results.json").read_text())
    assert summary["runs"] == len(results["runs"]) == 2
    for r in results["runs"]:
        assert 0 <= r["worst_group_accuracy"] <= r["test_accuracy"] <= 1 and len(r["group_accuracy"]) == 4
        assert (tmp_path / "runs" / r["model"] / "N64-seed0" / "model.safetensors").is_file()
    assert [s["model"] for s in results["summary"]] == ["wrn-tiny", "wrn-pmoe-tiny"]
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "results.md").read_text()
    assert "| N | model | parameters | average accuracy | worst-group accuracy |" in table
    assert "| 64 | wrn-pmoe-tiny |" in table and "y=1, z=0" in table
    # Run again with the same flags: the finished runs are read back, not retrained.
    assert main(["experiment", "spurious", "--out", str(tmp_path), *TINY]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert [r["test_accuracy"] for r in again["runs"]] == [r["test_accuracy"] for r in results["runs"]]


def test_presets_follow_the_data():
    assert preset("celeba-spurious", quick=False).models == ["wrn-celeba", "wrn-pmoe-celeba"]
    quick = preset("fashion-spurious", quick=True)
    assert quick.models == ["wrn-tiny", "wrn-pmoe-tiny"] and quick.model_options == {"input_size": 28}
    assert parse_model("wrn-pmoe-tiny:l=2,gate=hard") == ("wrn-pmoe-tiny", {"l": 2, "gate": "hard"})


@pytest.mark.parametrize("models,message", [(["vit-huge"], "unknown preset 'vit-huge'"),
                                            (["wrn-pmoe-tiny:l2"], "bad option in 'wrn-pmoe-tiny:l2': 'l2'")])
def test_bad_model_spec_is_refused_before_training(tmp_path, capsys, models, message):
    assert main(["experiment", "spurious", "--out", str(tmp_path), *TINY, "--models", *models]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_strength_sweep_lays_out_reads_back_and_reports_each_strength(tmp_path, capsys):
    args = ["experiment", "spurious", "--out", str(tmp_path), *TINY, "--models", "wrn-tiny", "--strengths", "0.9",
            "0.5"]
    assert main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["strengths"] == [0.5, 0.9]  # sorted
    assert [(r["train_ratio"], r["dir"]) for r in results["runs"]] == [
        (0.5, "runs/train_ratio=0.5/wrn-tiny/N64-seed0"), (0.9, "runs/train_ratio=0.9/wrn-tiny/N64-seed0")]
    for r in results["runs"]:
        saved = json.loads((tmp_path / r["dir"] / "config.json").read_text())
        assert saved["data"]["options"] == {"train_ratio": r["train_ratio"]}
    assert [(s["train_ratio"], s["model"]) for s in results["summary"]] == [(0.5, "wrn-tiny"), (0.9, "wrn-tiny")]
    for name in ("average_vs_strength.png", "worst_group_vs_strength.png", "accuracy-train_ratio=0.5.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    text = (tmp_path / "results.md").read_text()
    assert "## train_ratio = 0.9" in text and "in training z = y in 90% of each class" in text
    for p in tmp_path.rglob("*.safetensors"):  # read back from config.json alone
        p.unlink()
    assert main(args) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert [r["test_accuracy"] for r in again["runs"]] == [r["test_accuracy"] for r in results["runs"]]
    assert not list(tmp_path.rglob("*.safetensors"))


def test_a_published_single_strength_config_reads_back():
    cfg = preset("fashion-spurious", quick=False)
    assert cfg.strengths is None and cfg.sweeps() == {"runs": cfg} and cfg.train_ratio() == 0.95
    assert cfg.fit_config(cfg.models[1], 1000, 0).eval_every == 1  # evaluated every epoch, as published


@pytest.mark.parametrize("strengths,message", [(["1.5"], "argument --strengths: must lie in [0, 1], got 1.5"),
                                               (["0.9", "0.9"], "--strengths must differ from each other")])
def test_bad_strengths_are_refused_with_one_error_line(tmp_path, capsys, strengths, message):
    try:
        code = main(["experiment", "spurious", "--out", str(tmp_path), *TINY, "--strengths", *strengths])
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and sum(": error:" in line or line.startswith("error:")
                                                for line in err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()
