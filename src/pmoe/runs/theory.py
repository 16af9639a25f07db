"""One training run from a spec: make data, build model, train, save, report. Used by the CLI and experiments."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from pmoe.checkpoints import build_from_config, load_checkpoint, save_checkpoint, weights_sha256
from pmoe.data import PatchDataset, file_options, make_dataset
from pmoe.errors import check
from pmoe.fields import typed
from pmoe.io import atomic_path
from pmoe.metrics import discriminative_routing, evaluate
from pmoe.models.presets import build_preset
from pmoe.train import TrainConfig, train
from pmoe.train.distributed.mesh import world_size


@dataclass
class DataSpec:
    name: str = "synthetic"  # synthetic | fashion-patches | file (a user's .npz: DataSpec.from_file)
    samples: int | None = 1000  # N, training samples (file: None = all the file holds)
    test_samples: int | None = 2000  # (file: None = all)
    seed: int = 0  # which samples are drawn (fixed across training seeds, as in the paper)
    options: dict = field(default_factory=dict)  # fields of the data set's config (n, d, noise, data_dir, path, ...)

    @classmethod
    def from_file(cls, path: str | Path, test_path: str | Path | None = None, samples: int | None = None,
                  test_samples: int | None = None, seed: int = 0) -> DataSpec:
        """The spec of a user's .npz file (format: `pmoe.data.files`; its test split in it or in `test_path`),
        recording the absolute path and SHA-256 of each file so that a changed or moved file is refused later."""
        return cls("file", samples, test_samples, seed, file_options(path, test_path))

    def make(self) -> tuple[PatchDataset, PatchDataset]:
        for what, count in (("training", self.samples), ("test", self.test_samples)):
            check(count >= 2 if count is not None else self.name == "file",
                  f"need at least 2 {what} samples, got {count}")
        train_ds = make_dataset(self.name, "train", self.samples, self.seed, **self.options)
        test_ds = make_dataset(self.name, "test", self.test_samples, self.seed, **self.options)
        check((train_ds.n, train_ds.d) == (test_ds.n, test_ds.d), f"the test samples "
              f"({test_ds.meta.get('source', self.name)}) have n={test_ds.n} patches of d={test_ds.d}, the training "
              f"samples ({train_ds.meta.get('source', self.name)}) n={train_ds.n}, d={train_ds.d}: they must match")
        return train_ds, test_ds


def num_params(model: torch.nn.Module) -> dict[str, int]:
    """{'params': trainable, 'params_total': all, fixed output weights included}."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    return {"params": trainable, "params_total": total}


def summarize(model: torch.nn.Module, train_ds: PatchDataset, test_ds: PatchDataset,
              initial: torch.nn.Module | None = None) -> dict:
    """Final metrics of a model on its train and test data; MoE models also `routing` on the test data, with that of
    `initial` (the run's initial weights, see `initial_theory_model`) under routing['initial'] when given."""
    tr, te = evaluate(model, train_ds), evaluate(model, test_ds)
    out = {"test_accuracy": te["accuracy"], "train_accuracy": tr["accuracy"], "test_loss": te["loss"],
           "train_loss": tr["loss"], **num_params(model)}
    if model.moe_layers() and test_ds.disc_pos is not None:  # a user's file may not say where the class patch is
        out["routing"] = discriminative_routing(model, test_ds)
        if initial is not None:
            out["routing"]["initial"] = discriminative_routing(initial, test_ds)
    return out


def initial_theory_model(cfg: dict) -> torch.nn.Module | None:
    """The weights the theory run of checkpoint config `cfg` started from, rebuilt from its model config (whose seed
    fixes the initialisation); None for a run that did not start from a fresh initialisation (fine-tuned or pruned)."""
    if "pretrained" in cfg or "pruning" in cfg:
        return None
    return build_from_config(cfg)


def run(model_name: str, data: DataSpec, train_cfg: TrainConfig, model_options: dict | None = None,
        out_dir: str | Path | None = None, progress: bool = True, history: bool = False) -> dict:
    """Train `model_name` (cnn | pmoe | pmoe-separate) on `data`; save to `out_dir` if given. Returns the summary,
    with the per-epoch records under `history` if asked."""
    start = time.perf_counter()
    train_ds, test_ds = data.make()
    shape = dict(n=train_ds.n, d=train_ds.d, seed=train_cfg.seed, **(model_options or {}))
    result, records = _train(build_preset(model_name, **shape), data, train_ds, test_ds, train_cfg, out_dir, progress,
                             start, initial=build_preset(model_name, **shape))
    return {**result, "history": records} if history else result


def finetune(pretrained: str | Path, data: DataSpec, train_cfg: TrainConfig, out_dir: str | Path | None = None,
             progress: bool = True) -> dict:
    """Continue training the theory checkpoint `pretrained` on `data` (same n and d; synthetic data takes the
    checkpoint's n and d unless its options give them); save to `out_dir` if given,
    recording the parent's path and weights' SHA-256 in the section `pretrained`. Returns the summary."""
    start = time.perf_counter()
    model, cfg = load_checkpoint(pretrained)
    check(cfg["arch"] == "theory", f"{pretrained} holds a {cfg['arch']!r} model; theory data needs a theory model")
    if data.name == "synthetic":  # of the checkpoint's shape unless told otherwise
        data = replace(data, options={"n": model.config.n, "d": model.config.d, **data.options})
    train_ds, test_ds = data.make()
    n, d = model.config.n, model.config.d
    check((train_ds.n, train_ds.d) == (n, d), f"{pretrained} holds a model of n={n} patches of d={d}; the data "
          f"{data.name!r} has n={train_ds.n}, d={train_ds.d}: pick data of that shape")
    parent = {"path": str(Path(pretrained).resolve()), "sha256": weights_sha256(pretrained)}
    pruned = {"pruning": cfg["pruning"]} if "pruning" in cfg else {}  # keeps a pruned parent's child loadable
    return _train(model, data, train_ds, test_ds, train_cfg, out_dir, progress, start, None, pretrained=parent,
                  **pruned)[0]


def _train(model: torch.nn.Module, data: DataSpec, train_ds: PatchDataset, test_ds: PatchDataset,
           train_cfg: TrainConfig, out_dir: str | Path | None, progress: bool, start: float,
           initial: torch.nn.Module | None, **sections: dict) -> tuple[dict, list[dict]]:
    """Train, summarise (against `initial`, the untrained model, if given), save if asked; returns (summary,
    per-epoch records)."""
    torch.manual_seed(train_cfg.seed)
    history = train(model, train_ds, test_ds, train_cfg, progress=progress)
    result = {"model": model.config.model, "data": data.name, "samples": len(train_ds), "seed": train_cfg.seed,
              "epochs": train_cfg.epochs, **summarize(model, train_ds, test_ds, initial),
              "seconds": round(time.perf_counter() - start, 3)}
    if out_dir is not None:
        out = save_checkpoint(out_dir, model, "theory", model.config.to_dict(), data=asdict(data),
                              train=train_cfg.to_dict(), result=result, **sections)
        with atomic_path(out / "metrics.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(rec) + "\n" for rec in history))
    return result, history


def train_theory(name: str, data: DataSpec, cfg: TrainConfig, out_dir: str | Path, overrides: dict | None = None,
                 resume: bool = False, progress: bool = True) -> dict:
    """`run` with the arguments of every kind of run (`pmoe.runs.kinds`); theory runs are not resumable and take one
    process."""
    check(not resume, "theory runs are not resumable (they take seconds to minutes): run them again")
    check(world_size() == 1, f"theory models train in one process, not {world_size()}: run without torchrun")
    return run(name, data, cfg, overrides, out_dir, progress)


def finetune_theory(pretrained: str | Path, data: DataSpec, cfg: TrainConfig, out_dir: str | Path,
                    resume: bool = False, progress: bool = True) -> dict:
    """`finetune` with the arguments of every kind of run (`pmoe.runs.kinds`)."""
    check(not resume, "theory runs are not resumable (they take seconds to minutes): run them again")
    return finetune(pretrained, data, cfg, out_dir, progress)


def evaluate_theory(ckpt_dir: str | Path, split: str | None = None, device: str | None = None) -> dict:
    """Train and test accuracy of a theory checkpoint on its data (`summarize`, with the run's initial weights'
    routing); theory models evaluate both splits on the CPU, so `split` and `device` must be None."""
    check(split is None and device is None, "split and device apply to vision checkpoints only (a theory model is "
                                            "evaluated on both its splits, on the CPU)")
    model, cfg, train_ds, test_ds = evaluate_checkpoint(ckpt_dir)
    return {"checkpoint": str(ckpt_dir), "model": cfg["model"]["model"], "epochs": cfg.get("train", {}).get("epochs"),
            **summarize(model, train_ds, test_ds, initial_theory_model(cfg))}


def evaluate_checkpoint(ckpt_dir: str | Path) -> tuple[torch.nn.Module, dict, PatchDataset, PatchDataset]:
    """Load a theory checkpoint and rebuild the data it was trained and tested on."""
    model, cfg = load_checkpoint(ckpt_dir)
    check("data" in cfg, f"{ckpt_dir}/config.json records no data spec; cannot rebuild its test data")
    train_ds, test_ds = typed(DataSpec, cfg.get("data"), "the data section of config.json").make()
    return model, cfg, train_ds, test_ds
