"""`pmoe prune` and `pmoe prune-sweep` end to end on theory and vision checkpoints, and their clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pmoe.checkpoints import load_checkpoint
from pmoe.cli import main
from pmoe.experiments.pruning_theory import PruneTheoryConfig, _data, expert_hits, initial, run_experiment

MODEL = ["--model", "pmoe", "-l", "2"]
THEORY = ["--n", "6", "--d", "12", "--samples", "40", "--test-samples", "60", "--epochs", "2"]
FASHION = ["--samples", "40", "--test-samples", "20", "--epochs", "1", "--batch-size", "20", "--device", "cpu"]


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def theory(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("theory")
    assert main(["train", *MODEL, "--experts", "4", *THEORY, "--out", str(root / "pre"), "--quiet"]) == 0
    assert main(["finetune", str(root / "pre"), *THEORY, "--data-seed", "1", "--out", str(root / "ft"),
                 "--quiet"]) == 0
    return root / "pre", root / "ft"


def test_prune_json_checkpoint_and_eval(theory, tmp_path, capsys):
    pre, ft = theory
    out = tmp_path / "pruned"
    assert main(["prune", str(ft), "--pretrained", str(pre), "--keep", "2", "--out", str(out),
                 "--finetune-steps", "4", "--json"]) == 0
    r = last_json(capsys)
    assert r["method"] == "router-norm-change" and r["mode"] == "zero" and r["keep"] == [2]
    (layer,) = r["layers"]
    assert len(layer["kept"]) == 2 and sorted(layer["kept"] + layer["pruned"]) == [0, 1, 2, 3]
    assert r["params_after"] < r["params_before"] and r["flops_after"] < r["flops_before"]
    assert {"test_accuracy_before", "test_accuracy_after", "test_accuracy_finetuned", "seconds"} <= r.keys()
    model, cfg = load_checkpoint(out)
    assert cfg["pruning"]["kept"] == [layer["kept"]] and model.moe.experts.num_experts == 2
    parent = json.loads((ft / "config.json").read_text())["pretrained"]
    assert cfg["pruning"]["pretrained"]["sha256"] == parent["sha256"]
    assert main(["eval", str(out), "--json"]) == 0
    assert last_json(capsys)["test_accuracy"] == r["test_accuracy_finetuned"]
    assert main(["finetune", str(out), *THEORY, "--out", str(tmp_path / "pruned-ft"), "--quiet"]) == 0
    child, child_cfg = load_checkpoint(tmp_path / "pruned-ft")  # trained on in its pruned shape
    assert child.moe.experts.num_experts == 2 and child_cfg["pruning"]["kept"] == [layer["kept"]]


def test_prune_sweep_writes_json_plots_and_table(theory, tmp_path, capsys):
    pre, ft = theory
    out = tmp_path / "sweep"
    assert main(["prune-sweep", str(ft), "--pretrained", str(pre), "--methods", "router-norm-change", "random",
                 "saliency", "--ratios", "0.25", "0.5", "--mode", "truncate", "--finetune-steps", "2", "--out",
                 str(out), "--json"]) == 0
    printed = capsys.readouterr()
    summary = json.loads(printed.out)  # the one stdout line; progress on stderr
    assert "prune-sweep: 100%" in printed.err
    assert len(summary["points"]) == 6 and all("accuracy_finetuned" in p for p in summary["points"])
    assert {p.name for p in out.iterdir()} == {"results.json", "results.md", "accuracy_vs_ratio.png",
                                               "accuracy_finetuned_vs_ratio.png"}
    table = (out / "results.md").read_text()
    assert "| 0.5 | " in table and "FLOPs / sample" in table and "latency" in table
    assert json.loads((out / "results.json").read_text())["config"]["mode"] == "truncate"


def test_prune_of_a_vision_checkpoint_with_calibration_and_fine_tune(tmp_path, capsys):
    assert main(["train", "--model", "vit-moe-tiny", "--data", "fashion-mnist", *FASHION, "--out",
                 str(tmp_path / "pre"), "--quiet"]) == 0
    assert main(["finetune", str(tmp_path / "pre"), "--data", "fashion-mnist", "--data-seed", "1", *FASHION,
                 "--out", str(tmp_path / "ft"), "--quiet"]) == 0
    assert main(["prune", str(tmp_path / "ft"), "--pretrained", str(tmp_path / "pre"), "--ratio", "0.5",
                 "--method", "saliency", "--calib-samples", "20", "--finetune-steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "pruned"), "--json"]) == 0
    r = last_json(capsys)
    assert r["keep"] == [2, 2] and r["params_after"] < r["params_before"]
    assert main(["eval", str(tmp_path / "pruned"), "--json"]) == 0
    assert last_json(capsys)["test_accuracy"] == pytest.approx(r["test_accuracy_finetuned"])
    # a pruned checkpoint fine-tunes further in its pruned shape (here onto a new 2-class head)
    assert main(["finetune", str(tmp_path / "pruned"), "--data", "fashion-spurious", *FASHION,
                 "--out", str(tmp_path / "pruned-ft"), "--json"]) == 0
    assert last_json(capsys)["params"] < r["params_before"]
    model, _ = load_checkpoint(tmp_path / "pruned-ft")
    assert [layer.experts.num_experts for layer in model.moe_layers()] == [2, 2]


@pytest.fixture(scope="module")
def other(tmp_path_factory, theory) -> dict[str, Path]:
    """Checkpoints that do not fit `theory`: another expert count; a pruned one."""
    root = tmp_path_factory.mktemp("other")
    assert main(["train", *MODEL, "--experts", "3", *THEORY, "--out", str(root / "k3"), "--quiet"]) == 0
    pre, ft = theory
    assert main(["prune", str(ft), "--pretrained", str(pre), "--keep", "2", "--out", str(root / "pruned")]) == 0
    return {"k3": root / "k3", "pruned": root / "pruned"}


@pytest.mark.parametrize("args,message", [
    (["--keep", "0"], "keep 0 is outside 1..3"),
    (["--keep", "4"], "keep 4 is outside 1..3"),
    (["--ratio", "1.5"], r"ratio 1.5 is outside (0, 1)"),
    (["--ratio", "0.1"], "ratio 0.1 (keep 4) is outside 1..3"),
    (["--keep", "2", "--pretrained", "{k3}"], "was fine-tuned from"),
    (["--keep", "2", "--pretrained", "{pruned}"], "is a pruned checkpoint; give the pretrained model"),
    (["--keep", "2", "--pretrained", "{tmp}/missing"], "does not exist"),
    (["--keep", "2", "--finetuned", "{tmp}/missing"], "does not exist"),
    (["--keep", "2", "--finetuned", "{pruned}"], "is a pruned checkpoint already"),
    (["--keep", "2", "--out", "{k3}"], "already holds files of another run; choose a new or empty folder, or pass "
                                        "--overwrite"),
    (["--keep", "2", "--out", "{pre}"], "is the input"),
    (["--keep", "2", "--method", "router-norm-change", "--pretrained", None], "give the pretrained model"),
    (["--keep", "2", "--finetune-steps", "2", "--lr", "0.1"], "['lr'] apply to vision checkpoints only"),
])
def test_bad_input_is_a_clear_error_and_leaves_no_output(theory, other, tmp_path, capsys, args, message):
    pre, ft = theory
    opts = {"--finetuned": str(ft), "--pretrained": str(pre), "--out": str(tmp_path / "out")}
    for flag, value in zip(args[::2], args[1::2]):
        opts[flag] = value
    if opts["--pretrained"] is None:
        del opts["--pretrained"]
    fill = {"{k3}": str(other["k3"]), "{pruned}": str(other["pruned"]), "{tmp}": str(tmp_path), "{pre}": str(pre)}
    argv = ["prune", opts.pop("--finetuned")] + [a for kv in opts.items() for a in kv]
    for key, value in fill.items():
        argv = [a.replace(key, value) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("ratios,message", [(["0.5", "0.1"], "ratio 0.1 (keep 4) is outside 1..3"),
                                            (["1.0"], "ratio 1.0 is outside (0, 1)")])
def test_sweep_checks_every_ratio_before_any_work(theory, tmp_path, capsys, ratios, message):
    pre, ft = theory
    assert main(["prune-sweep", str(ft), "--pretrained", str(pre), "--ratios", *ratios, "--out",
                 str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_mismatched_expert_counts_are_named(theory, other, tmp_path, capsys):
    """Without a parent record in the fine-tuned config, the model check names what differs."""
    pre, ft = theory
    config = json.loads((ft / "config.json").read_text())
    del config["pretrained"]
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "config.json").write_text(json.dumps(config))
    (orphan / "model.safetensors").write_bytes((ft / "model.safetensors").read_bytes())
    assert main(["prune", str(orphan), "--pretrained", str(other["k3"]), "--keep", "2", "--out",
                 str(tmp_path / "out")]) == 2
    assert "MoE layer 0 has 4 experts when fine-tuned, 3 pretrained" in capsys.readouterr().err


def test_theory_experiment_runs_tiny(tmp_path):
    cfg = PruneTheoryConfig(experts=4, pairs=2, n=6, d=16, num_irrelevant=4, branch_samples=40, branch_epochs=2,
                            mix_samples=40, mix_epochs=1, finetune_samples=40, finetune_epochs=2, post_epochs=1,
                            test_samples=50, seeds=2, methods=["router-norm-change", "random"])
    torch.manual_seed(0)
    summary = run_experiment(cfg, tmp_path, workers=1)
    assert {p.name for p in tmp_path.iterdir()} == {"results.json", "results.md", "accuracy_vs_ratio.png",
                                                    "delta_vs_routing.png"}
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert len(runs) == 2 and len(runs[0]["accuracy"]["random"]) == 3 and len(runs[0]["accuracy"]["random"][0]) == 2
    assert "| 0.5 | 2 |" in summary["report"] and "largest hit: fine-tuned / at init" in summary["report"]
    test = _data(cfg, "test", cfg.test_samples, 1000 * 1 + 200, [0])  # seed 1's fine-tuning test set
    assert runs[1]["hit_initial"] == expert_hits(initial(cfg, 1), test)[0].tolist()
