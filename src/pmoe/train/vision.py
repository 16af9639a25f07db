"""Training of the vision models (WRN, ViT-MoE, E³) at scale: `fit`, with per-epoch evaluation, JSON-lines metrics
and checkpoints from which a killed run resumes to exactly the same weights.

Objective: cross-entropy (`task_loss`: members' mean for E³) + `model.aux_loss()`. Per optimizer step: optional
gradient clipping by global norm, then the scheduler's lr (warm-up, cosine or constant). bf16 autocast on CUDA.
Before every evaluation and checkpoint, batch-norm statistics are recomputed for the current weights
(`pmoe.train.batchnorm`): eval mode then computes what training did.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from pmoe.checkpoints import CONFIG, read_config, save_checkpoint
from pmoe.data.vision import Augment, ImageBatches, ImageDataset
from pmoe.errors import check
from pmoe.io import write_text
from pmoe.train.batchnorm import recompute_batch_norm
from pmoe.train.divergence import check_finite, finite_weights, mark, no_step
from pmoe.train.evaluate import evaluate_images, task_loss
from pmoe.train.optim import OptimConfig, make_optimizer, make_scheduler
from pmoe.train.state import STATE, as_json, cpu_state, differences, load_state, rng_states, save_state, set_rng_states

RUNTIME_FIELDS = ("device", "eval_batch_size", "num_workers", "eval_every")  # FitConfig fields a resumed run may change
RESERVED = ("format", "version", "arch", "model", "fit", "progress")  # config.json sections fit writes itself


@dataclass
class FitConfig:
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (post-pruning fine-tune uses steps)
    batch_size: int = 128  # the last incomplete batch of every epoch is dropped
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: bool = True  # random crop (pad 4) + flip on the training batches
    bf16: bool = True  # autocast bf16 on CUDA (ignored on CPU unless cpu_bf16)
    cpu_bf16: bool = False  # autocast bf16 on CPU too
    seed: int = 0  # batch order, augmentation, routing noise, dropout
    device: str = "auto"  # auto -> cuda if available
    eval_batch_size: int = 512
    num_workers: int = 0  # DataLoader workers decoding file-backed data sets
    eval_every: int = 1  # evaluate and checkpoint every this many epochs, and after the last step
    recipe: str | None = None  # the recipe these settings start from (pmoe.train.recipes); None: set by hand

    def __post_init__(self) -> None:
        if isinstance(self.optim, dict):  # as read back from config.json
            self.optim = OptimConfig(**self.optim)
        check(self.epochs >= 1 and (self.max_steps is None or self.max_steps >= 1) and self.batch_size >= 1
              and self.eval_every >= 1, f"need epochs >= 1, max_steps >= 1 (or None), batch_size >= 1, "
              f"eval_every >= 1; got {self.epochs}, {self.max_steps}, {self.batch_size}, {self.eval_every}")

    def total_steps(self, num_samples: int) -> int:
        """Optimizer steps of a run on `num_samples` training samples: epochs, capped by max_steps."""
        steps = self.epochs * (num_samples // self.batch_size)
        return steps if self.max_steps is None else min(steps, self.max_steps)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else cpu; any other name as torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    check(device is not None and device.type in ("cpu", "cuda"),
          f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    check(device.type == "cpu" or torch.cuda.is_available(), f"device {name!r} asked for, but CUDA is not available")
    return device


def model_spec(model: nn.Module) -> tuple[str, dict]:
    """(arch, config dict) of a model built by `pmoe.models.build_model`, as saved in config.json."""
    from pmoe.models import ARCHS

    cfg = getattr(model, "config", None)
    arch = next((a for a, (cls, _) in ARCHS.items() if type(cfg) is cls), None)
    check(arch is not None, f"{type(model).__name__} has no `config` of a pmoe architecture ({sorted(ARCHS)}); "
                            "fit saves checkpoints of pmoe models only")
    return arch, cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)


class _Session:
    """The mutable parts of a run: model, optimizer, scheduler, batches, counters, history."""

    def __init__(self, model: nn.Module, train_ds: ImageDataset, cfg: FitConfig, device: torch.device) -> None:
        check(len(train_ds) >= cfg.batch_size,
              f"the training set has {len(train_ds)} samples, fewer than one batch of {cfg.batch_size}: "
              "lower the batch size")
        self.model, self.cfg, self.device = model.to(device), cfg, device
        self.opt = make_optimizer(model, cfg.optim)
        self.total = cfg.total_steps(len(train_ds))
        self.sched = make_scheduler(self.opt, cfg.optim, self.total)
        self.batches = ImageBatches(train_ds, cfg.batch_size, shuffle=True, augment=Augment() if cfg.augment else None,
                                    seed=cfg.seed, drop_last=True, num_workers=cfg.num_workers, device=device)
        self.step, self.seconds, self.history = 0, 0.0, []
        use_bf16 = cfg.bf16 and (device.type == "cuda" or cfg.cpu_bf16)
        self.autocast = lambda: torch.autocast(device.type, torch.bfloat16, enabled=use_bf16)

    def state(self, settings: dict) -> dict[str, Any]:
        return {"model": cpu_state(self.model), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "rng": rng_states(), "batches_epoch": self.batches.epoch,
                "step": self.step, "seconds": self.seconds, "history": self.history, "settings": settings}

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        set_rng_states(state["rng"])
        self.batches.epoch, self.step = state["batches_epoch"], state["step"]
        self.seconds, self.history = state["seconds"], state["history"]

    def precise_batch_norm(self) -> None:
        """Recompute the model's batch-norm statistics on un-augmented training batches in a fixed order."""
        batches = ImageBatches(self.batches.ds, self.cfg.batch_size, shuffle=True, seed=self.cfg.seed,
                               drop_last=True, num_workers=self.cfg.num_workers, device=self.device)
        recompute_batch_norm(self.model, batches, autocast=self.autocast)

    def train_epoch(self, progress: bool) -> dict[str, float]:
        """One epoch (or up to the last step): {'lr', 'train_loss', 'train_aux_loss', 'train_accuracy',
        'images_per_second'}; loss = task loss + aux loss, means over the epoch's batches. A non-finite loss or
        weights stop the run (`pmoe.train.divergence`)."""
        model, opt, clip = self.model, self.opt, self.cfg.optim.clip_norm
        sums = torch.zeros(3, device=self.device)  # loss, aux loss, correct
        first_bad = no_step(self.device)  # the first step whose loss is NaN or infinite (divergence.mark)
        images, batches, lr, start = 0, 0, 0.0, time.perf_counter()
        bar = tqdm(total=min(len(self.batches), self.total - self.step) * self.cfg.batch_size, unit="img",
                   unit_scale=True, desc=f"epoch {self.batches.epoch + 1}", disable=not progress, leave=False)
        model.train()
        for x, y in self.batches:
            with self.autocast():
                loss, scores = task_loss(model, x, y)
                aux = model.aux_loss().float()
            total = loss + aux  # the objective
            opt.zero_grad(set_to_none=True)
            total.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            self.sched.step()
            self.step += 1
            first_bad = mark(first_bad, total, self.step)
            sums += torch.stack([total.detach(), aux.detach(), (scores.argmax(-1) == y).sum().float()])
            images, batches = images + len(y), batches + 1
            bar.update(len(y))
            if self.step >= self.total:
                break
        bar.close()
        finite = finite_weights(model.parameters()).float()
        loss_sum, aux_sum, correct, bad, ok = torch.cat([sums, first_bad[None], finite[None]]).tolist()
        check_finite(bad, ok == 1, self.step, f"epoch {self.batches.epoch}")
        return {"lr": lr, "train_loss": loss_sum / batches, "train_aux_loss": aux_sum / batches,
                "train_accuracy": correct / images, "images_per_second": images / (time.perf_counter() - start)}


def fit(model: nn.Module, train_ds: ImageDataset, eval_ds: ImageDataset | None, cfg: FitConfig,
        out_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
        on_epoch: Callable[[dict], None] | None = None, checkpoint_meta: dict | None = None) -> list[dict]:
    """Train `model` in place on `train_ds`; returns one record per epoch (earlier sessions' too when resuming).

    After every epoch, and at `cfg.max_steps` mid-epoch: record epoch, step, lr, train loss/accuracy, images/s and
    seconds, and call `on_epoch(record)`. After every `cfg.eval_every`-th epoch and the last step, before that:
    evaluate on `eval_ds` (keys 'eval_*'; None: no evaluation), and with `out_dir` write out_dir/train_state.pt (the
    whole state, atomically), then model.safetensors and config.json (sections arch, model, fit, progress, and
    `checkpoint_meta`'s) and metrics.jsonl (the records). `resume=True` continues
    the run of out_dir, whose settings must equal these; a finished run is returned as it is.
    """
    settings = _settings(model, cfg, out_dir, checkpoint_meta)
    s = _Session(model, train_ds, cfg, resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    out = Path(out_dir) if out_dir is not None else None
    if resume:
        check(out is not None, "resume=True needs the out_dir of the run to continue")
        state = load_state(out)
        diff = differences(state["settings"], settings)
        check(not diff, f"the run in {out} was started with other settings; resume it with the same ones, or train "
                        f"into another folder. Differences (saved -> now): {'; '.join(diff)}")
        s.restore(state)
    else:
        check(out is None or not (out / STATE).exists(),
              f"{out} already holds a training run; resume it (--resume / resume=True) or choose another folder")
    if s.step >= s.total and out is not None and not _published(out, s):  # a finished run whose publishing was cut
        _publish(out, s, settings)
    while s.step < s.total:
        start = time.perf_counter()
        rec = {"epoch": s.batches.epoch + 1, **s.train_epoch(progress)}
        checkpoint = s.step >= s.total or rec["epoch"] % cfg.eval_every == 0
        if checkpoint:  # batch-norm statistics of the weights evaluated and saved, not a lagging EMA
            s.precise_batch_norm()
        if eval_ds is not None and checkpoint:
            ev = evaluate_images(s.model, eval_ds, cfg.eval_batch_size, s.device, cfg.num_workers)
            rec.update({f"eval_{k}": v for k, v in ev.items()})
        s.seconds += time.perf_counter() - start
        rec = as_json({**rec, "step": s.step, "seconds": round(s.seconds, 3)})  # group ids as JSON keys: strings
        s.history.append(rec)
        if progress:
            print(" ".join(f"{k} {v:.4g}" for k, v in rec.items() if isinstance(v, (int, float))), file=sys.stderr)
        if out is not None and checkpoint:
            save_state(out, s.state(settings))
            _publish(out, s, settings)
        if on_epoch is not None:
            on_epoch(rec)
    s.model.eval()
    return s.history


def _settings(model: nn.Module, cfg: FitConfig, out_dir: str | Path | None, meta: dict | None) -> dict:
    """What a resumed run must share with its start: arch, model config, fit settings, `meta`'s sections."""
    meta = meta or {}
    check(not set(meta) & set(RESERVED), f"checkpoint_meta may not set the sections {RESERVED}, got {sorted(meta)}")
    arch, model_cfg = model_spec(model) if out_dir is not None else (None, None)
    fit_cfg = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_FIELDS}
    return as_json({"arch": arch, "model": model_cfg, "fit": fit_cfg, **meta})


def _progress(s: _Session) -> dict:
    return {"epoch": s.batches.epoch, "step": s.step, "total_steps": s.total, "finished": s.step >= s.total}


def _published(out: Path, s: _Session) -> bool:
    """Whether out's config.json, written last by `_publish`, records the session's current progress."""
    return (out / CONFIG).is_file() and read_config(out).get("progress") == _progress(s)


def _publish(out: Path, s: _Session, settings: dict) -> None:
    """metrics.jsonl, then the checkpoint (model.safetensors, then config.json) of the session's current state."""
    meta = {k: v for k, v in settings.items() if k not in RESERVED}
    write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in s.history))
    save_checkpoint(out, s.model, settings["arch"], settings["model"], fit=dataclasses.asdict(s.cfg),
                    progress=_progress(s), **meta)
