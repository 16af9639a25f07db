"""Prune a Hugging Face checkpoint folder into a new one, streaming tensor by tensor.

Only the routers are read to rank; then each input shard becomes one output shard (empty ones dropped, the rest
renumbered), written by `write_safetensors` one tensor (or one run of expert rows) at a time. `out` follows the
output policy of every command (`pmoe.outputs.output_folder`): apart from both inputs, new or empty unless
`overwrite`; the folder is built beside it and renamed at the end, so a failed or killed run leaves no result (and the
next run removes what a killed one left).
"""
from __future__ import annotations

import math
import shutil
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm

from pmoe.hf.adapters import apply_changes
from pmoe.hf.checkpoint import INDEX, SINGLE, Checkpoint
from pmoe.hf.plan import Slice
from pmoe.hf.prune import PruneSpec, plan_pruning
from pmoe.hf.report import PruneReport
from pmoe.hf.writer import OutTensor, write_safetensors
from pmoe.io import write_json, write_text
from pmoe.outputs import output_folder

REPORT_JSON, REPORT_MD = "prune_report.json", "prune_report.md"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")


def _write_weights(ckpt: Checkpoint, plan: dict[str, Slice], folder: Path, progress: bool) -> tuple[int, int]:
    """Write the planned tensors into `folder`, shard by shard; returns (parameters, file bytes)."""
    shards: dict[str, list[OutTensor]] = {}
    for key, s in plan.items():
        info = ckpt.tensors[s.source]
        shards.setdefault(info.file, []).append(
            OutTensor(key, info.dtype, s.shape(info.shape), partial(ckpt.read, s.source, s.rows, s.axis)))
    n = len(shards)
    names = ([SINGLE] if ckpt.index_metadata is None
             else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)])
    size = 0
    with tqdm(total=len(plan), unit="tensor", desc="hf-prune", disable=not progress) as bar:
        for (file, tensors), name in zip(shards.items(), names):
            size += write_safetensors(folder / name, tensors, ckpt.shard_metadata[file], bar.update)
    params = sum(math.prod(t.shape) for ts in shards.values() for t in ts)
    if ckpt.index_metadata is not None:
        metadata = {**ckpt.index_metadata, "total_size": sum(t.nbytes for ts in shards.values() for t in ts)}
        if "total_parameters" in metadata:
            metadata["total_parameters"] = params
        weight_map = dict(sorted((t.key, name) for ts, name in zip(shards.values(), names) for t in ts))
        write_json(folder / INDEX, {"metadata": metadata, "weight_map": weight_map})
    return params, size


def _copy_extras(ckpt: Checkpoint, folder: Path) -> list[str]:
    """Copy the fine-tuned folder's other files (tokenizer, generation config, ...); return weight files skipped."""
    skipped, own = [], {INDEX, "config.json", *ckpt.files}
    for path in sorted(ckpt.folder.rglob("*")):
        rel = path.relative_to(ckpt.folder)
        if not path.is_file() or str(rel) in own or any(part.startswith(".") for part in rel.parts):
            continue
        if path.name.endswith(WEIGHT_SUFFIXES) or path.name.endswith(".index.json"):
            skipped.append(str(rel))
            continue
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, folder / rel)
    return skipped


def prune_checkpoint(base: str | Path, finetuned: str | Path, out: str | Path, spec: PruneSpec,
                     progress: bool = False, overwrite: bool = False) -> PruneReport:
    """Prune the experts of the fine-tuned checkpoint `finetuned` into the new folder `out`.

    Args:
        base: pretrained checkpoint folder (only its router tensors and headers are read).
        finetuned: fine-tuned checkpoint folder of the same architecture; the source of every written tensor.
        out: output folder, new or empty (unless `overwrite`), apart from both inputs; gets the pruned weights,
            config.json, the other files of `finetuned`, and the report as prune_report.json and prune_report.md.
        spec: experts to keep and criterion.
        progress: show a progress bar over tensors.
        overwrite: replace a folder `out` holding other files, once the new one is complete.
    """
    with output_folder(out, [base, finetuned], overwrite) as tmp:
        base_ckpt, ft_ckpt = Checkpoint.open(base), Checkpoint.open(finetuned)
        pruning = plan_pruning(base_ckpt, ft_ckpt, spec)
        params, size = _write_weights(ft_ckpt, pruning.tensors, tmp, progress)
        write_json(tmp / "config.json", apply_changes(ft_ckpt.config, pruning.config_changes))
        not_copied = _copy_extras(ft_ckpt, tmp)
        report = PruneReport(
            pruning.layout.moe.model_type, spec.method, spec.seed, pruning.layout.moe.num_experts, pruning.keep,
            pruning.config_changes, pruning.layers, groups=pruning.groups,
            protected=sorted(spec.protect),
            parameters=(sum(math.prod(s) for s in ft_ckpt.shapes.values()), params),
            size_bytes=(sum((ft_ckpt.folder / f).stat().st_size for f in ft_ckpt.files), size),
            paths={"base": str(base), "finetuned": str(finetuned), "out": str(out)}, not_copied=not_copied)
        write_json(tmp / REPORT_JSON, report.to_dict())
        write_text(tmp / REPORT_MD, report.to_markdown())
    return report
