"""Runs: a model trained, fine-tuned, evaluated or pruned from a spec, into a checkpoint folder with its results.

`theory` (the theory models on patch data), `images` (the vision presets on image data sets), `tasks` (the data of a
checkpoint, for evaluation, calibration and post-pruning fine-tunes), `prune` (`pmoe prune`), `prune_sweep`
(`pmoe prune-sweep`) and `prune_combine` (`pmoe prune-combine`). The CLI and the experiments are built on these.
"""
from pmoe.runs.theory import DataSpec, finetune, run, summarize
from pmoe.runs.images import ImageDataSpec, evaluate_run, finetune_preset, train_preset

__all__ = ["DataSpec", "ImageDataSpec", "evaluate_run", "finetune", "finetune_preset", "run", "summarize",
           "train_preset"]
