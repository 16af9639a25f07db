import math

import pytest
import torch

from pmoe.errors import PmoeError
from pmoe.layers.routing import expert_capacity, expert_choice, token_choice


def scores(B=3, n=10, k=4, seed=0):
    return torch.randn(B, n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("l", [1, 3, 10])
def test_expert_choice_takes_the_top_l_distinct_patches_of_each_sample(l):
    s = scores()
    r = expert_choice(s, l)
    assert r.index.shape == (3, 4, l)
    for b in range(3):
        for e in range(4):
            chosen = set(r.index[b, e].tolist())
            assert len(chosen) == l
            assert chosen == set(sorted(range(10), key=lambda j: -s[b, j, e].item())[:l])


def test_expert_choice_with_tied_scores_still_picks_l_distinct_patches():
    s = torch.zeros(2, 8, 3)
    s[:, :4] = 1.0  # four tied best patches, l = 6 must take all four and two of the tied rest
    r = expert_choice(s, 6)
    for b in range(2):
        for e in range(3):
            chosen = set(r.index[b, e].tolist())
            assert len(chosen) == 6 and {0, 1, 2, 3} <= chosen


def test_gates_of_each_mode_match_a_float64_hand_computation():
    s = scores()
    l = 3
    sel = expert_choice(s, l, "softmax_selected")
    all_ = expert_choice(s, l, "softmax_all")
    hard = expert_choice(s, l, "hard")
    for b in range(3):
        for e in range(4):
            idx = sel.index[b, e]
            chosen = torch.tensor([s[b, j, e].item() for j in idx.tolist()])
            expected = chosen.exp() / chosen.exp().sum()
            torch.testing.assert_close(sel.gates[b, e], expected.to(torch.float64))
            column = s[b, :, e]
            expected_all = column.exp()[all_.index[b, e]] / column.exp().sum()
            torch.testing.assert_close(all_.gates[b, e], expected_all)
    assert torch.equal(hard.gates, torch.ones_like(hard.gates))
    torch.testing.assert_close(sel.gates.sum(-1), torch.ones(3, 4, dtype=torch.float64))


@pytest.mark.parametrize("l", [0, 11, -1])
def test_expert_choice_rejects_l_outside_1_to_n(l):
    with pytest.raises(PmoeError, match=f"l=.*{l}"):
        expert_choice(scores(), l)


def test_expert_choice_rejects_bad_shapes_and_gate():
    with pytest.raises(PmoeError, match="must be \\(B, n, k\\)"):
        expert_choice(torch.randn(4, 5), 2)
    with pytest.raises(PmoeError, match="gate must be one of"):
        expert_choice(scores(), 2, "soft")


def reference_token_choice(logits, K, capacity_factor, batch_priority):
    """Plain loops: V-MoE routing with batch-prioritized capacity, one group at a time."""
    G, T, k = logits.shape
    C = max(1, math.ceil(T * K * capacity_factor / k))
    probs = logits.softmax(-1)
    kept = torch.zeros(G, T, K, dtype=torch.bool)
    for g in range(G):
        top = [sorted(range(k), key=lambda e: -probs[g, t, e].item())[:K] for t in range(T)]
        order = sorted(range(T), key=lambda t: -probs[g, t].max().item()) if batch_priority else range(T)
        fill = [0] * k
        for j in range(K):
            for t in order:
                e = top[t][j]
                if fill[e] < C:
                    fill[e] += 1
                    kept[g, t, j] = True
    return kept, C


def test_token_choice_hand_worked_priority_example():
    # 4 tokens, 2 experts, K=1, capacity ceil(4*1*0.5/2) = 1. Tokens 0 and 2 want expert 0, tokens 1 and 3 expert 1.
    logits = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [3.0, 0.0], [0.0, 1.0]]])
    bpr = token_choice(logits, num_selected=1, capacity_factor=0.5, batch_priority=True)
    assert bpr.capacity == 1
    # BPR: token 2 (gate .95) beats token 0 (gate .73) for expert 0; token 1 beats token 3 for expert 1.
    assert bpr.dropped[0, :, 0].tolist() == [True, False, False, True]
    plain = token_choice(logits, num_selected=1, capacity_factor=0.5, batch_priority=False)
    assert plain.dropped[0, :, 0].tolist() == [False, False, True, True]  # first come, first served
    assert torch.equal(bpr.gates == 0, bpr.dropped)


def test_token_choice_places_all_first_choices_before_second_choices():
    # 2 tokens, 2 experts, K=2. Capacity 1: both first choices fit, both second choices are dropped.
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    r = token_choice(logits, num_selected=2, capacity_factor=0.5)
    assert r.expert[0].tolist() == [[0, 1], [1, 0]]
    assert r.dropped[0].tolist() == [[False, True], [False, True]]
    r2 = token_choice(logits, num_selected=2, capacity_factor=1.0)  # capacity 2: everyone fits
    assert not r2.dropped.any()
    assert r2.slot[0].tolist() == [[0, 1], [0, 1]]


@pytest.mark.parametrize("K,c,bpr", [(1, 1.0, True), (2, 1.05, True), (2, 0.6, False), (3, 0.8, True)])
def test_token_choice_matches_a_plain_loop(K, c, bpr):
    logits = torch.randn(3, 17, 5, generator=torch.Generator().manual_seed(K))
    r = token_choice(logits, K, c, bpr)
    kept, C = reference_token_choice(logits, K, c, bpr)
    assert r.capacity == C
    assert torch.equal(~r.dropped, kept)
    # kept slots are unique per expert and group, and below capacity
    for g in range(3):
        pairs = [(r.expert[g, t, j].item(), r.slot[g, t, j].item()) for t in range(17) for j in range(K) if kept[g, t, j]]
        assert len(pairs) == len(set(pairs)) and all(s < C for _, s in pairs)


def test_aux_losses_match_float64_formulas():
    logits = torch.randn(2, 16, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r = token_choice(logits, 2, noise_std=0.0)
    imp = logits.softmax(-1).sum(1)  # (G, k)
    expected = (imp.var(-1, unbiased=False) / imp.mean(-1) ** 2).mean()
    torch.testing.assert_close(r.importance_loss, expected)
    assert r.load_loss.item() == 0.0
    uniform = token_choice(torch.zeros(1, 8, 4), 2)
    assert uniform.importance_loss.item() == pytest.approx(0.0, abs=1e-12)


def test_load_loss_matches_normal_cdf_reference():
    logits = torch.randn(1, 32, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.manual_seed(0)
    r = token_choice(logits, 2, noise_std=0.25)
    torch.manual_seed(0)
    noisy = logits + 0.25 * torch.randn_like(logits)
    threshold = noisy.sort(-1, descending=True).values[..., 1:2]
    p = 1 - torch.distributions.Normal(0.0, 1.0).cdf((threshold - logits) / 0.25)
    load = p.mean(1)
    torch.testing.assert_close(r.load_loss, (load.var(-1, unbiased=False) / load.mean(-1) ** 2).mean())


def test_expert_capacity_formula():
    assert expert_capacity(196, 2, 8, 1.05) == math.ceil(196 * 2 * 1.05 / 8)
    assert expert_capacity(1, 1, 64, 1.0) == 1


def test_token_choice_rejects_bad_inputs():
    with pytest.raises(PmoeError, match="num_selected"):
        token_choice(torch.randn(1, 4, 3), num_selected=4)
    with pytest.raises(PmoeError, match="capacity_factor"):
        token_choice(torch.randn(1, 4, 3), capacity_factor=0)
    with pytest.raises(PmoeError, match="\\(G, T, k\\)"):
        token_choice(torch.randn(4, 3))
