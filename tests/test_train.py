import pytest
import torch

from pmoe.checkpoints import load_checkpoint, save_checkpoint
from pmoe.data import make_dataset
from pmoe.errors import PmoeError
from pmoe.models import build_theory_model, theory_config
from pmoe.runs import DataSpec, run, summarize
from pmoe.train import TrainConfig, train


@pytest.fixture(scope="module")
def data():
    opts = dict(n=8, d=16, noise=0.05)
    return make_dataset("synthetic", "train", 60, 0, **opts), make_dataset("synthetic", "test", 200, 0, **opts)


def fit(name, data, epochs=3, seed=0, **model_opts):
    tr, te = data
    model = build_theory_model(theory_config(name, tr.n, tr.d, seed=seed, **model_opts))
    history = train(model, tr, te, TrainConfig(epochs=epochs, router_epochs=2, seed=seed), progress=False)
    return model, history


def test_training_is_repeatable_for_a_seed_and_differs_across_seeds(data):
    a, ha = fit("pmoe", data, seed=3)
    b, hb = fit("pmoe", data, seed=3)
    c, _ = fit("pmoe", data, seed=4)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb] and ha[-1]["test_loss"] == hb[-1]["test_loss"]
    assert not torch.equal(a.moe.experts.w1, c.moe.experts.w1)


def test_joint_pmoe_learns_the_synthetic_task_and_routes_the_discriminative_patch(data):
    model, history = fit("pmoe", data, epochs=30, l=2)
    assert history[-1]["test_accuracy"] > 0.9
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    routing = history[-1]["routing"]
    assert routing["any_expert"] > routing["chance"]


def test_separate_training_moves_routers_first_then_only_experts(data):
    tr, te = data
    model = build_theory_model(theory_config("pmoe-separate", tr.n, tr.d))
    router0, experts0 = model.router.weight.detach().clone(), model.moe.experts.w1.detach().clone()
    history = train(model, tr, te, TrainConfig(epochs=0, router_epochs=3), progress=False)
    assert [r["stage"] for r in history] == ["routers"] * 3
    assert not torch.equal(model.router.weight, router0) and torch.equal(model.moe.experts.w1, experts0)
    router1 = model.router.weight.detach().clone()
    train(model, tr, te, TrainConfig(epochs=2, router_epochs=0), progress=False)
    assert torch.equal(model.router.weight, router1) and not torch.equal(model.moe.experts.w1, experts0)
    # The first stage aligns w_1 - w_2 with the class-(+1) pattern minus the class-(-1) pattern.
    pos, neg = tr.x[tr.y > 0].sum(1).mean(0), tr.x[tr.y < 0].sum(1).mean(0)
    assert torch.dot(router1[0] - router1[1], pos - neg) > 0


def test_checkpoint_round_trip_and_corrupt_files(tmp_path, data):
    model, _ = fit("pmoe", data)
    cfg = model.config.to_dict()
    save_checkpoint(tmp_path / "ck", model, "theory", cfg)
    loaded, saved_cfg = load_checkpoint(tmp_path / "ck")
    assert saved_cfg["model"] == cfg
    x = data[1].x
    torch.testing.assert_close(loaded(x), model(x))
    (tmp_path / "ck" / "model.safetensors").write_bytes((tmp_path / "ck" / "model.safetensors").read_bytes()[:100])
    with pytest.raises(PmoeError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(PmoeError, match="not valid JSON"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(PmoeError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")


def test_checkpoint_of_another_shape_is_refused(tmp_path, data):
    model, _ = fit("pmoe", data, epochs=1)
    other = theory_config("pmoe", data[0].n, data[0].d, experts=4).to_dict()
    save_checkpoint(tmp_path / "ck", model, "theory", other)  # config says 4 experts, weights hold 8
    with pytest.raises(PmoeError, match="has shape .*expects"):
        load_checkpoint(tmp_path / "ck")


def test_run_writes_checkpoint_metrics_and_summary(tmp_path):
    result = run("cnn", DataSpec("synthetic", 40, 50, 0, {"n": 4, "d": 12}), TrainConfig(epochs=2), out_dir=tmp_path,
                 progress=False)
    assert {"test_accuracy", "train_accuracy", "epochs", "seconds", "params"} <= result.keys()
    assert result["params"] == 12 * 4  # d x m trainable; output weights are fixed
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    model, _ = load_checkpoint(tmp_path)
    tr, te = DataSpec("synthetic", 40, 50, 0, {"n": 4, "d": 12}).make()
    assert summarize(model, tr, te)["test_accuracy"] == result["test_accuracy"]


def test_train_refuses_mismatched_data(data):
    tr, _ = data
    other = make_dataset("synthetic", "test", 10, 0, n=4, d=16)
    model = build_theory_model(theory_config("cnn", tr.n, tr.d))
    with pytest.raises(PmoeError, match="differ"):
        train(model, tr, other, TrainConfig(epochs=1), progress=False)
