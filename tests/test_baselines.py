"""Honest baselines: the ±1 tie rule, chance of a max over experts, hit rates at the initial weights, --eval-every."""
import json

import pytest
import torch

from pmoe.cli import main
from pmoe.data import PatchDataset, make_dataset
from pmoe.metrics import chance_of_best, correct, discriminative_routing, evaluate, predict_labels
from pmoe.models import build_theory_model, theory_config
from pmoe.runs import DataSpec, run
from pmoe.train import TrainConfig, train

OPTS = {"n": 8, "d": 16, "noise": 0.05}


@pytest.fixture(scope="module")
def data():
    return make_dataset("synthetic", "train", 60, 0, **OPTS), make_dataset("synthetic", "test", 200, 0, **OPTS)


def test_a_logit_of_zero_predicts_minus_one():
    # Worked by hand: logits 2, 0, -1 for y=+1 and 0, 3, -0.5 for y=-1 predict +1, -1, -1 and -1, +1, -1, so samples
    # 1, 4 and 6 are right (3 of 6); the old rule f*y > 0 counted the tie of sample 4 wrong (2 of 6).
    f = torch.tensor([2.0, 0.0, -1.0, 0.0, 3.0, -0.5])
    y = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    assert predict_labels(f).tolist() == [1.0, -1.0, -1.0, -1.0, 1.0, -1.0]
    assert correct(f, y).tolist() == [True, False, False, True, False, True]
    ds = PatchDataset(f.view(6, 1, 1).clone(), y, None)
    assert evaluate(lambda x: x[:, 0, 0], ds)["accuracy"] == 0.5


def test_a_model_that_outputs_zero_scores_the_share_of_class_minus_one(data):
    tr, te = data
    model = build_theory_model(theory_config("cnn", tr.n, tr.d))
    model.w.data.zero_()  # all ReLUs at 0: f = 0 on every sample, and no gradient moves them
    history = train(model, tr, te, TrainConfig(epochs=1), progress=False)
    assert history[-1]["train_accuracy"] == pytest.approx((tr.y < 0).float().mean().item())
    assert history[-1]["test_accuracy"] == pytest.approx((te.y < 0).float().mean().item())


def test_chance_of_best_matches_a_simulation_of_random_routing():
    g = torch.Generator().manual_seed(0)
    sizes, k, p, reps = [40, 60], 8, 6 / 16, 20000
    sims = [torch.binomial(torch.full((reps, k), float(N)), torch.full((reps, k), p), generator=g).amax(1) / N
            for N in sizes]  # (reps,) best expert's hit rate per class
    assert chance_of_best(sizes, k, p) == pytest.approx(((sims[0] + sims[1]) / 2).mean().item(), abs=2e-3)
    assert chance_of_best(sizes, 1, p) == pytest.approx(p)  # one expert: l/n
    assert chance_of_best([10], 3, 1.0) == pytest.approx(1.0) and chance_of_best([10], 3, 0.0) == pytest.approx(0.0)


def test_chance_of_best_matches_random_routers_on_structureless_data():
    # Routers of a fresh model on pure-noise patches pick l patches of each sample at random: the measured best-expert
    # hit rate averages to the computed chance, far above l/n for a max over 8 experts on 50 samples per class.
    n, d, reps = 16, 256, 60
    measured = []
    for seed in range(reps):
        g = torch.Generator().manual_seed(seed)
        ds = PatchDataset(torch.randn(100, n, d, generator=g), torch.tensor([1.0, -1.0]).repeat(50),
                          torch.randint(0, n, (100,), generator=g))
        model = build_theory_model(theory_config("pmoe", n, d, router_std=1.0, seed=seed))
        measured.append(discriminative_routing(model, ds)["best_expert"])
    chance = discriminative_routing(model, ds)["chance_best_expert"]
    assert chance == pytest.approx(chance_of_best([50, 50], 8, 6 / 16)) and chance > 6 / 16 + 0.05
    assert sum(measured) / reps == pytest.approx(chance, abs=0.01)


@pytest.mark.parametrize("name", ["pmoe", "pmoe-separate"])
def test_init_baseline_equals_a_directly_rebuilt_initial_model(tmp_path, name, capsys):
    spec = DataSpec("synthetic", 40, 100, 0, OPTS)
    result = run(name, spec, TrainConfig(epochs=2, router_epochs=2, seed=5), {"l": 2}, out_dir=tmp_path,
                 progress=False)
    _, te = spec.make()
    initial = discriminative_routing(build_theory_model(theory_config(name, te.n, te.d, l=2, seed=5)), te)
    assert result["routing"]["initial"] == initial
    assert result["routing"]["chance_best_expert"] == initial["chance_best_expert"] > result["routing"]["chance"]
    for command in ("route", "eval"):
        assert main([command, str(tmp_path), "--json"]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (out if command == "route" else out["routing"])["initial"] == initial
    assert main(["route", str(tmp_path)]) == 0
    assert f"at the run's initial weights {initial['best_expert']:.3f}" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["pmoe", "pmoe-separate"])
def test_eval_every_changes_only_how_often_metrics_are_recorded(data, name):
    tr, te = data
    runs = {}
    for every in (0, 1, 2):
        model = build_theory_model(theory_config(name, tr.n, tr.d, l=2, seed=1))
        history = train(model, tr, te, TrainConfig(epochs=3, router_epochs=3, seed=1, eval_every=every),
                        progress=False)
        runs[every] = model, [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    (m0, h0), (m1, h1), (_, h2) = runs[0], runs[1], runs[2]
    for (k, p), q in zip(m0.state_dict().items(), m1.state_dict().values()):
        assert torch.equal(p, q), k
    assert h0[-1] == h1[-1] and len(h0) == len(h1) == len(h2) == (6 if name == "pmoe-separate" else 3)
    assert [r["train_loss"] for r in h0] == [r["train_loss"] for r in h1]
    tested = lambda h: [(r["stage"], r["epoch"]) for r in h if "test_accuracy" in r]  # noqa: E731
    last = [("routers", 3)] if name == "pmoe-separate" else []
    assert tested(h0) == last + [("train", 3)]
    assert tested(h2) == [(s, e) for s, e in tested(h1) if e in (2, 3)]
    assert all("routing" in r for r in h1)


def test_cli_eval_every_writes_test_metrics_every_e_epochs(tmp_path, capsys):
    args = ["train", "--model", "pmoe", "-l", "2", "--data", "synthetic", "--samples", "30", "--test-samples", "40",
            "--n", "6", "--d", "12", "--epochs", "5", "--out", str(tmp_path), "--json"]
    assert main([*args, "--eval-every", "2"]) == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["epoch"] for r in records if "test_accuracy" in r and "routing" in r] == [2, 4, 5]
    assert json.loads((tmp_path / "config.json").read_text())["train"]["eval_every"] == 2
