"""Training of the vision models (WRN, ViT-MoE, E³) at scale: `fit`, with per-epoch evaluation, JSON-lines metrics
and checkpoints from which a killed run resumes to exactly the same weights.

Objective: cross-entropy (`task_loss`: members' mean for E³) + `model.aux_loss()`. Per optimizer step: optional
gradient clipping by global norm, then the scheduler's lr (warm-up, cosine or constant). bf16 autocast on CUDA.
Before every evaluation and checkpoint, batch-norm statistics are recomputed for the current weights
(`pmoe.train.batchnorm`): eval mode then computes what training did.
Under torchrun each process runs `fit` as one rank of the run (`pmoe.train.distributed`: DDP or FSDP2, expert parallelism,
a share of every batch): the same global batches, and one checkpoint of the whole model, written by rank 0.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pmoe.checkpoints import CONFIG, read_config, save_checkpoint
from pmoe.data.vision import Augment, ImageBatches, ImageDataset
from pmoe.errors import check
from pmoe.io import write_text
from pmoe.models.archs import ARCHS
from pmoe.models.base import MoEModel
from pmoe.train.distributed.mesh import init_parallel
from pmoe.train.batchnorm import PRECISE_BN_IMAGES, recompute_batch_norm
from pmoe.train.divergence import check_finite, finite_weights, mark, no_step
from pmoe.train.evaluate import evaluate_images, task_loss
from pmoe.train.optim import OptimConfig, make_optimizer, make_scheduler
from pmoe.train.state import (DCP_STATE, STATE, as_json, cpu_state, differences, load_state, rng_states, save_state,
                              set_rng_states, stream_seed)

# FitConfig fields a resumed run may change (another device, or another layout of processes)
RUNTIME_FIELDS = ("device", "eval_batch_size", "num_workers", "eval_every", "expert_parallel", "fsdp", "compile")
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
    expert_parallel: int = 1  # under torchrun: each MoE layer's experts shared out over groups of this many ranks
    fsdp: bool = False  # under torchrun: dense weights sharded over the ranks by FSDP2 (else replicated by DDP)
    compile: bool = False  # torch.compile the training step's forward and loss (one process; evaluation stays eager)

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


def model_spec(model: MoEModel) -> tuple[str, dict]:
    """(arch, config dict) of a model built by `pmoe.models.build_model`, as saved in config.json."""
    arch = next((a for a, (cls, _) in ARCHS.items() if type(model.config) is cls), None)
    check(arch is not None, f"{type(model).__name__} has no `config` of a pmoe architecture ({sorted(ARCHS)}); "
                            "fit saves checkpoints of pmoe models only")
    return arch, dataclasses.asdict(model.config)


class Objective(nn.Module):
    """The model as a training step (and a data-parallel wrapper) calls it: (x) -> scores (B, C); (x, y) ->
    (task loss, aux loss, scores) of a training batch x (B, C, H, W), y (B,)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        if y is None:
            return self.model(x)
        loss, scores = task_loss(self.model, x, y)
        return loss, self.model.aux_loss().float(), scores


class Session:
    """The mutable parts of a run: model, optimizer, scheduler, batches, counters, history. This class runs in one
    process; `pmoe.train.distributed.session.RankSession` overrides its hooks (`_place` .. `save`) for a torchrun rank."""

    rank, world, is_main, par = 0, 1, True, None  # this process, of `world`; whether it writes; its Parallel layout

    def __init__(self, model: nn.Module, train_ds: ImageDataset, cfg: FitConfig, device: torch.device) -> None:
        check(len(train_ds) >= cfg.batch_size,
              f"the training set has {len(train_ds)} samples, fewer than one batch of {cfg.batch_size}: "
              "lower the batch size")
        self.home, self.cfg, self.device = model, cfg, device  # home: the caller's model, trained in place
        self.model = self._place(model)  # the module that trains
        self.objective = Objective(self.model)
        self.net = self._wrap(self.objective)  # what a training step calls
        if cfg.compile:
            self.net = torch.compile(self.net)
        self.opt = make_optimizer(self.model, cfg.optim)
        self.total = cfg.total_steps(len(train_ds))
        self.sched = make_scheduler(self.opt, cfg.optim, self.total)
        self.batches = self._batches(train_ds, Augment() if cfg.augment else None)
        self.step, self.seconds, self.history = 0, 0.0, []
        use_bf16 = cfg.bf16 and (device.type == "cuda" or cfg.cpu_bf16)
        self.autocast = lambda: torch.autocast(device.type, torch.bfloat16, enabled=use_bf16)

    def _place(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def _wrap(self, objective: Objective) -> nn.Module:
        return objective

    def _batches(self, ds: ImageDataset, augment: Augment | None) -> ImageBatches:
        """The run's batches of `ds` (shuffled, the last incomplete one dropped)."""
        return ImageBatches(ds, self.cfg.batch_size, shuffle=True, augment=augment, seed=self.cfg.seed,
                            drop_last=True, num_workers=self.cfg.num_workers, device=self.device)

    def _finish_grads(self) -> None:
        """The gradients of the run's loss, clipped, after a backward."""
        if self.cfg.optim.clip_norm is not None:
            nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None],
                                     self.cfg.optim.clip_norm)

    def _reduce(self, stats: Tensor) -> Tensor:
        """An epoch's stats (`train_epoch`) over the run's processes."""
        return stats

    def _local_params(self) -> list[Tensor]:
        return list(self.model.parameters())

    def evaluate(self, ds: ImageDataset) -> dict[str, Any]:
        return evaluate_images(self.model, ds, self.cfg.eval_batch_size, self.device, self.cfg.num_workers)

    def precise_batch_norm(self) -> None:
        """Recompute the model's batch-norm statistics on un-augmented training batches in a fixed order."""
        recompute_batch_norm(self.objective, self._batches(self.batches.ds, None), -(-PRECISE_BN_IMAGES // self.world),
                             self.autocast)

    def sync_home(self) -> None:
        """Bring the caller's model up to the trained one (it is the same module in one process)."""

    def finish(self) -> None:
        self.sync_home()
        self.home.eval()

    def progress_state(self, settings: dict) -> dict[str, Any]:
        """The resumable state but weights, optimizer and RNG: JSON-able."""
        return {"scheduler": self.sched.state_dict(), "batches_epoch": self.batches.epoch, "step": self.step,
                "seconds": self.seconds, "history": self.history, "settings": settings}

    def save(self, out: Path, settings: dict) -> None:
        """Write the resumable state: out/train_state.pt, atomically."""
        save_state(out, {"model": cpu_state(self.model), "optimizer": self.opt.state_dict(), "rng": rng_states(),
                         **self.progress_state(settings)})
        shutil.rmtree(out / DCP_STATE, ignore_errors=True)  # a torchrun run's state, continued here: now behind

    def load(self, out: Path) -> dict[str, Any]:
        """The resumable state of the run in `out`: train_state.pt, or a torchrun run's progress (train_state/)."""
        if (out / DCP_STATE).is_dir():
            from pmoe.train.distributed.checkpoint import read_meta  # DCP: imported for such runs only

            return read_meta(out)
        return load_state(out)

    def restore(self, state: dict[str, Any], out: Path) -> None:
        """Continue from `state` (`load`): the weights, optimizer and RNG states it holds or (a torchrun run's) that
        out/train_state/ holds. A run of another number of processes continues with fresh random streams."""
        if not self._load_tensors(state, out):
            torch.manual_seed(stream_seed(self.cfg.seed, self.rank, state["step"]))
        self.sched.load_state_dict(state["scheduler"])
        self.batches.epoch, self.step = state["batches_epoch"], state["step"]
        self.seconds, self.history = state["seconds"], state["history"]

    def _load_tensors(self, state: dict[str, Any], out: Path) -> bool:
        """Load weights, optimizer and RNG states; returns whether the saved run had as many processes (else the RNG
        states are not loaded)."""
        if "model" in state:  # train_state.pt
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            set_rng_states(state["rng"])
            return True
        from pmoe.train.distributed.checkpoint import load_resumable

        return load_resumable(out, self.model, self.opt, self.par, state["world"])

    def train_epoch(self, progress: bool) -> dict[str, float]:
        """One epoch (or up to the last step): {'lr', 'train_loss', 'train_aux_loss', 'train_accuracy',
        'images_per_second'}; loss = task loss + aux loss, means over the epoch's batches. A non-finite loss or
        weights stop the run (`pmoe.train.divergence`)."""
        model, opt = self.model, self.opt
        sums = torch.zeros(3, device=self.device)  # loss, aux loss, correct
        first_bad = no_step(self.device)  # the first step whose loss is NaN or infinite (divergence.mark)
        images, batches, lr, start = 0, 0, 0.0, time.perf_counter()
        bar = tqdm(total=min(len(self.batches), self.total - self.step) * self.cfg.batch_size, unit="img",
                   unit_scale=True, desc=f"epoch {self.batches.epoch + 1}", disable=not progress, leave=False)
        model.train()
        for x, y in self.batches:  # this process's share of each batch
            with self.autocast():
                loss, aux, scores = self.net(x, y)
            total = loss + aux  # the objective
            opt.zero_grad(set_to_none=True)
            total.backward()
            self._finish_grads()
            lr = opt.param_groups[0]["lr"]
            opt.step()
            self.sched.step()
            self.step += 1
            first_bad = mark(first_bad, total, self.step)
            sums += torch.stack([total.detach(), aux.detach(), (scores.argmax(-1) == y).sum().float()])
            images, batches = images + len(y) * self.world, batches + 1
            bar.update(len(y) * self.world)
            if self.step >= self.total:
                break
        bar.close()
        finite = finite_weights(self._local_params()).float()
        loss_sum, aux_sum, correct, bad, ok = self._reduce(torch.cat([sums, first_bad[None], finite[None]])).tolist()
        check_finite(bad, ok == 1, self.step, f"epoch {self.batches.epoch}")
        batches *= self.world  # the loss sums are over every process's batches
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
    s = _session(model, train_ds, cfg)
    torch.manual_seed(cfg.seed if s.world == 1 else stream_seed(cfg.seed, s.rank))  # routing noise, dropout
    progress = progress and s.is_main
    out = Path(out_dir) if out_dir is not None else None
    if resume:
        check(out is not None, "resume=True needs the out_dir of the run to continue")
        state = s.load(out)
        diff = differences(state["settings"], settings)
        check(not diff, f"the run in {out} was started with other settings; resume it with the same ones, or train "
                        f"into another folder. Differences (saved -> now): {'; '.join(diff)}")
        s.restore(state, out)
    else:
        check(out is None or not ((out / STATE).exists() or (out / DCP_STATE).exists()),
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
            ev = s.evaluate(eval_ds)
            rec.update({f"eval_{k}": v for k, v in ev.items()})
        s.seconds += time.perf_counter() - start
        rec = as_json({**rec, "step": s.step, "seconds": round(s.seconds, 3)})  # group ids as JSON keys: strings
        s.history.append(rec)
        if progress:
            print(" ".join(f"{k} {v:.4g}" for k, v in rec.items() if isinstance(v, (int, float))), file=sys.stderr)
        if out is not None and checkpoint:
            s.save(out, settings)
            _publish(out, s, settings)
        if on_epoch is not None:  # on every process, with the same record
            on_epoch(rec)
    s.finish()
    return s.history


def _session(model: nn.Module, train_ds: ImageDataset, cfg: FitConfig) -> Session:
    """The session of this process: of one rank of the run when torchrun started several (`pmoe.train.distributed`)."""
    device = resolve_device(cfg.device)
    par = init_parallel(cfg.expert_parallel, cfg.fsdp, device, cfg.compile)
    if par is None:
        return Session(model, train_ds, cfg, device)
    from pmoe.train.distributed.session import RankSession  # DTensor, FSDP2, DCP: imported for torchrun runs only

    return RankSession(model, train_ds, cfg, par)


def _settings(model: nn.Module, cfg: FitConfig, out_dir: str | Path | None, meta: dict | None) -> dict:
    """What a resumed run must share with its start: arch, model config, fit settings, `meta`'s sections."""
    meta = meta or {}
    check(not set(meta) & set(RESERVED), f"checkpoint_meta may not set the sections {RESERVED}, got {sorted(meta)}")
    arch, model_cfg = model_spec(model) if out_dir is not None else (None, None)
    fit_cfg = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_FIELDS}
    return as_json({"arch": arch, "model": model_cfg, "fit": fit_cfg, **meta})


def _progress(s: Session) -> dict:
    return {"epoch": s.batches.epoch, "step": s.step, "total_steps": s.total, "finished": s.step >= s.total}


def _published(out: Path, s: Session) -> bool:
    """Whether out's config.json, written last by `_publish`, records the session's current progress."""
    return (out / CONFIG).is_file() and read_config(out).get("progress") == _progress(s)


def _publish(out: Path, s: Session, settings: dict) -> None:
    """metrics.jsonl, then the checkpoint (model.safetensors, then config.json) of the session's current state;
    under torchrun, gathered on every rank and written by rank 0."""
    s.sync_home()
    if not s.is_main:
        return
    meta = {k: v for k, v in settings.items() if k not in RESERVED}
    write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in s.history))
    save_checkpoint(out, s.home, settings["arch"], settings["model"], fit=dataclasses.asdict(s.cfg),
                    progress=_progress(s), **meta)
