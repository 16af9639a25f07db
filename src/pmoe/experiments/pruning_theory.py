"""Expert pruning by router-norm change in the theory's setting (Chowdhury et al., ICML 2024): Δ_s separates the
experts that learn the fine-tuning task from the others, and pruning by Δ keeps accuracy where random pruning
does not.

Data: the theory's synthetic patches with P pairs of class patterns (o_1^p for y=+1, o_2^p for y=-1; `pmoe.data`'s
`pairs`, `active`). A sample's label is set by one pattern of an active pair; the patterns of inactive pairs are
label-irrelevant background, like the q's.
1. Pretrain a joint pMoE (MixtureOfCNNs, k experts) in two stages. Branch: the k/P experts of group p train on pair
   p's task alone (the others removed, as Branch-Train-MiX trains domain experts). Mix: all experts train jointly on
   the mixture of all P tasks. (Joint training from scratch, `branch_epochs=0`, makes every router pick every class
   pattern, so no expert is task-irrelevant: measured in README.)
2. Fine-tune the whole model on pair 0's binary task; the other pairs' patterns now appear as background.
3. Task-relevant experts: those whose router picks the fine-tuning task's class-discriminative patch in at least
   `relevant_hit` of the test samples of a class (chance l/n; `hit_initial`: the same at the seed's initialisation).
   Score all experts by each method and prune every ratio in zero mode: test accuracy on the fine-tuning task, mean ±
   std over seeds.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn

from pmoe.data import PatchDataset, make_dataset
from pmoe.experiments.flags import add_out, add_workers, given, positive_int
from pmoe.experiments.runner import parallel_map
from pmoe.io import atomic_path, write_json, write_text
from pmoe.metrics import discriminative_routing, evaluate
from pmoe.models import theory_config
from pmoe.models.theory import build_theory_model
from pmoe.prune.scores import choose_kept, score_experts
from pmoe.prune.surgery import prune_model
from pmoe.reports import line_plot, markdown_table, mean_std
from pmoe.train import TrainConfig, train

NAME = "prune-theory"
HELP = "expert pruning by router-norm change on the theory's synthetic data"
COUNT = "seeds"


@dataclass
class PruneTheoryConfig:
    experts: int = 8  # k
    pairs: int = 4  # P pattern pairs (tasks); experts p*k/P .. (p+1)*k/P - 1 branch on pair p
    n: int = 16  # patches per sample
    d: int = 64  # patch dimension
    l: int = 2  # patches per expert per sample
    neurons: int = 5  # per expert
    num_irrelevant: int = 8  # q patterns
    noise: float = 0.1
    branch_samples: int = 200  # per pair
    branch_epochs: int = 20  # 0: no branch stage (joint pretraining from scratch)
    mix_samples: int = 800
    mix_epochs: int = 10
    finetune_samples: int = 200
    finetune_epochs: int = 40
    post_epochs: int = 0  # post-pruning fine-tune epochs (0: none)
    test_samples: int = 1000
    seeds: int = 4
    methods: list[str] = field(default_factory=lambda: ["router-norm-change", "random", "router-norm", "saliency"])
    relevant_hit: float = 0.5  # an expert is task-relevant if it routes a class's discriminative patch this often

    @property
    def ratios(self) -> list[float]:
        """Every ratio that leaves 1..k-1 experts: 1/k .. (k-1)/k."""
        return [p / self.experts for p in range(1, self.experts)]


QUICK = PruneTheoryConfig()
FULL = PruneTheoryConfig(post_epochs=5, test_samples=2000, seeds=10)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_out(p)
    p.add_argument("--quick", action="store_true", help="4 seeds, no post-pruning fine-tune (under a minute)")
    p.add_argument("--seeds", type=positive_int, help="seeds (default: 10, quick: 4)")
    add_workers(p, "seeds")


def config(args: argparse.Namespace) -> PruneTheoryConfig:
    return replace(QUICK if args.quick else FULL, **given(args, ("seeds",)))


def _data(cfg: PruneTheoryConfig, split: str, samples: int, seed: int, active: list[int] | None) -> PatchDataset:
    return make_dataset("synthetic", split, samples, seed, n=cfg.n, d=cfg.d, pairs=cfg.pairs, active=active,
                        num_irrelevant=cfg.num_irrelevant, similarity=0.0, noise=cfg.noise)


def _fit(model: nn.Module, ds: PatchDataset, epochs: int, seed: int) -> None:
    """The paper's recipe (plain SGD, lr 0.2, batch 20), evaluated only at the end."""
    train(model, ds, ds, TrainConfig(epochs=epochs, seed=seed, log_routing=False), progress=False)


def initial(cfg: PruneTheoryConfig, seed: int) -> nn.Module:
    """The joint pMoE of `seed` at its initialisation."""
    return build_theory_model(theory_config("pmoe", cfg.n, cfg.d, experts=cfg.experts, l=cfg.l, neurons=cfg.neurons,
                                            seed=seed))


def expert_hits(model: nn.Module, ds: PatchDataset) -> tuple[Tensor, dict]:
    """((k,) per expert the larger over the two classes of its hit rate of the class patch, the routing on ds)."""
    routing = discriminative_routing(model, ds)
    return torch.tensor([routing["per_class"]["+1"], routing["per_class"]["-1"]]).amax(dim=0), routing


def pretrain(cfg: PruneTheoryConfig, seed: int) -> nn.Module:
    """Branch (each expert group on its pair's task alone), then mix (all experts on all tasks)."""
    model = initial(cfg, seed)
    g = cfg.experts // cfg.pairs
    for p in range(cfg.pairs if cfg.branch_epochs else 0):
        group = list(range(p * g, (p + 1) * g))
        branch = prune_model(copy.deepcopy(model), [group], "truncate")  # the group's experts alone
        _fit(branch, _data(cfg, "train", cfg.branch_samples, 1000 * seed + p, [p]), cfg.branch_epochs, seed)
        full = model.moe.state_dict()
        for name, t in branch.moe.state_dict().items():  # every tensor has the expert axis first
            full[name][group] = t
    _fit(model, _data(cfg, "train", cfg.mix_samples, 1000 * seed + 100, None), cfg.mix_epochs, seed)
    return model


def run_seed(cfg: PruneTheoryConfig, seed: int) -> dict:
    """Pretrain, fine-tune on pair 0, score and prune at every ratio; the record of one seed."""
    pretrained = pretrain(cfg, seed)
    ft_train = _data(cfg, "train", cfg.finetune_samples, 1000 * seed + 200, [0])
    ft_test = _data(cfg, "test", cfg.test_samples, 1000 * seed + 200, [0])
    finetuned = copy.deepcopy(pretrained)
    _fit(finetuned, ft_train, cfg.finetune_epochs, seed)
    hit, routing = expert_hits(finetuned, ft_test)  # (k,)
    rec = {"seed": seed, "pretrained_accuracy": evaluate(pretrained, ft_test)["accuracy"],
           "finetuned_accuracy": evaluate(finetuned, ft_test)["accuracy"], "hit": hit.tolist(),
           "hit_initial": expert_hits(initial(cfg, seed), ft_test)[0].tolist(),
           "relevant": (hit >= cfg.relevant_hit).tolist(), "chance": routing["chance"], "scores": {}, "accuracy": {}}
    for method in cfg.methods:
        scores = score_experts(method, finetuned, pretrained, ft_train.x.split(256), seed=seed)
        rec["scores"][method] = scores[0].tolist()
        rec["accuracy"][method] = [_pruned_accuracy(cfg, finetuned, scores, r, ft_train, ft_test, seed)
                                   for r in cfg.ratios]
    return rec


def _pruned_accuracy(cfg: PruneTheoryConfig, finetuned: nn.Module, scores: list, ratio: float, ft_train: PatchDataset,
                     ft_test: PatchDataset, seed: int) -> list[float]:
    """[accuracy after pruning] (+ [after post_epochs of fine-tune])."""
    model = prune_model(copy.deepcopy(finetuned), choose_kept(scores, finetuned.moe_layers(), ratio=ratio), "zero")
    out = [evaluate(model, ft_test)["accuracy"]]
    if cfg.post_epochs:
        _fit(model, ft_train, cfg.post_epochs, seed)
        out.append(evaluate(model, ft_test)["accuracy"])
    return out


def separation(rec: dict, method: str = "router-norm-change") -> float | None:
    """P(score of a task-relevant expert > score of a task-irrelevant one), over all such pairs (AUC)."""
    s, rel = rec["scores"][method], rec["relevant"]
    pairs = [(a, b) for a, ra in zip(s, rel) for b, rb in zip(s, rel) if ra and not rb]
    return sum(a > b for a, b in pairs) / len(pairs) if pairs else None


def _delta_plot(path: Path, runs: list[dict]) -> None:
    """Δ of every expert of every seed against how often it routes the fine-tuning task's class patch."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for rel, colour, label in ((True, "tab:red", "task-relevant"), (False, "tab:blue", "task-irrelevant")):
        pts = [(h, s) for r in runs for h, s, x in zip(r["hit"], r["scores"]["router-norm-change"], r["relevant"])
               if x == rel]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=colour, label=label, alpha=0.7)
    ax.axhline(0, color="grey", linewidth=1)
    ax.axvline(sum(max(r["hit_initial"]) for r in runs) / len(runs), color="grey", linestyle=":",
               label="largest hit at init (mean)")
    ax.set(xlabel="share of a class's test samples whose class patch the expert routes", ylabel="Δ = ‖w(T)‖ − ‖w(0)‖",
           title=f"router-norm change per expert, {len(runs)} seeds")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _fmt(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.3f} ± {s:.3f}"


def report(cfg: PruneTheoryConfig, runs: list[dict], out: Path) -> str:
    """Write the plots; return the markdown of the two tables."""
    stages = ["after pruning"] + ([f"+ {cfg.post_epochs} epochs"] if cfg.post_epochs else [])
    acc = {(m, i, j): [r["accuracy"][m][i][j] for r in runs] for m in cfg.methods for i in range(len(cfg.ratios))
           for j in range(len(stages))}
    base = [r["finetuned_accuracy"] for r in runs]
    series = {}
    for m in cfg.methods:
        stats = [mean_std(base)] + [mean_std(acc[(m, i, 0)]) for i in range(len(cfg.ratios))]
        series[m] = ([0.0, *cfg.ratios], [a for a, _ in stats], [b for _, b in stats])
    line_plot(out / "accuracy_vs_ratio.png", series, "experts pruned per layer", "test accuracy (fine-tuning task)",
              f"k={cfg.experts}, no post-pruning training; mean ± std over {len(runs)} seeds")
    _delta_plot(out / "delta_vs_routing.png", runs)
    rows = []
    for r in runs:
        delta = {rel: [s for s, x in zip(r["scores"]["router-norm-change"], r["relevant"]) if x == rel]
                 for rel in (True, False)}
        auc = [separation(r, m) for m in cfg.methods]
        rows.append([r["seed"], f"{r['finetuned_accuracy']:.3f}", [i for i, x in enumerate(r["relevant"]) if x],
                     f"{max(r['hit']):.3f} / {max(r['hit_initial']):.3f}",
                     f"{min(delta[True]):+.3f}" if delta[True] else "–",
                     f"{max(delta[False]):+.3f}" if delta[False] else "–"]
                    + [f"{a:.2f}" if a is not None else "–" for a in auc])
    text = ("Task-relevant experts and the separation of their scores from the others' (AUC: the share of "
            "(relevant, irrelevant) expert pairs that the method ranks right; 1 = perfect, 0.5 = chance):\n\n"
            + markdown_table(["seed", "fine-tuned accuracy", f"task-relevant experts (hit ≥ {cfg.relevant_hit:g})",
                              "largest hit: fine-tuned / at init", "smallest Δ of relevant",
                              "largest Δ of irrelevant"] + [f"AUC {m}" for m in cfg.methods], rows)
            + f"\nHit: the share of a class's test samples whose class patch an expert's router takes, the larger "
              f"over the two classes (chance l/n = {runs[0]['chance']:.3f} for one expert); at init: the same "
              "model at the seed's initialisation, before any training.\n")
    rows = [[f"{r:g}", cfg.experts - round(r * cfg.experts)]
            + [" → ".join(_fmt(acc[(m, i, j)]) for j in range(len(stages))) for m in cfg.methods]
            for i, r in enumerate(cfg.ratios)]
    return (text + f"\nTest accuracy on the fine-tuning task after pruning (zero mode; fine-tuned: {_fmt(base)}"
            + (f"; after pruning → after {cfg.post_epochs} epochs of post-pruning fine-tune" if cfg.post_epochs else "")
            + "):\n\n" + markdown_table(["pruned", "kept"] + cfg.methods, rows))


def run_experiment(cfg: PruneTheoryConfig, out_dir: str | Path, workers: int | None = None,
                   progress: bool = True) -> dict:
    """Run every seed (in parallel processes), write results.json, two PNG plots and results.md into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = parallel_map(partial(run_seed, cfg), range(cfg.seeds), workers, progress, desc="seeds")
    text = report(cfg, runs, out)
    seconds = round(time.perf_counter() - start, 1)
    write_json(out / "results.json", {"config": asdict(cfg), "ratios": cfg.ratios, "seconds": seconds, "runs": runs})
    write_text(out / "results.md", f"# Expert pruning in the theory's setting\n\n![accuracy vs ratio]"
                                   f"(accuracy_vs_ratio.png) ![Δ per expert](delta_vs_routing.png)\n\n{text}\n"
                                   f"Config: `{json.dumps(asdict(cfg))}`\n\nWall time: {seconds} s.\n")
    return {"seconds": seconds, "seeds": cfg.seeds, "report": text, "out": str(out)}
