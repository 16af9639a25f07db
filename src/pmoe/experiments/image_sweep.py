"""Sweeps of vision runs: every model preset x training-set size N x seed on one image data set, trained in parallel
worker processes (several share a GPU; with device 'auto' and several visible GPUs, the i-th run trains on GPU i
mod count), each run saved in OUT/runs/MODEL/N<N>-seed<S> and resumed or read back when the sweep is run again with the
same flags (a finished run's config.json alone is enough to read it back). Shared by `pmoe experiment image-samples`
and `pmoe experiment spurious`. Each run trains with the recipe of its preset
(`pmoe.train.recipes`), the sweep's settings changing single fields of it.

Training FLOPs of a run: 3 x the forward FLOPs of one image (matmuls and convolutions, counted by torch's
FlopCounterMode in eval mode; backward taken as twice the forward) x the training images it saw (epochs x N).
The runs' records carry the number of epochs trained, and on the patch-canvas images, for routed models, how often
the best expert of each class in the first MoE layer covers the class patch ('class_patch': best_expert, chance, and
'initial', the same for the run's initial weights: a random router's best expert already covers it often).
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from torch import nn

from pmoe.analysis.hits import class_patch_hits
from pmoe.checkpoints import CONFIG, load_checkpoint, read_config
from pmoe.data.vision import ImageDataset
from pmoe.errors import check
from pmoe.experiments.flags import (add_out, add_recipe_args, device_name, given, nonnegative_int, positive_int,
                                    recipe_changes)
from pmoe.experiments.runner import parallel_map, spread_device
from pmoe.io import write_json
from pmoe.models.presets import PRESETS
from pmoe.options import parse_spec
from pmoe.prune.cost import forward_flops
from pmoe.reports import mean_std
from pmoe.train import FitConfig
from pmoe.runs.images import ImageDataSpec, build_for_data, finished, initial_model, train_preset
from pmoe.train.recipes import RecipeChanges, describe, recipe_for
from pmoe.train.state import STATE, as_json, differences
from pmoe.train.vision import RUNTIME_FIELDS, model_spec, resolve_device


# The published sweeps' WRN-pMoE layout: the authors' gate on the experts' conv outputs, softmax over all n regions.
# wrn-pmoe-tiny gates the experts' activations since the first-run fix (REPRODUCTION §4); the full sweeps pin the
# layout they were measured with, so that their numbers reproduce (the quick ones run the preset as it is).
AUTHORS_LAYOUT = "gate=softmax_all,gate_activations=false"

@dataclass
class ImageSweepConfig(RecipeChanges):
    """A sweep over models, N and seeds; the inherited fields change each preset's training recipe (None: keep)."""

    data: str = "fashion-mnist"  # a key of IMAGE_DATASETS
    data_options: dict = field(default_factory=dict)  # fields of the data set's config (e.g. num_samples)
    data_dir: str | None = None  # None: the data set's default folder
    models: list[str] = field(default_factory=lambda: ["wrn-tiny", "wrn-pmoe-tiny"])  # presets, "name:key=value,.."
    model_options: dict = field(default_factory=dict)  # preset fields for every model (a spec's own win)
    samples: list[int] = field(default_factory=lambda: [1000, 4000])  # N grid: class-balanced training subsets
    test_samples: int | None = None  # a class-balanced subset of the test split; None: all of it
    seeds: int = 3
    min_steps: int = 0  # a run of N images trains max(epochs, ceil(min_steps / (N // batch_size))) epochs,
    # evaluated (and checkpointed) about `evals` times
    evals: int | None = None  # evaluations (and checkpoints) per run, the last after the last step; None: `epochs`
    device: str = "auto"  # auto: cuda if available, run i of the sweep on GPU i mod the visible GPUs
    compile: bool = False  # torch.compile every run's training step (runtime: finished runs read back either way)

    def fit_config(self, spec: str, samples: int, seed: int) -> FitConfig:
        """The settings of run (model spec, N, seed): the recipe of the spec's preset with the sweep's fields changed,
        for at least `min_steps` steps."""
        base = recipe_for(parse_model(spec)[0]).fit_config(seed=seed, device=self.device, compile=self.compile)
        cfg = self.apply(base)
        epochs = max(cfg.epochs, -(-self.min_steps // max(1, samples // cfg.batch_size)))
        return replace(cfg, epochs=epochs, eval_every=max(1, epochs // (self.evals or cfg.epochs)))

    def data_spec(self, samples: int | None) -> ImageDataSpec:
        return ImageDataSpec(self.data, self.data_dir, samples, self.test_samples, options=dict(self.data_options))


def add_sweep_args(p: argparse.ArgumentParser, data_help: str) -> None:
    """The flags of a sweep (`image-samples`, `spurious`); `data_help`: the --data help of the experiment."""
    add_out(p, "report folder (runs in OUT/runs)")
    p.add_argument("--quick", action="store_true", help="a few minutes on 2 CPU cores instead of the GPU sweep")
    p.add_argument("--data", help=data_help)
    p.add_argument("--data-dir", help="data folder (default: the data set's)")
    p.add_argument("--models", nargs="+", metavar="PRESET", help="presets to compare, the dense one first, each "
                   "optionally with overrides, e.g. wrn-tiny wrn-pmoe-tiny:l=2")
    p.add_argument("--samples", type=positive_int, nargs="+", help="the N grid (training images)")
    p.add_argument("--test-samples", type=positive_int, help="a class-balanced subset of the test split")
    p.add_argument("--seeds", type=positive_int, help="seeds per point")
    p.add_argument("--min-steps", type=nonnegative_int, help="optimizer steps per run at least: small N train more "
                   "epochs (default: the preset's; 0: none, every run trains --epochs epochs)")
    p.add_argument("--evals", type=positive_int, help="evaluations and checkpoints per run (default: one per "
                   "--epochs epoch); fewer train faster, a resumed run repeats at most the epochs since the last")
    g = p.add_argument_group("training: every model's recipe (pmoe.train.recipes) with the experiment's settings; "
                             "each flag changes one field")
    g.add_argument("--epochs", type=positive_int, help="training epochs per run (at least)")
    g.add_argument("--batch-size", type=positive_int)
    g.add_argument("--lr", type=float, help="peak learning rate")
    add_recipe_args(g)
    p.add_argument("--device", type=device_name,
                   help="auto (default: cuda if available, the runs spread over the visible GPUs), "
                   "cpu, cuda, cuda:N")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile every run's training step (pmoe train --compile)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="runs trained at once, in worker processes (they share the GPU); default 1")


def sweep_config(cfg: ImageSweepConfig, args: argparse.Namespace) -> ImageSweepConfig:
    """`cfg` (a preset) with the fields that `add_sweep_args`' flags give."""
    names = ("data_dir", "models", "samples", "test_samples", "seeds", "min_steps", "evals", "device", "compile")
    return replace(cfg, **given(args, names), **recipe_changes(args))


def parse_model(spec: str) -> tuple[str, dict]:
    """'wrn-pmoe-tiny:l=2,gate=hard' -> ('wrn-pmoe-tiny', {'l': 2, 'gate': 'hard'}): a preset and its overrides."""
    return parse_spec(spec, sorted(PRESETS), kind="preset")


def run_dir(runs: Path, spec: str, samples: int, seed: int) -> Path:
    """The folder of run (spec, N, seed) in the folder of a sweep's runs (OUT/runs)."""
    return runs / re.sub(r"[^\w.=-]+", "_", spec) / f"N{samples}-seed{seed}"


Job = tuple[str, int, int]  # (model spec, N, seed)


def run_one(out: Path, task: tuple[ImageSweepConfig, str, Job]) -> dict:
    """Train (or resume, or read back) the run of `task` = (sweep, its runs' folder in `out`, job); its record."""
    cfg, runs, (spec, samples, seed) = task
    name, overrides = parse_model(spec)
    path, data = run_dir(out / runs, spec, samples, seed), cfg.data_spec(samples)
    saved = read_config(path) if finished(path) else {}
    if "result" in saved:  # read back; weights and state need not be there
        r = saved["result"]
    else:
        r = train_preset(name, data, cfg.fit_config(spec, samples, seed), path, {**cfg.model_options, **overrides},
                         resume=(path / STATE).exists(), progress=False)
        model = load_checkpoint(path)[0]
        test = data.make("test") if model.moe_layers() else None
        if test is not None and "disc_pos" in test.attributes:  # canvases: how often routers cover the class patch
            hits = [class_patch_hits(m, test, layer=0, device=resolve_device(cfg.device))
                    for m in (model, initial_model(path))]
            r["class_patch"] = {"best_expert": hits[0]["best_expert"], "chance": hits[0]["chance"],
                                "initial": hits[1]["best_expert"]}
            write_json(path / CONFIG, {**read_config(path), "result": r})
    keys = ("epochs", "test_accuracy", "worst_group_accuracy", "group_accuracy", "train_accuracy", "params", "seconds",
            "images_per_second", "device", "class_patch")
    return {"model": spec, "samples": samples, "seed": seed, **{k: r[k] for k in keys if k in r},
            "dir": str(path.relative_to(out))}  # relative to the report folder


def check_finished(cfg: ImageSweepConfig, runs: Path, job: Job, model: nn.Module) -> None:
    """Refuse a finished run of `job` in `runs` made with other fit, data or model settings than `cfg` gives."""
    spec, samples, seed = job
    path = run_dir(runs, spec, samples, seed)
    if not finished(path):
        return
    saved = read_config(path)
    keep = lambda fit: {k: v for k, v in fit.items() if k not in RUNTIME_FIELDS}  # noqa: E731
    diff = differences({"fit": keep(saved["fit"]), "data": saved["data"], "model": saved["model"]},
                       as_json({"fit": keep(asdict(cfg.fit_config(spec, samples, seed))),
                                "data": asdict(cfg.data_spec(samples)), "model": model_spec(model)[1]}))
    check(not diff, f"the finished run in {path} was made with other settings; run the sweep into another "
                    f"folder. Differences (saved -> now): {'; '.join(diff)}")


def build_for_sweep(cfg: ImageSweepConfig, spec: str, test: ImageDataset) -> tuple[nn.Module, int]:
    """The model of `spec` for the sweep's data (its `test` split), and its forward FLOPs on one test image (CPU,
    eval mode)."""
    name, overrides = parse_model(spec)
    model = build_for_data(name, test, {**cfg.model_options, **overrides})
    return model, forward_flops(model, test[0][0][None].float())  # (1, C, H, W)


def run_sweep(cfg: ImageSweepConfig, out_dir: str | Path, workers: int | None = 1,
              progress: bool = True) -> list[dict]:
    """Every (model, N, seed) run of `cfg` under out_dir/runs, `workers` at a time (`run_sweeps`)."""
    return run_sweeps({"runs": cfg}, out_dir, workers, progress)["runs"]


def run_sweeps(sweeps: dict[str, ImageSweepConfig], out_dir: str | Path, workers: int | None = 1,
               progress: bool = True) -> dict[str, list[dict]]:
    """Every (model, N, seed) run of every sweep, those of sweep `key` under out_dir/key, all in one pool of `workers`
    processes; key -> their records, each with 'train_flops' and its folder relative to out_dir. Finished runs of
    other settings are refused before anything trains."""
    tasks, flops = [], {}
    for key, cfg in sweeps.items():
        check(cfg.seeds >= 1 and len(cfg.samples) > 0 and len(cfg.models) > 0,
              "need at least one seed, one sample size and one model")
        for spec in cfg.models:
            parse_model(spec)  # refuse a bad spec before building anything
        test = cfg.data_spec(None).make("test")
        built = {spec: build_for_sweep(cfg, spec, test) for spec in cfg.models}
        flops.update({(key, spec): f for spec, (_, f) in built.items()})
        for job in [(m, N, seed) for N in cfg.samples for m in cfg.models for seed in range(cfg.seeds)]:
            check_finished(cfg, Path(out_dir) / key, job, built[job[0]][0])
            tasks.append((replace(cfg, device=spread_device(cfg.device, len(tasks))), key, job))
    if progress:  # the settings of each model (its epochs at the largest N)
        for spec, cfg in {spec: cfg for cfg in sweeps.values() for spec in cfg.models}.items():
            print(f"{spec}: {describe(cfg.fit_config(spec, max(cfg.samples), 0))}", file=sys.stderr)
    records = parallel_map(partial(run_one, Path(out_dir)), tasks, workers, progress)
    results: dict[str, list[dict]] = {key: [] for key in sweeps}
    for (_, key, _), r in zip(tasks, records):
        r["flops_per_image"] = f = flops[key, r["model"]]
        r["train_flops"] = 3 * f * r["epochs"] * r["samples"]
        results[key].append(r)
    return results


def group_runs(results: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """(model, N) -> the records of its seeds."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        runs.setdefault((r["model"], r["samples"]), []).append(r)
    return runs


def summarize(results: list[dict], metrics: tuple[str, ...] = ("test_accuracy",)) -> dict[tuple[str, int], dict]:
    """(model, N) -> {metric: (mean, std) over seeds} for each of `metrics`, plus 'runs' and 'train_flops'."""
    return {key: {**{m: mean_std([r[m] for r in rs]) for m in metrics}, "runs": len(rs),
                  "train_flops": rs[0]["train_flops"]} for key, rs in group_runs(results).items()}
