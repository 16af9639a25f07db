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
