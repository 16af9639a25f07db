"""`prune_checkpoint`: score, prune, evaluate, optionally fine-tune, and save a pruned checkpoint (`pmoe prune`).

The pruned checkpoint keeps the fine-tuned config's model and data sections and adds `pruning`
(`pmoe.prune.surgery.pruning_record`: mode, kept ids per layer, method, sources, result), from which
`load_checkpoint` rebuilds the pruned shape. It is written atomically (`pmoe.outputs`): a failed run leaves no output
folder.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from pmoe.checkpoints import check_finite_weights, load_checkpoint, read_config, save_checkpoint, weights_sha256
from pmoe.errors import check
from pmoe.outputs import output_folder
from pmoe.prune.cost import model_cost
from pmoe.prune.criteria import KeepSpec
from pmoe.prune.registry import criterion
from pmoe.prune.scores import choose_kept, score_experts
from pmoe.prune.surgery import MODES, prune_model, pruning_record
from pmoe.runs.kinds import make_task
from pmoe.runs.tasks import FinetuneConfig, Task

STALE = ("format", "version", "arch", "model", "progress", "result")  # config sections not carried over


@dataclass
class PruneConfig:
    method: str = "router-norm-change"  # one of pmoe.prune.registry.METHODS
    keep: int | None = None  # experts kept per MoE layer
    ratio: float | None = None  # or: fraction pruned per layer
    mode: str = "zero"  # zero | truncate (pmoe.prune.surgery)
    seed: int = 0  # of method random
    calib_samples: int = 256  # training samples the data-driven methods score on
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        criterion(self.method)
        check(self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}")
        KeepSpec(self.keep, self.ratio)
        check(self.calib_samples >= 1 and self.finetune.steps >= 0,
              f"need calib_samples >= 1 and finetune steps >= 0, got {self.calib_samples}, {self.finetune.steps}")


@dataclass
class Pair:
    """A fine-tuned checkpoint, the checkpoint it was fine-tuned from, and the data of the fine-tuned one."""

    finetuned: nn.Module
    pretrained: nn.Module | None
    config: dict  # the fine-tuned checkpoint's config.json
    task: Task
    sources: dict  # {'finetuned' | 'pretrained': {'path', 'sha256'}}


def _source(ckpt_dir: str | Path) -> dict:
    return {"path": str(Path(ckpt_dir).resolve()), "sha256": weights_sha256(ckpt_dir)}


def load_pair(finetuned_dir: str | Path, pretrained_dir: str | Path | None, device: str = "auto") -> Pair:
    """Load and check a fine-tuned checkpoint and its pretrained parent (either may not be pruned already)."""
    cfg = read_config(finetuned_dir)
    check("pruning" not in cfg, f"{finetuned_dir} is a pruned checkpoint already; prune the fine-tuned one")
    sources = {"finetuned": _source(finetuned_dir)}
    if pretrained_dir is not None:
        pre_cfg = read_config(pretrained_dir)
        check("pruning" not in pre_cfg, f"{pretrained_dir} is a pruned checkpoint; give the pretrained model the "
                                        f"fine-tuned one started from")
        check(pre_cfg["arch"] == cfg["arch"], f"{finetuned_dir} holds a {cfg['arch']!r} model, {pretrained_dir} a "
                                              f"{pre_cfg['arch']!r} one; expected one architecture")
        sources["pretrained"] = _source(pretrained_dir)
        parent, sha = cfg.get("pretrained", {}), sources["pretrained"]["sha256"]
        if "sha256" in parent:  # the fine-tune recorded its parent
            check(parent["sha256"] == sha, f"{finetuned_dir} was fine-tuned from {parent.get('path')} (weights sha256 "
                                           f"{parent['sha256'][:12]}…), not from {pretrained_dir} (sha256 {sha[:12]}…)")
    for ckpt in filter(None, (finetuned_dir, pretrained_dir)):
        check_finite_weights(ckpt, "prune")
    task = make_task(cfg, device)
    finetuned = load_checkpoint(finetuned_dir)[0].to(task.device)
    pretrained = load_checkpoint(pretrained_dir)[0].to(task.device) if pretrained_dir is not None else None
    return Pair(finetuned, pretrained, cfg, task, sources)


def scores_for(pair: Pair, method: str, cfg: PruneConfig) -> list[torch.Tensor]:
    """`method`'s scores of the fine-tuned model's experts; calibration data only for the data-driven methods."""
    calib = pair.task.calibration(cfg.calib_samples) if criterion(method).needs_data else None
    return score_experts(method, pair.finetuned, pair.pretrained, calib, cfg.seed)


def pruned_copy(pair: Pair, scores: list[torch.Tensor], cfg: PruneConfig) -> tuple[nn.Module, list[list[int]]]:
    """A copy of the fine-tuned model with the lowest-scoring experts removed, and the kept ids per layer."""
    kept = choose_kept(scores, pair.finetuned.moe_layers(), cfg.keep, cfg.ratio)
    return prune_model(copy.deepcopy(pair.finetuned), kept, cfg.mode), kept


def accuracy(task: Task, model: nn.Module) -> float:
    """Test accuracy of `model` on `task`."""
    return task.evaluate(model)["accuracy"]


def prune_checkpoint(finetuned_dir: str | Path, pretrained_dir: str | Path | None, cfg: PruneConfig,
                     out_dir: str | Path, overwrite: bool = False, device: str = "auto") -> dict:
    """Prune a fine-tuned checkpoint into `out_dir`; returns the result (also in the out config's `pruning`)."""
    with output_folder(out_dir, [finetuned_dir, pretrained_dir], overwrite) as tmp:
        result = _prune(finetuned_dir, pretrained_dir, cfg, tmp, device)
    return {"finetuned": str(finetuned_dir), "pretrained": None if pretrained_dir is None else str(pretrained_dir),
            "out": str(out_dir), **result}


def _prune(finetuned_dir: str | Path, pretrained_dir: str | Path | None, cfg: PruneConfig, tmp: Path,
           device: str) -> dict:
    """`prune_checkpoint`'s work, writing the pruned checkpoint into `tmp`; the result."""
    start = time.perf_counter()
    pair = load_pair(finetuned_dir, pretrained_dir, device)
    scores = scores_for(pair, cfg.method, cfg)
    model, kept = pruned_copy(pair, scores, cfg)
    x = pair.task.example(64)
    before, after = model_cost(pair.finetuned, x, latency=False), model_cost(model, x, latency=False)
    counts = [len(s) for s in scores]
    result = {"method": cfg.method, "mode": cfg.mode, "keep": [len(ids) for ids in kept],
              "layers": [{"num_experts": k, "kept": ids, "pruned": sorted(set(range(k)) - set(ids)),
                          "scores": s.tolist()} for k, ids, s in zip(counts, kept, scores)],
              "params_before": before["params"], "params_after": after["params"],
              "flops_before": before["flops"], "flops_after": after["flops"],
              "test_accuracy_before": accuracy(pair.task, pair.finetuned),
              "test_accuracy_after": accuracy(pair.task, model)}
    if cfg.finetune.steps:
        pair.task.finetune(model, cfg.finetune)
        result["test_accuracy_finetuned"] = accuracy(pair.task, model)
    result["seconds"] = round(time.perf_counter() - start, 3)
    record = pruning_record(kept, cfg.mode, counts, config=asdict(cfg), **pair.sources, result=result)
    sections = {k: v for k, v in pair.config.items() if k not in STALE}
    save_checkpoint(tmp, model, pair.config["arch"], pair.config["model"], **{**sections, "pruning": record})
    return result
