"""Sweeps of vision runs (`pmoe experiment image-samples`, shared with `spurious`) and the parallel runner."""
import json
from dataclasses import replace

import pytest
import torch

from pmoe.cli import build_parser, main
from pmoe.errors import PmoeError
from pmoe.experiments import image_samples
from pmoe.experiments.image_samples import CANVAS, preset
from pmoe.experiments.image_sweep import ImageSweepConfig, build_for_sweep, run_sweep
from pmoe.experiments.runner import parallel_map, spread_device

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
    assert "wrn-pmoe-tiny against wrn-tiny's mean accuracy at N=128" in table
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


def test_paper_recipe_is_50_epochs_without_augmentation_and_few_evaluations():
    args = ["experiment", "image-samples", "--out", "x", "--paper-recipe"]
    cfg = image_samples.config(build_parser().parse_args(args))
    assert (cfg.data, cfg.models, cfg.samples, cfg.seeds) == ("fashion-mnist", ["wrn-cifar", "wrn-pmoe-cifar"],
                                                              [2000, 4000, 8000, 16000], 5)
    fit = cfg.fit_config("wrn-cifar", 2000, 0)  # 15 steps an epoch: no step minimum stretches the run
    assert (fit.epochs, fit.eval_every, fit.augment, fit.batch_size) == (50, 10, False, 128)
    evals = image_samples.config(build_parser().parse_args(args + ["--evals", "2", "--data", "mnist"]))
    assert (evals.data, evals.fit_config("wrn-cifar", 16000, 0).eval_every) == ("mnist", 25)
    assert not fit.compile and image_samples.config(build_parser().parse_args(args + ["--compile"])).fit_config(
        "wrn-cifar", 2000, 0).compile


def test_match_line_takes_the_smallest_n_and_says_when_none():
    cfg = ImageSweepConfig(models=["dense", "moe"], samples=[4000, 1000, 2000])
    stats = {(m, N): {"test_accuracy": (a, 0.01), "train_flops": N} for m, accs in
             (("dense", {1000: 0.8, 2000: 0.85, 4000: 0.9}), ("moe", {1000: 0.7, 2000: 0.91, 4000: 0.95}))
             for N, a in accs.items()}
    assert image_samples.match_line(cfg, stats, "moe") == (
        "moe against dense's mean accuracy at N=4000 (0.900 ± 0.010): reached first at N=2000 (0.910 ± 0.010), "
        "with 0.50x its training FLOPs.")
    stats["moe", 2000]["test_accuracy"] = stats["moe", 4000]["test_accuracy"] = (0.89, 0.0)
    assert "not reached at any N tried (its best: 0.890 ± 0.000 at N=4000)" in image_samples.match_line(cfg, stats,
                                                                                                        "moe")


def test_auto_device_spreads_the_runs_over_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [spread_device("auto", i) for i in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert spread_device("cuda:1", 0) == "cuda:1" and spread_device("cpu", 1) == "cpu"  # a device given: kept
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert spread_device("auto", 1) == "auto"  # one GPU: the runs' own choice


@pytest.mark.parametrize("args,message", [(["--quick", "--paper-recipe"], "--quick and --paper-recipe exclude"),
                                          (["--evals", "0"], "argument --evals: must be an integer in 1 .. 2^31 - 1")])
def test_bad_recipe_flags_are_refused_with_one_error_line(tmp_path, capsys, args, message):
    try:
        code = main(["experiment", "image-samples", "--out", str(tmp_path), *args])
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and sum(line.startswith("error:") or ": error:" in line
                                                for line in err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()
