import pytest
import torch
from torch import nn

from pmoe.checkpoints import load_checkpoint, save_checkpoint
from pmoe.errors import PmoeError
from pmoe.models import build_model, theory_config
from pmoe.models.theory import MixtureOfCNNs, TwoLayerCNN


def test_cnn_equals_its_formula():
    cfg = theory_config("cnn", n=6, d=5, neurons=3)
    model = TwoLayerCNN(cfg).double()
    x = torch.randn(4, 6, 5, dtype=torch.float64)
    expected = torch.zeros(4, dtype=torch.float64)
    for b in range(4):
        for r in range(3):
            for j in range(6):
                expected[b] += model.a[r] / 6 * torch.relu(x[b, j] @ model.w[:, r])
    torch.testing.assert_close(model(x), expected)


def test_cnn_weight_keeps_its_saved_shape_in_filter_major_memory_and_old_checkpoints_load(tmp_path):
    # `w` is (d, m) in state dicts and files, held as m rows of d (fast on CPU); a model whose `w` is a row-major
    # (d, m) tensor, as before, saves a file that loads into that memory with the same weights and logits.
    cfg = theory_config("cnn", n=6, d=5, neurons=3)
    assert TwoLayerCNN(cfg).w.shape == (5, 3) and TwoLayerCNN(cfg).w.t().is_contiguous()
    old = TwoLayerCNN(cfg)
    old.w = nn.Parameter(torch.randn(5, 3))  # row-major (d, m)
    save_checkpoint(tmp_path / "old", old, "theory", cfg.to_dict())
    loaded, _ = load_checkpoint(tmp_path / "old")
    assert loaded.w.t().is_contiguous() and torch.equal(loaded.w, old.w)
    x = torch.randn(4, 6, 5)
    torch.testing.assert_close(loaded(x), old(x))


@pytest.mark.parametrize("pool", ["l", "n"])
@pytest.mark.parametrize("model_name", ["pmoe", "pmoe-separate"])
def test_mixture_equals_its_formula(model_name, pool):
    cfg = theory_config(model_name, n=7, d=5, l=3, neurons=2, router_std=1.0, pool=pool)
    model = MixtureOfCNNs(cfg).double()
    x = torch.randn(4, 7, 5, dtype=torch.float64)
    w_router = model.router.weight  # (k, d)
    w = model.moe.experts.w1  # (k, m, d)
    a = model.moe.experts.w2[:, 0] * (3 if pool == "l" else 7)  # (k, m) unscaled output weights
    expected = torch.zeros(4, dtype=torch.float64)
    for b in range(4):
        for s in range(cfg.experts):
            g = x[b] @ w_router[s]  # (n,)
            J = sorted(range(7), key=lambda j: -g[j].item())[:3]
            G = torch.softmax(g[J], 0) if cfg.gate == "softmax_selected" else torch.ones(3, dtype=torch.float64)
            for r in range(cfg.neurons):
                for gate, j in zip(G, J):
                    expected[b] += a[s, r] / (3 if pool == "l" else 7) * gate * torch.relu(x[b, j] @ w[s, r])
    torch.testing.assert_close(model(x), expected)


def test_paper_initialisations_and_fixed_output_weights():
    joint = MixtureOfCNNs(theory_config("pmoe", n=16, d=784))
    assert joint.router.weight.std().item() == pytest.approx(1e-4, rel=0.1)
    assert joint.moe.experts.w1.std().item() == pytest.approx(0.01, rel=0.05)
    assert not joint.moe.experts.w2.requires_grad and joint.moe.experts.w1.requires_grad
    assert (joint.moe.experts.w2.shape, joint.moe.l, joint.moe.gate) == ((8, 1, 5), 6, "softmax_selected")
    sep = MixtureOfCNNs(theory_config("pmoe-separate", n=16, d=784))
    assert sep.moe.gate == "hard" and sep.moe.l == 2
    torch.testing.assert_close(sep.moe.experts.w2[:, 0] * 16, torch.tensor([[1.0] * 20, [-1.0] * 20]))
    cnn = TwoLayerCNN(theory_config("cnn", n=16, d=784))
    assert cnn.w.shape == (784, 4) and cnn.w.std().item() == pytest.approx(0.1, rel=0.05)


def test_same_seed_same_model_other_seed_other_model():
    a, b = (build_model("theory", theory_config("pmoe", 8, 10, seed=s).to_dict()) for s in (1, 1))
    c = build_model("theory", theory_config("pmoe", 8, 10, seed=2).to_dict())
    assert torch.equal(a.moe.experts.w1, b.moe.experts.w1)
    assert not torch.equal(a.moe.experts.w1, c.moe.experts.w1)


def test_bad_configs_are_refused_with_the_value():
    with pytest.raises(PmoeError, match="unknown model 'moe'"):
        theory_config("moe", 16, 784)
    with pytest.raises(PmoeError, match="l=17"):
        theory_config("pmoe", 16, 784, l=17)
    with pytest.raises(PmoeError, match="signed output weights need 2 experts"):
        theory_config("pmoe-separate", 16, 784, experts=3)
    with pytest.raises(PmoeError, match="unknown architecture"):
        build_model("mlp-mixer", {})
    with pytest.raises(PmoeError, match="unknown field\\(s\\) depth; valid: model, n, d"):
        build_model("theory", {"depth": 3})
    with pytest.raises(PmoeError, match="d=784"):
        TwoLayerCNN(theory_config("cnn", 16, 784))(torch.randn(2, 16, 10))
