"""Expert pruning by router-norm change where experts should specialise (pruning paper, the image analogue of its theory
setting): pretrain on a mixture of clearly different image domains, fine-tune on one, and prune.

Data: `domains` (`pmoe.data.vision.domains`: Fashion-MNIST, inverted Fashion-MNIST, patch canvases, the theory's
synthetic patterns; 28x28, each domain its own labels). For every model (8 experts per MoE layer) and seed:
1. Pretrain on the mixture (the preset's recipe, `epochs` over all domains; MoE in blocks 0 and 2 by default).
2. Fine-tune on the `task` domain alone (a new head of its classes) for `finetune_steps` steps.
3. Specialisation: per MoE layer, the routing (gate) mass of each domain's held-out test images over the experts of
   the pretrained model, normalised to 1 per domain; the share of the task domain's mass held by its top k/D experts
   (D domains; chance (k/D)/k); Δ per expert, and its Spearman correlation with the task domain's mass.
4. `pmoe prune-sweep` of the fine-tuned checkpoint: prune 2..7 of the 8 experts per layer (E³: the even counts, each
   member group keeps the same count) with every criterion, zero mode, test accuracy on the task domain after pruning
   and after `post_steps` steps of post-pruning fine-tune (the paper's official: SGD lr 0.01, momentum 0.9, no weight
   decay, clipping at 10); and how many of each criterion's kept experts are the task domain's most used ones.
Mean ± std over seeds per (model, criterion, pruned count). Every (model, seed) pipeline runs in a worker process
(they share a GPU; with device auto they spread over the visible GPUs), in OUT/runs/MODEL/seed<S> (pre/, ft/, sweep/,
unit.json); a re-run with the same flags resumes or reads back each stage.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from pmoe.checkpoints import load_checkpoint, read_config
from pmoe.data.vision import ImageBatches
from pmoe.data.vision.domains import DOMAINS, DomainsConfig
from pmoe.errors import check
from pmoe.experiments.flags import add_out, add_workers, device_name, given, nonnegative_int, positive_int
from pmoe.experiments.prune_domains_report import report
from pmoe.experiments.runner import parallel_map, spread_device
from pmoe.io import write_json, write_text
from pmoe.models.presets import PRESETS
from pmoe.models.vit import ViTConfig
from pmoe.prune.registry import METHODS
from pmoe.prune.scores import choose_kept, score_experts
from pmoe.prune.usage import gate_mass, layer_usage
from pmoe.runs.images import ImageDataSpec, finished, finetune_preset, train_preset
from pmoe.runs.prune_sweep import SweepConfig, prune_sweep
from pmoe.runs.tasks import FinetuneConfig
from pmoe.train.recipes import override, recipe_for
from pmoe.train.state import STATE
from pmoe.train.vision import FitConfig, resolve_device

NAME = "prune-domains"
HELP = "expert pruning by router-norm change on a mixture of image domains (fine-tuned on one)"
COUNT = "runs"
MODELS = ("vit-moe-tiny", "e3-tiny")
RUNTIME = ("models", "seeds", "device")  # fields a resumed experiment may change


FINETUNE_LR = {"sgd": 0.01, "adamw": 3e-4}  # the task fine-tune's optimizers and their default peak lr
# the official code's fine-tuning SGD (task and post-pruning fine-tunes), besides its lr
OFFICIAL_SGD = dict(momentum=0.9, weight_decay=0.0, clip_norm=10.0)


@dataclass
class PruneDomainsConfig:
    models: list[str] = field(default_factory=lambda: list(MODELS))  # vision presets with MoE layers
    experts: int = 8  # per MoE layer
    # preset fields for every model: MoE in blocks 0 and 2, where tokens still carry their domain's pixel statistics
    model_options: dict = field(default_factory=lambda: {"moe_blocks": [0, 2]})
    # token routing groups (vmoe: 8 images; E³: per member): capacity and balance then act over several images, so an
    # expert can take the tokens of one domain; with one image a group (the presets') every image spreads over all
    # experts
    group_images: int = 8
    seeds: int = 5
    task: str = "inverted"  # the fine-tuning domain (synthetic: 100% whatever is pruned)
    data: dict = field(default_factory=dict)  # fields of DomainsConfig (train_per_domain, test_per_domain, ...)
    data_dir: str | None = None  # Fashion-MNIST IDX folder (None: Debian's)
    epochs: int = 5  # pretraining epochs over the mixture
    batch_size: int = 256  # pretraining
    lr: float = 1e-3  # pretraining peak lr (AdamW, the tiny recipe's)
    finetune_steps: int = 150
    # the task fine-tune's optimizer: sgd as the official code's (momentum 0.9, no weight decay, clip 10; Δ's theory
    # is SGD's: AdamW moves every router coordinate by about its lr whatever its gradient), or adamw (the presets')
    finetune_optimizer: str = "sgd"
    finetune_lr: float | None = None  # None: 0.01 for sgd, 3e-4 for adamw (batch 128)
    pruned: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6, 7])  # experts pruned per layer
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    post_steps: int = 50  # post-pruning fine-tune steps (0: none)
    calib_samples: int = 256  # task-domain training images the data-driven criteria score on
    device: str = "auto"

    def __post_init__(self) -> None:
        for m in self.models:
            check(m in PRESETS and PRESETS[m].keywords.get("moe_blocks"),
                  f"model {m!r} is not a vision preset with MoE layers; expected e.g. {list(MODELS)}")
        check(self.task in DOMAINS, f"task must be a domain of {list(DOMAINS)}, got {self.task!r}")
        check(self.experts >= 2 and self.seeds >= 1 and len(self.pruned) > 0
              and all(1 <= p < self.experts for p in self.pruned),
              f"need experts >= 2, seeds >= 1 and pruned counts in 1..{self.experts - 1}; got experts={self.experts}, "
              f"seeds={self.seeds}, pruned={self.pruned}")
        self.domains_config()  # refuse bad data options now
        check(len(self.methods) > 0 and all(m in METHODS for m in self.methods),
              f"methods must be names of {list(METHODS)}, got {self.methods}")
        check(self.finetune_optimizer in FINETUNE_LR, f"finetune_optimizer must be one of {list(FINETUNE_LR)}, got "
                                                      f"{self.finetune_optimizer!r}")
        check(self.finetune_lr is None or 0 < self.finetune_lr < math.inf,
              f"finetune_lr must be > 0 and finite, got {self.finetune_lr}")
        check(0 < self.lr < math.inf, f"lr must be > 0 and finite, got {self.lr}")
        small = {k: getattr(self, k) for k in ("epochs", "batch_size", "finetune_steps", "calib_samples",
                                               "group_images") if getattr(self, k) < 1}
        check(not small, f"{', '.join(f'{k}={v}' for k, v in small.items())}: must be >= 1")
        check(self.post_steps >= 0, f"post_steps must be >= 0 (0: no post-pruning fine-tune), got {self.post_steps}")

    def domains_config(self, domain: str | None = None) -> DomainsConfig:
        cfg = DomainsConfig(**self.data, domain=domain)
        check(self.task in cfg.domains, f"task {self.task!r} is not among the domains {list(cfg.domains)}")
        return cfg

    def data_spec(self, domain: str | None = None) -> ImageDataSpec:
        """The mixture (None) or one domain alone."""
        return ImageDataSpec("domains", self.data_dir, options=asdict(self.domains_config(domain)))

    def overrides(self, model: str) -> dict:
        """Preset fields of `model`: the experts, `model_options`, and the routing groups of ViT-MoE and E³."""
        groups = {"group_images": self.group_images} if issubclass(PRESETS[model].func, ViTConfig) else {}
        return {"experts": self.experts, **groups, **self.model_options}

    def fit_config(self, model: str, seed: int, finetune: bool) -> FitConfig:
        """Pretraining (epochs over the mixture) or fine-tuning (finetune_steps at batch 128 at most) settings: the
        preset's recipe with lr, length and batch changed, no augmentation (a crop or flip breaks synthetic patches)."""
        base = recipe_for(model).fit_config(seed=seed, device=self.device)
        if not finetune:
            return override(base, lr=self.lr, epochs=self.epochs, batch_size=self.batch_size, augment=False)
        images = self.domains_config().train_per_domain
        batch = min(128, images)
        official = OFFICIAL_SGD if self.finetune_optimizer == "sgd" else {}
        cfg = override(base, optimizer=self.finetune_optimizer,
                       lr=self.finetune_lr or FINETUNE_LR[self.finetune_optimizer],
                       epochs=-(-self.finetune_steps // (images // batch)), batch_size=batch, augment=False, **official)
        return replace(cfg, max_steps=self.finetune_steps)

    def sweep_config(self, model: str, seed: int) -> SweepConfig:
        """Every method at the pruned counts `model` can take (E³: multiples of its members)."""
        post = FinetuneConfig(steps=self.post_steps, seed=seed, optimizer="sgd", lr=FINETUNE_LR["sgd"], augment=False,
                              **OFFICIAL_SGD)
        return SweepConfig(methods=list(self.methods), ratios=[p / self.experts for p in self.counts(model)],
                           seed=seed, calib_samples=self.calib_samples, finetune=post)

    def counts(self, model: str) -> list[int]:
        """The pruned counts of `pruned` that every member group of `model` can take equally."""
        groups = PRESETS[model].keywords.get("ensemble_size", 1)
        return [p for p in self.pruned if p % groups == 0 and self.experts % groups == 0]


QUICK = PruneDomainsConfig(seeds=2, data={"train_per_domain": 1000, "test_per_domain": 300}, epochs=2,
                           batch_size=64, finetune_steps=40, post_steps=0, calib_samples=128,
                           methods=["router-norm-change", "random", "router-norm", "frequency", "gate-mass",
                                    "saliency"])
FULL = PruneDomainsConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_out(p, "report folder (runs in OUT/runs)")
    p.add_argument("--quick", action="store_true", help="2 seeds, 1000 images per domain, 2 epochs, no post-pruning "
                                                        "fine-tune: a few minutes on 2 CPU cores")
    p.add_argument("--models", nargs="+", metavar="PRESET", help=f"vision presets with MoE layers (default: "
                                                                 f"{' '.join(MODELS)})")
    p.add_argument("--seeds", type=positive_int, help="seeds per model (default 5, quick 2)")
    p.add_argument("--task", help=f"the fine-tuning domain, one of {', '.join(DOMAINS)} (default: inverted)")
    p.add_argument("--epochs", type=positive_int, help="pretraining epochs over the mixture")
    p.add_argument("--finetune-steps", type=positive_int, help="fine-tuning steps on the task domain")
    p.add_argument("--finetune-optimizer", choices=list(FINETUNE_LR),
                   help="the task fine-tune's optimizer: sgd (default; the official code's, momentum 0.9, clip 10) or "
                        "adamw (the presets')")
    p.add_argument("--finetune-lr", type=float,
                   help="the task fine-tune's peak lr (default 0.01 for sgd, 3e-4 for adamw)")
    p.add_argument("--post-steps", type=nonnegative_int, help="post-pruning fine-tune steps (0: none)")
    p.add_argument("--group-images", type=positive_int,
                   help="token-routing groups of ViT-MoE and E3, in images (default 8, vmoe's; 1: the presets' per "
                        "image)")
    p.add_argument("--methods", nargs="+", metavar="METHOD", help=f"criteria (default: all of {', '.join(METHODS)})")
    p.add_argument("--data-dir", help="Fashion-MNIST IDX folder (default: Debian's)")
    p.add_argument("--device", type=device_name, help="auto (default: cuda if available), cpu, cuda, cuda:N")
    add_workers(p, "(model, seed) pipelines")


def config(args: argparse.Namespace) -> PruneDomainsConfig:
    names = ("models", "seeds", "task", "epochs", "finetune_steps", "finetune_optimizer", "finetune_lr", "post_steps",
             "group_images", "methods", "data_dir", "device")
    return replace(QUICK if args.quick else FULL, **given(args, names))


def unit_dir(out: Path, model: str, seed: int) -> Path:
    return out / "runs" / model / f"seed{seed}"


def settings(cfg: PruneDomainsConfig) -> dict:
    """The fields a finished pipeline must have been run with."""
    return json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in RUNTIME}))


@torch.no_grad()
def domain_mass(cfg: PruneDomainsConfig, model: nn.Module, device: torch.device) -> Tensor:
    """(layers, D, k): per MoE layer and domain, the gate mass of the domain's test images over the experts, each
    (layer, domain) row summing to 1."""
    rows = []
    for name in cfg.domains_config().domains:
        batches = (x for x, _ in ImageBatches(cfg.data_spec(name).make("test"), 512, device=device))
        rows.append(torch.stack([gate_mass(u) for u in layer_usage(model, batches)]))  # (layers, k)
    mass = torch.stack(rows, dim=1)  # (layers, D, k)
    return mass / mass.sum(-1, keepdim=True)


def spearman(a: Tensor, b: Tensor) -> float:
    """Rank correlation of two (k,) score vectors (ties broken by position)."""
    ra, rb = (v.argsort().argsort().double() for v in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def specialisation(cfg: PruneDomainsConfig, pre: nn.Module, ft: nn.Module, device: torch.device) -> dict:
    """Routing mass per domain of the pretrained model, Δ per expert, and how they relate for the task domain."""
    mass = domain_mass(cfg, pre, device)  # (layers, D, k)
    t = cfg.domains_config().domains.index(cfg.task)
    top = max(1, cfg.experts // mass.shape[1])
    delta = score_experts("router-norm-change", ft, pre)
    return {"mass": mass.tolist(), "top": top, "chance": top / cfg.experts,
            "top_share": mass[:, t].sort(-1, descending=True).values[:, :top].sum(-1).tolist(),
            "delta": [d.tolist() for d in delta],
            "spearman": [spearman(d.cpu(), m) for d, m in zip(delta, mass[:, t])]}


def overlaps(cfg: PruneDomainsConfig, pre: nn.Module, spec: dict, points: list[dict]) -> dict:
    """{method: {pruned count: share of its kept experts that the task domain's most used ones (as many, by routing
    mass of the pretrained model) also hold, over all layers}}."""
    t = cfg.domains_config().domains.index(cfg.task)
    task_mass = [torch.tensor(m[t]) for m in spec["mass"]]
    out: dict = {}
    for p in points:
        count = round(p["ratio"] * cfg.experts)
        best = choose_kept(task_mass, pre.moe_layers(), ratio=p["ratio"])
        shared = sum(len(set(a) & set(b)) for a, b in zip(p["kept"], best))
        out.setdefault(p["method"], {})[count] = shared / sum(len(a) for a in p["kept"])
    return out


def run_unit(out: Path, task: tuple[PruneDomainsConfig, tuple[str, int]]) -> dict:
    """Pretrain, fine-tune, measure and prune-sweep one (model, seed) of `task` = (config, (model, seed)), each stage
    resumed or read back; its record."""
    cfg, (model, seed) = task
    d = unit_dir(out, model, seed)
    if (d / "unit.json").is_file():
        rec = json.loads((d / "unit.json").read_text())
        check(rec["settings"] == settings(cfg), f"the finished pipeline in {d} was run with other settings; run the "
                                                "experiment into another folder")
        return rec
    pre, ft, sweep = d / "pre", d / "ft", d / "sweep"
    pre_result = read_config(pre)["result"] if finished(pre) else train_preset(
        model, cfg.data_spec(), cfg.fit_config(model, seed, False), pre, cfg.overrides(model),
        resume=(pre / STATE).exists(), progress=False)
    ft_result = read_config(ft)["result"] if finished(ft) else finetune_preset(
        pre, cfg.data_spec(cfg.task), cfg.fit_config(model, seed, True), ft, resume=(ft / STATE).exists(),
        progress=False)
    if not (sweep / "results.json").is_file():
        prune_sweep(ft, pre, cfg.sweep_config(model, seed), sweep, device=cfg.device)
    swept = json.loads((sweep / "results.json").read_text())
    device = resolve_device(cfg.device)
    pre_model, ft_model = (load_checkpoint(p)[0].to(device) for p in (pre, ft))
    spec = specialisation(cfg, pre_model, ft_model, device)
    points = [{"method": p["method"], "pruned": round(p["ratio"] * cfg.experts), "kept": p["kept"],
               "accuracy": p["accuracy"], **({"accuracy_finetuned": p["accuracy_finetuned"]}
                                             if "accuracy_finetuned" in p else {})} for p in swept["points"]]
    rec = {"model": model, "seed": seed, "settings": settings(cfg), "dir": str(d.relative_to(out)),
           "pretrained_accuracy": pre_result["test_accuracy"], "domain_accuracy": pre_result["group_accuracy"],
           "finetuned_accuracy": ft_result["test_accuracy"], "unpruned_accuracy": swept["unpruned"]["accuracy"],
           **spec, "overlap": overlaps(cfg, pre_model, spec, swept["points"]), "points": points,
           "seconds": {"pretrain": pre_result["seconds"], "finetune": ft_result["seconds"],
                       "sweep": swept["seconds"]}}
    write_json(d / "unit.json", rec)
    return json.loads((d / "unit.json").read_text())  # as a re-run reads it back (JSON keys are strings)


def run_experiment(cfg: PruneDomainsConfig, out_dir: str | Path, workers: int | None = None,
                   progress: bool = True) -> dict:
    """Every (model, seed) pipeline (`workers` at a time); results.json, PNG plots and results.md in out_dir."""
    out, start = Path(out_dir), time.perf_counter()
    jobs = [(m, s) for m in cfg.models for s in range(cfg.seeds)]
    tasks = [(replace(cfg, device=spread_device(cfg.device, i)), job) for i, job in enumerate(jobs)]  # over the GPUs
    runs = parallel_map(partial(run_unit, out), tasks, workers, progress, desc="pipelines")
    text = report(cfg, runs, out)
    seconds = round(time.perf_counter() - start, 1)
    write_json(out / "results.json", {"config": asdict(cfg), "seconds": seconds, "runs": runs})
    write_text(out / "results.md", f"# Expert pruning on a mixture of image domains\n\n{text}\n"
                                   f"Config: `{json.dumps(asdict(cfg))}`\n\nWall time: {seconds} s.\n")
    return {"seconds": seconds, "runs": len(runs), "report": text, "out": str(out)}
