"""The report of `pmoe experiment prune-domains`: markdown tables (specialisation, accuracy against pruned count per
criterion, overlap of kept experts with the task domain's, Δ against each criterion paired by seed, published
numbers beside ours) and PNG plots (accuracy per criterion, routing mass per domain and expert)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pmoe.io import atomic_path
from pmoe.reports import line_plot, markdown_table, mean_std, plt

# Published (pruning paper, V-MoE-B/16, E=8, K=2, read off the authors' figure; REPRODUCTION §6, DESIGN §3):
# (setting, unpruned, Δ, importance baseline) at 6 of 8 experts pruned per layer, no post-pruning training.
PUBLISHED = (("V-MoE-B/16, CIFAR-10", 99.0, 96.9, "≈ 76"), ("V-MoE-B/16, CIFAR-100", 92.5, 84.5, "≈ 6"))
DELTA, IMPORTANCE = "router-norm-change", "gate-mass"  # V-MoE's importance: the gates an expert receives


def _fmt(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.3f} ± {s:.3f}"


def _by_model(cfg: Any, runs: list[dict]) -> dict[str, list[dict]]:
    return {m: [r for r in runs if r["model"] == m] for m in cfg.models}


def _accuracy(rs: list[dict], method: str, pruned: int, key: str) -> list[float]:
    return [p[key] for r in rs for p in r["points"] if p["method"] == method and p["pruned"] == pruned]


def _stages(cfg: Any) -> list[str]:
    return ["accuracy"] + (["accuracy_finetuned"] if cfg.post_steps else [])


def _plots(cfg: Any, model: str, rs: list[dict], out: Path) -> None:
    """accuracy[_finetuned]_MODEL.png: mean ± std over seeds against pruned count, one line per criterion."""
    counts, base = cfg.counts(model), [r["unpruned_accuracy"] for r in rs]
    for key in _stages(cfg):
        series = {}
        for m in cfg.methods:
            stats = [mean_std(base)] + [mean_std(_accuracy(rs, m, p, key)) for p in counts]
            series[m] = ([0, *counts], [a for a, _ in stats], [b for _, b in stats])
        after = "after pruning" if key == "accuracy" else f"+ {cfg.post_steps} fine-tune steps"
        line_plot(out / f"{key}_{model}.png", series, f"experts pruned per layer (of {cfg.experts})",
                  f"test accuracy ({cfg.task})", f"{model}, {after}; {len(rs)} seeds", hline=mean_std(base)[0])


def _heat_map(path: Path, model: str, rec: dict, domains: list[str]) -> None:
    """Routing mass per domain (rows) and expert (columns) of every MoE layer of one pipeline's pretrained model."""
    layers = len(rec["mass"])
    fig, axes = plt.subplots(1, layers, figsize=(3.2 * layers + 1, 2.6), dpi=120, squeeze=False)
    for i, ax in enumerate(axes[0]):
        im = ax.imshow(rec["mass"][i], vmin=0, vmax=1, cmap="magma")
        ax.set(title=f"MoE layer {i}", xlabel="expert", xticks=range(len(rec["mass"][i][0])))
        ax.set_yticks(range(len(domains)), domains if i == 0 else [""] * len(domains))
        for d, row in enumerate(rec["mass"][i]):
            for s, v in enumerate(row):
                ax.text(s, d, f"{v:.2f}"[1:], ha="center", va="center", fontsize=6, color="white" if v < 0.5 else "k")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="share of the domain's gate mass")
    fig.suptitle(f"{model}, seed {rec['seed']}: routing of held-out images, pretrained model", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _specialisation(cfg: Any, models: dict[str, list[dict]], domains: list[str]) -> str:
    rows = []
    for model, rs in models.items():
        layers = range(len(rs[0]["mass"]))
        t, top = domains.index(cfg.task), rs[0]["top"]
        per_domain = " / ".join(f"{mean_std([r['domain_accuracy'][str(d)] for r in rs])[0]:.3f}"
                                for d in range(len(domains)))
        relevant, other = [], []
        for r in rs:
            for mass, delta in zip(r["mass"], r["delta"]):
                order = sorted(range(len(delta)), key=lambda s: -mass[t][s])
                relevant += [delta[s] for s in order[:top]]
                other += [delta[s] for s in order[top:]]
        rows.append([model, _fmt([r["pretrained_accuracy"] for r in rs]), per_domain,
                     _fmt([r["finetuned_accuracy"] for r in rs]),
                     " / ".join(_fmt([r["top_share"][i] for r in rs]) for i in layers),
                     " / ".join(_fmt([r["spearman"][i] for r in rs]) for i in layers),
                     f"{_fmt(relevant)} vs {_fmt(other)}"])
    chance = models[cfg.models[0]][0]["chance"]
    return markdown_table(["model", "pretrained accuracy (mixture)", f"per domain ({' / '.join(domains)})",
                           f"fine-tuned accuracy ({cfg.task})",
                           f"{cfg.task}'s mass on its top experts, per layer (chance {chance:.3f})",
                           f"Spearman(Δ, {cfg.task} mass), per layer",
                           f"Δ of {cfg.task}'s top experts vs the others"], rows)


def _accuracy_table(cfg: Any, model: str, rs: list[dict]) -> str:
    stages = _stages(cfg)
    rows = [["0 (fine-tuned)"] + [_fmt([r["unpruned_accuracy"] for r in rs])] * len(cfg.methods)]
    rows += [[f"{p} of {cfg.experts}"] + [" → ".join(_fmt(_accuracy(rs, m, p, k)) for k in stages)
                                          for m in cfg.methods] for p in cfg.counts(model)]
    return markdown_table(["pruned"] + cfg.methods, rows)


def _overlap_table(cfg: Any, model: str, rs: list[dict]) -> str:
    counts = cfg.counts(model)
    rows = [[m] + [f"{mean_std([r['overlap'][m][str(p)] for r in rs])[0]:.2f}" for p in counts]
            for m in cfg.methods]
    return markdown_table(["method"] + [f"{p} pruned" for p in counts], rows)


def _paired_table(cfg: Any, model: str, rs: list[dict]) -> str:
    """Δ's accuracy right after pruning minus each other criterion's, per seed: mean ± std, and in how many seeds Δ
    is higher (the seeds share the pretrained and fine-tuned models, so the pairing removes their spread)."""
    counts, rows = cfg.counts(model), []
    for m in (m for m in cfg.methods if m != DELTA):
        cells = []
        for p in counts:
            diff = [d - o for d, o in zip(_accuracy(rs, DELTA, p, "accuracy"), _accuracy(rs, m, p, "accuracy"))]
            mean, std = mean_std(diff)
            cells.append(f"{mean:+.3f} ± {std:.3f} ({sum(x > 0 for x in diff)}/{len(diff)})")
        rows.append([m] + cells)
    return markdown_table(["Δ minus"] + [f"{p} pruned" for p in counts], rows)


def _published(cfg: Any, models: dict[str, list[dict]]) -> str:
    p = 6 if all(6 in cfg.counts(m) for m in models) else max(min(cfg.counts(m)) for m in models)
    rows = [[s, f"{a:.1f}", f"{d:.1f}", imp, "–"] for s, a, d, imp in PUBLISHED]
    for model, rs in models.items():
        cell = lambda m: _fmt(_accuracy(rs, m, p, "accuracy")) if m in cfg.methods else "–"  # noqa: E731
        rows.append([f"ours: {model}, {cfg.task} (fraction)", _fmt([r["unpruned_accuracy"] for r in rs]),
                     cell(DELTA), cell(IMPORTANCE), cell("random")])
    return (f"At {p} of 8 experts pruned per layer, no post-pruning training (published: the pruning paper's "
            "V-MoE-B/16 figure as quoted in REPRODUCTION §6; the paper's E³ results are not quoted there):\n\n"
            + markdown_table(["setting", "unpruned", "Δ (router-norm-change)", "importance (ours: gate-mass)",
                              "random"], rows))


def report(cfg: Any, runs: list[dict], out: Path) -> str:
    """Write the plots into `out`; the markdown of the tables."""
    domains = list(cfg.domains_config().domains)
    models = _by_model(cfg, runs)
    text = (f"Fine-tuning task: **{cfg.task}**; {cfg.experts} experts per MoE layer; mean ± std over "
            f"{cfg.seeds} seeds.\n\nSpecialisation of the pretrained models (routing mass: each domain's gates over "
            "the experts on its held-out images, 1 per domain; top experts: the task domain's k/D most used):\n\n"
            + _specialisation(cfg, models, domains))
    for model, rs in models.items():
        _plots(cfg, model, rs, out)
        _heat_map(out / f"routing_{model}.png", model, rs[0], domains)
        after = (f"after pruning → after {cfg.post_steps} post-pruning fine-tune steps" if cfg.post_steps
                 else "after pruning, no post-pruning fine-tune")
        text += (f"\n## {model}\n\n![routing](routing_{model}.png) "
                 + " ".join(f"![{k}]({k}_{model}.png)" for k in _stages(cfg))
                 + f"\n\nTest accuracy on {cfg.task} ({after}; zero mode):\n\n" + _accuracy_table(cfg, model, rs)
                 + f"\nShare of each criterion's kept experts that are also among the {cfg.task} domain's most used "
                   "ones (as many, by the pretrained model's routing mass; every layer; mean over seeds):\n\n"
                 + _overlap_table(cfg, model, rs))
        if DELTA in cfg.methods:
            text += (f"\nΔ ({DELTA}) against each criterion right after pruning, per seed: Δ's accuracy minus its, "
                     "mean ± std over seeds (seeds where Δ is higher):\n\n" + _paired_table(cfg, model, rs))
    return text + "\n" + _published(cfg, models)
