"""Sweeps of vision runs (`pmoe experiment image-samples`, shared with `spurious`) and the parallel runner."""
import json
from dataclasses import replace

import pytest

from pmoe.cli import main
from pmoe.errors import PmoeError
from pmoe.experiments.image_samples import CANVAS, preset
from pmoe.experiments.image_sweep import ImageSweepConfig, build_for_sweep, run_sweep
from pmoe.experiments.runner import parallel_map

TINY = ["--quick", "--samples", "64", "128", "--test-samples", "100", "--seeds", "1", "--epochs", "1",
        "--min-steps", "0", "--json"]


def square(x: int) -> dict:
    return {"x": x, "square": x * x}


def test_parallel_map_keeps_the_order_in_worker_processes():
    assert parallel_map(square, [3, 1, 2], workers=2, progress=False) == [square(x) for x in (3, 1, 2)]
    assert parallel_map(square, [], workers=2, progress=False) == []


def test_small_training_sets_train_more_epochs_and_evaluate_about_epochs_times():
    cfg = ImageSweepConfig(epochs=2, min_steps=30, batch_size=64)
    # N=250: 3 steps an epoch, so 10 epochs for 30 steps, evaluated every 5th; N=1000: 15 steps, 2 epochs suffice.
    assert (cfg.fit_config("wrn-tiny", 250, 0).epochs, cfg.fit_config("wrn-tiny", 250, 0).eval_every) == (10, 5)
    assert (cfg.fit_config("wrn-tiny", 1000, 0).epochs, cfg.fit_config("wrn-tiny", 1000, 0).eval_every) == (2, 1)
    assert ImageSweepConfig(epochs=3, min_steps=0).fit_config("wrn-tiny", 10, 0).epochs == 3


def test_presets():
    assert preset(None, quick=False).data == CANVAS.data == "fashion-patches-image"
    assert preset("fashion-mnist", quick=False).models == ["wrn-cifar", "wrn-pmoe-cifar"]
    assert preset("mnist", quick=True).data == "mnist" and preset("mnist", quick=True).epochs == 5


def test_image_samples_writes_json_pngs_table_and_reads_finished_runs_back(tmp_path, capsys):
    assert main(["experiment", "image-samples", "--out", str(tmp_path), "--workers", "2", *TINY]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    results = json.loads((tmp_path / "results.json").read_text())
    assert summary["runs"] == len(results["runs"]) == 4
    cfg = preset(None, quick=True)
    test = cfg.data_spec(None).make("test")
    flops = {m: build_for_sweep(cfg, m, test)[1] for m in cfg.models}
    assert flops["wrn-pmoe-tiny"] < flops["wrn-tiny"]  # the pMoE group runs on l of n regions only
    for r in results["runs"]:
        assert r["epochs"] == 1 and 0 <= r["test_accuracy"] <= 1
        assert r["flops_per_image"] == flops[r["model"]]
        assert r["train_flops"] == 3 * flops[r["model"]] * r["samples"]
    for name in ("accuracy_vs_samples.png", "accuracy_vs_flops.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "results.md").read_text()
    assert "| N | epochs | wrn-tiny (training TFLOPs) | wrn-pmoe-tiny (training TFLOPs) |" in table
    assert "wrn-pmoe-tiny reaches wrn-tiny's accuracy at N=128" in table
    # A finished run's config.json alone is enough to read it back: no weights, no state, nothing retrained.
    for p in [*tmp_path.rglob("*.safetensors"), *tmp_path.rglob("train_state.pt")]:
        p.unlink()
    assert main(["experiment", "image-samples", "--out", str(tmp_path), *TINY]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert [r["test_accuracy"] for r in again["runs"]] == [r["test_accuracy"] for r in results["runs"]]
    assert not list(tmp_path.rglob("*.safetensors"))
    # Other settings over finished runs are refused, naming the difference.
    capsys.readouterr()
    two_epochs = ["2" if a == "1" and TINY[i - 1] == "--epochs" else a for i, a in enumerate(TINY)]
    assert main(["experiment", "image-samples", "--out", str(tmp_path), *two_epochs]) == 2
    assert "fit.epochs: 1 -> 2" in capsys.readouterr().err
    other_model = replace(cfg, samples=[64, 128], test_samples=100, seeds=1, epochs=1, min_steps=0, model_options={})
    with pytest.raises(PmoeError, match="model.image_size: 32 -> 28"):  # built for 28x28 instead of padding to 32
        run_sweep(other_model, tmp_path, progress=False)


def test_training_flags_reach_every_run(tmp_path):
    args = ["experiment", "image-samples", "--out", str(tmp_path), *TINY[:3], "--test-samples", "100", "--seeds", "1",
            "--epochs", "1", "--min-steps", "0", "--models", "wrn-tiny", "--optimizer", "adamw", "--lr", "3e-3",
            "--warmup-steps", "2", "--batch-size", "32", "--no-augment", "--json"]
    assert main(args) == 0
    fit = json.loads((tmp_path / "runs" / "wrn-tiny" / "N64-seed0" / "config.json").read_text())["fit"]
    assert (fit["batch_size"], fit["augment"]) == (32, False)
    assert {k: fit["optim"][k] for k in ("name", "lr", "weight_decay", "warmup_steps")} == \
        {"name": "adamw", "lr": 3e-3, "weight_decay": 0.05, "warmup_steps": 2}


@pytest.mark.parametrize("args,message", [(["--models", "wrn-tiny", "vit-huge"], "unknown preset 'vit-huge'"),
                                          (["--data", "no-such-data"], "unknown image data set 'no-such-data'")])
def test_bad_input_is_refused_before_training(tmp_path, capsys, args, message):
    assert main(["experiment", "image-samples", "--out", str(tmp_path), *TINY, *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
