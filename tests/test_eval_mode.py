"""Eval mode computes what training did: precise batch-norm statistics, train/eval agreement of every routed preset,
and WRN-pMoE's eval forward against a per-expert computation written out with plain loops."""
import pytest
import torch
import torch.nn.functional as F

from pmoe.data.vision import ImageBatches, ImageDataset
from pmoe.errors import PmoeError
from pmoe.models.presets import PRESETS, build_preset, preset
from pmoe.models.images import patchify
from pmoe.train import FitConfig, OptimConfig, fit
from pmoe.train.batchnorm import batch_norms, recompute_batch_norm
from pmoe.train.evaluate import task_loss
from pmoe.runs.images import build_for_data


pytestmark = pytest.mark.usefixtures("one_thread")


def learnable(n: int = 256, side: int = 32, classes: int = 4, seed: int = 0, channels: int = 3) -> ImageDataset:
    """Images whose class sets a bright square's quadrant, on noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randint(0, 120, (n, channels, side, side), generator=g)
    h = side // 2
    for c in range(classes):
        r, q = (c // 2) * h, (c % 2) * h
        x[y == c, :, r + 2:r + h - 2, q + 2:q + h - 2] += 120
    return ImageDataset(x.to(torch.uint8), y, [str(c) for c in range(classes)], (0.3,) * channels, (0.2,) * channels)


def test_precise_statistics_are_the_batch_averages_and_leave_the_run_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
                                torch.nn.Dropout(0.5), torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2)).eval()
    batches = [(torch.randn(5, 2, 6, 6) * (i + 1) + i, None) for i in range(4)]
    inputs = []  # (B, C, H, W) seen by the first norm, per batch
    model[1].register_forward_hook(lambda m, inp, out: inputs.append(inp[0].double()))
    state = torch.get_rng_state()
    used = recompute_batch_norm(model, batches, max_images=15)  # 3 of the 4 batches
    assert torch.equal(torch.get_rng_state(), state)  # dropout drew from a forked generator
    assert used == 15 and not model.training and [m.momentum for m in batch_norms(model)] == [0.1, 0.1]
    mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0)
    var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in inputs]).mean(0)
    torch.testing.assert_close(model[1].running_mean.double(), mean)
    torch.testing.assert_close(model[1].running_var.double(), var)
    assert recompute_batch_norm(torch.nn.Linear(2, 2), batches) == 0  # nothing to do without batch norm


def small(name: str) -> dict:
    """Overrides that shrink preset `name` for a CPU test, keeping its routing: experts, n, l, kernels, router."""
    arch, cfg = preset(name)
    if arch == "wrn":
        return {"widen": 1, "expert_channels": 8}
    return {"dim": 32, "heads": 2, "mlp_dim": 64, "depth": min(cfg.depth, 4),
            "moe_blocks": tuple(b for b in cfg.moe_blocks if b < 4) or (1,), "patch_size": 8}


def routed(name: str) -> bool:
    with torch.device("meta"):
        return bool(build_preset(name).moe_layers())


ROUTED = [name for name in PRESETS if routed(name)]


@pytest.mark.parametrize("name,channels,side", [(name, 3, 32) for name in ROUTED]
                         + [("wrn-pmoe-tiny", 1, 28), ("wrn-pmoe-cifar", 1, 28)])  # zero-padded to 32 / a 7x7 map
def test_eval_mode_tracks_train_mode_after_a_few_steps(name, channels, side):
    ds = learnable(side=side, channels=channels)
    torch.manual_seed(0)
    model = build_for_data(name, ds, small(name))
    wrn = preset(name)[0] == "wrn"
    optim = OptimConfig("sgd", lr=0.1) if wrn else OptimConfig("adamw", lr=3e-3, weight_decay=0.05, warmup_steps=4)
    fit(model, ds, None, FitConfig(epochs=3 if wrn else 12, batch_size=64, optim=optim, augment=False, device="cpu"),
        progress=False)
    x, y = next(iter(ImageBatches(ds, 128)))
    with torch.no_grad():
        model.train()
        train_loss, train_scores = task_loss(model, x, y)
        model.eval()
        eval_loss, eval_scores = task_loss(model, x, y)
    train_acc, eval_acc = [(s.argmax(-1) == y).float().mean().item() for s in (train_scores, eval_scores)]
    assert train_acc > 0.4, "the few steps learned nothing: the comparison would be empty"
    assert abs(eval_acc - train_acc) <= 0.1 and abs(eval_loss.item() - train_loss.item()) <= 0.15 * train_loss.item()


AUTHORS_LAYOUT = {"gate": "softmax_all", "gate_activations": False}  # gate on the conv outputs, then BN -> ReLU


@pytest.mark.parametrize("layout", [{}, AUTHORS_LAYOUT], ids=["preset", "authors"])
def test_wrn_pmoe_eval_forward_equals_a_per_expert_loop(layout):
    """The preset gates each expert's BN -> ReLU activations of the regions it took (softmax over their l scores,
    pooled as the gate-weighted sum of region means); the authors' layout gates the conv outputs (softmax over all n
    scores, top l kept), then BN -> ReLU -> mean over the whole map."""
    ds = learnable(64)
    torch.manual_seed(0)
    model = build_for_data("wrn-pmoe-tiny", ds, layout)
    fit(model, ds, None, FitConfig(epochs=2, batch_size=32, augment=False, device="cpu"), progress=False)
    cfg, moe = model.config, model.moe
    x = next(iter(ImageBatches(ds, 6)))[0]
    with torch.no_grad():
        model.eval()
        expected = model(x)
        regions = patchify(model.features(x), cfg.region).double()  # (B, n, C*p*p)
        bank, bn, p = moe.experts, moe.experts.norm, cfg.region
        C, O, k, n = bank.in_channels, bank.out_channels, cfg.experts, cfg.regions
        out = torch.zeros(len(x), n, k, O * p * p, dtype=torch.float64)  # (B, n, k, O*p*p)
        weight = torch.zeros(len(x), n, k, dtype=torch.float64)  # gate of region j in expert s's pooled block
        for b in range(len(x)):
            for s in range(k):
                scores = regions[b] @ moe.router.weight[s].double()  # (n,)
                chosen = scores.topk(cfg.l).indices
                gates = torch.zeros(n, dtype=torch.float64)
                gates[chosen] = scores[chosen].softmax(0) if cfg.gate_activations else scores.softmax(0)[chosen]
                for j in chosen.tolist():
                    patch = regions[b, j].view(1, C, p, p)
                    mean, var = bn.running_mean[s * C:(s + 1) * C].double(), bn.running_var[s * C:(s + 1) * C].double()
                    h = (patch - mean.view(1, C, 1, 1)) / (var.view(1, C, 1, 1) + bn.eps).sqrt()
                    h = F.relu(h * bn.weight[s * C:(s + 1) * C].double().view(1, C, 1, 1)
                               + bn.bias[s * C:(s + 1) * C].double().view(1, C, 1, 1))
                    w, bias = bank.conv.weight[s * O:(s + 1) * O].double(), bank.conv.bias[s * O:(s + 1) * O].double()
                    y = F.conv2d(h, w, bias, padding=cfg.expert_kernel // 2).flatten()
                    out[b, j, s] = y if cfg.gate_activations else gates[j] * y
                weight[b, :, s] = gates
        side = cfg.map_size
        fmap = out.view(len(x), side // p, side // p, k * O, p, p).permute(0, 3, 1, 4, 2, 5).reshape(
            len(x), k * O, side, side)  # (B, k*O, S, S): expert s's channels in block s
        norm = model.norm
        act = F.relu(F.batch_norm(fmap, norm.running_mean.double(), norm.running_var.double(), norm.weight.double(),
                                  norm.bias.double(), False, 0.0, norm.eps))
        if cfg.gate_activations:  # sum over regions of gate x the region's mean activation, block by block
            act = patchify(act, p).view(len(x), n, k, O, p * p).mean(-1)  # (B, n, k, O)
            pooled = (act * weight.unsqueeze(-1)).sum(1).reshape(len(x), k * O)
        else:
            pooled = act.mean(dim=(2, 3))
        logits = F.linear(pooled, model.head.weight.double(), model.head.bias.double())
    torch.testing.assert_close(expected.double(), logits, rtol=1e-4, atol=1e-4)
    applied = weight.gather(1, moe.last_routing.index.transpose(1, 2).cpu()).transpose(1, 2)  # (B, k, l)
    torch.testing.assert_close(moe.last_routing.gates.double(), applied)  # the routing records the gates applied


def test_gated_activations_refuse_the_unnormalised_gate():
    with pytest.raises(PmoeError, match=r"softmax_all renormalised is softmax_selected\): use gate=softmax_selected"):
        build_preset("wrn-pmoe-tiny", gate="softmax_all")
