"""Benchmark: `pmoe hf-prune` on a multi-GB synthetic Mixtral-layout checkpoint; wall time and peak RSS.

Writes a sharded bf16 base and fine-tuned checkpoint (shard by shard with safetensors), prunes in a child process
(`python -m pmoe.cli hf-prune ...`), checks the result, prints one JSON line, and deletes the files.
Expert e of layer i is filled with the value e + 8 i (routers random), so kept experts can be checked cheaply.

    .venv/bin/python benchmarks/hf_prune_large.py            # ~3.7 GB per checkpoint, ~7.4 GB of disk
    .venv/bin/python benchmarks/hf_prune_large.py --fused 1  # the same sizes in the DeepSeek-V3 layout
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

# The child prints its own peak RSS: VmHWM of /proc/self/status (ru_maxrss would include the parent's RSS at fork,
# which Linux carries over exec).
PEAK = "print(json.dumps({'peak_kib': int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])}))"
CHILD = f"import json, re, sys\nfrom pmoe.cli import main\nassert main(sys.argv[1:]) == 0\n{PEAK}"
IMPORTS_ONLY = f"import json, re, torch, safetensors, pmoe.hf, pmoe.cli\n{PEAK}"


@dataclass
class Shape:
    layers: int = 20
    hidden: int = 1024
    inter: int = 3584
    experts: int = 8
    vocab: int = 32000
    shard_mb: int = 500
    fused: int = 0  # 1: DeepSeek-V3 layout (fused experts [E, ...], score-correction bias, 2 expert groups)


def tensors(shape: Shape, seed: int):
    """(key, tensor) of a Mixtral-layout (or, with shape.fused, DeepSeek-V3-layout) model, in checkpoint order."""
    g = torch.Generator().manual_seed(seed)
    h, i = shape.hidden, shape.inter
    yield "model.embed_tokens.weight", torch.zeros(shape.vocab, h, dtype=torch.bfloat16)
    for layer in range(shape.layers):
        p = f"model.layers.{layer}"
        for name, rows in (("q_proj", h), ("k_proj", h // 4), ("v_proj", h // 4), ("o_proj", h)):
            yield f"{p}.self_attn.{name}.weight", torch.zeros(rows, h, dtype=torch.bfloat16)
        yield f"{p}.input_layernorm.weight", torch.ones(h, dtype=torch.bfloat16)
        yield f"{p}.post_attention_layernorm.weight", torch.ones(h, dtype=torch.bfloat16)
        if shape.fused:
            yield from fused_block(f"{p}.mlp", shape, layer, g)
            continue
        yield f"{p}.block_sparse_moe.gate.weight", torch.randn(shape.experts, h, generator=g).bfloat16()
        for e in range(shape.experts):
            for w, (rows, cols) in (("w1", (i, h)), ("w2", (h, i)), ("w3", (i, h))):
                yield f"{p}.block_sparse_moe.experts.{e}.{w}.weight", \
                    torch.full((rows, cols), e + 8 * layer, dtype=torch.bfloat16)
    yield "model.norm.weight", torch.ones(h, dtype=torch.bfloat16)
    yield "lm_head.weight", torch.zeros(shape.vocab, h, dtype=torch.bfloat16)


def fused_block(p: str, shape: Shape, layer: int, g: torch.Generator):
    """DeepSeek-V3 MoE block: router, score-correction bias, fused experts filled with e + 8 layer, shared expert."""
    h, i, k = shape.hidden, shape.inter, shape.experts
    fill = (torch.arange(k) + 8 * layer).bfloat16()[:, None, None]
    yield f"{p}.gate.weight", torch.randn(k, h, generator=g).bfloat16()
    yield f"{p}.gate.e_score_correction_bias", torch.zeros(k)
    yield f"{p}.experts.gate_up_proj", fill.expand(k, 2 * i, h).contiguous()
    yield f"{p}.experts.down_proj", fill.expand(k, h, i).contiguous()
    yield f"{p}.shared_experts.up_proj.weight", torch.zeros(i, h, dtype=torch.bfloat16)


def write_checkpoint(folder: Path, shape: Shape, seed: int) -> int:
    """Write the model shard by shard (about shape.shard_mb each); returns the bytes written."""
    folder.mkdir(parents=True)
    shards, current, size, weight_map = [], {}, 0, {}

    def flush() -> None:
        name = f"model-{len(shards) + 1:05d}.safetensors"  # renamed to -of-N below
        save_file(current, folder / name, metadata={"format": "pt"})
        shards.append((name, list(current)))
        current.clear()

    for key, t in tensors(shape, seed):
        current[key] = t
        size += t.numel() * t.element_size()
        if sum(v.numel() * v.element_size() for v in current.values()) >= shape.shard_mb * 2**20:
            flush()
    flush()
    for n, (name, keys) in enumerate(shards, 1):
        final = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        (folder / name).rename(folder / final)
        weight_map.update(dict.fromkeys(keys, final))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}))
    moe = ({"model_type": "deepseek_v3", "n_routed_experts": shape.experts, "n_group": 2, "topk_group": 1}
           if shape.fused else {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"],
                                "num_local_experts": shape.experts})
    (folder / "config.json").write_text(json.dumps({
        **moe, "hidden_size": shape.hidden,
        "intermediate_size": shape.inter, "num_hidden_layers": shape.layers, "num_experts_per_tok": 2, "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": shape.vocab,
        "torch_dtype": "bfloat16"}))
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f, v in asdict(Shape()).items():
        parser.add_argument(f"--{f.replace('_', '-')}", type=int, default=v)
    parser.add_argument("--keep", type=int, default=6)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a new temp folder)")
    args = parser.parse_args()
    shape = Shape(**{f: getattr(args, f) for f in asdict(Shape())})
    work = Path(tempfile.mkdtemp(prefix="pmoe-hf-bench-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        size = write_checkpoint(work / "ft", shape, seed=1)
        write_checkpoint(work / "base", shape, seed=0)
        t1 = time.perf_counter()
        baseline = child(IMPORTS_ONLY)
        t2 = time.perf_counter()
        run = child(CHILD, "hf-prune", "--base", str(work / "base"), "--finetuned", str(work / "ft"),
                    "--keep", str(args.keep), "--out", str(work / "out"), "--json")
        wall = time.perf_counter() - t2
        report = json.loads((work / "out" / "prune_report.json").read_text())
        kept = report["layers"][-1]["kept"]
        last = (f"model.layers.{shape.layers - 1}.mlp.experts.down_proj" if shape.fused
                else f"model.layers.{shape.layers - 1}.block_sparse_moe.experts.{args.keep - 1}.w2.weight")
        index = json.loads((work / "out" / "model.safetensors.index.json").read_text())
        with safe_open(work / "out" / index["weight_map"][last], "pt") as f:
            first = f.get_slice(last)[args.keep - 1:args.keep] if shape.fused else f.get_slice(last)[0:1]
            assert first.reshape(-1)[0].item() == kept[-1] + 8 * (shape.layers - 1), "wrong expert kept"
        print(json.dumps({
            "shape": asdict(shape), "keep": args.keep, "write_s": round(t1 - t0, 1),
            "checkpoint_gb": round(size / 1e9, 2), "shards": len(set(index["weight_map"].values())),
            "out_gb": round(report["size_bytes"][1] / 1e9, 2), "prune_wall_s": round(wall, 1),
            "prune_peak_rss_mb": round(run["peak_kib"] / 1024),
            "imports_only_rss_mb": round(baseline["peak_kib"] / 1024)}))
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
