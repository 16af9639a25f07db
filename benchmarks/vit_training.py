"""Training throughput (images/s) of ViT-MoE-S against the dense ViT-S, one AdamW step at a time.

Per-token FLOPs: with K=1 (token routing) or K=1 on average (patch routing, l = n/k) an MoE block costs what a
dense block costs (plus the router), so `vit-moe-s K=1` is the FLOP-matched comparison to `vit-s`; K=2 is V-MoE's
default and costs 2x in its MoE FFNs. Random images and labels (no data loading in the timing), bf16 autocast on
CUDA, warm-up excluded, median of timed steps.

    python benchmarks/vit_training.py --batch 256 --compile --out benchmarks/results/vit_training_h200
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pmoe.layers import PatchMoE
from pmoe.models.presets import build_preset
from pmoe.reports import markdown_table

from moe_layers import top_ops  # benchmarks/ is on sys.path when run as a script

VARIANTS = {  # label: (preset, its overrides, whether the patch layers run the fused kernels)
    "vit-s (dense)": ("vit-s", {}, False),
    "vit-moe-s token K=1": ("vit-moe-s", {"num_selected": 1}, False),
    "vit-moe-s patch K=1": ("vit-moe-s", {"num_selected": 1, "router": "patch"}, False),
    "vit-moe-s token K=2": ("vit-moe-s", {"num_selected": 2}, False),
    "vit-moe-s patch K=2": ("vit-moe-s", {"num_selected": 2, "router": "patch"}, False),
    "vit-moe-s patch K=1 fused": ("vit-moe-s", {"num_selected": 1, "router": "patch"}, True),
    "vit-moe-s patch K=2 fused": ("vit-moe-s", {"num_selected": 2, "router": "patch"}, True),
}
DEFAULT_VARIANTS = [v for v in VARIANTS if not v.endswith("fused")]


def fuse_patch_layers(model: torch.nn.Module) -> None:
    """Run the model's patch layers with `dispatch="fused"` (the Triton kernels; a layer they cannot compute refuses
    at its first call)."""
    for layer in model.modules():
        if isinstance(layer, PatchMoE):
            layer.dispatch = "fused"


def images_per_second(name: str, overrides: dict, fused: bool, batch: int, steps: int, device: torch.device,
                      compile_: str | None, image_size: int, profiled: bool = False) -> tuple[float, list[dict]]:
    """Images/s of the variant's training steps, and its top ops by device time if `profiled` (else [])."""
    torch.manual_seed(0)
    model = build_preset(name, image_size=image_size, num_classes=1000, **overrides).to(device).train()
    if fused:
        fuse_patch_layers(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    fwd = torch.compile(model, mode=compile_) if compile_ else model
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(1000, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(fwd(x).float(), y) + model.aux_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times), top_ops(step, device) if profiled else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                   help="torch.compile(model, mode=MODE) (default, max-autotune, ...)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS, metavar="VARIANT")
    p.add_argument("--profile", nargs="*", default=[], choices=list(VARIANTS), metavar="VARIANT",
                   help="add these variants' top ops of a training step (after their timing)")
    p.add_argument("--out", default="benchmarks/results/vit_training")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = []
    for label in ["vit-s (dense)"] + [v for v in args.variants if v != "vit-s (dense)"]:
        ips, ops = images_per_second(*VARIANTS[label], args.batch, args.steps, device, args.compile, args.image_size,
                                     label in args.profile)
        rows.append({"variant": label, "images_per_second": round(ips, 1), **({"top_ops": ops} if ops else {})})
        print(json.dumps({"variant": label, "images_per_second": rows[-1]["images_per_second"]}), flush=True)
    dense = rows[0]["images_per_second"]
    for r in rows:
        r["vs_dense"] = round(r["images_per_second"] / dense, 3)
    env = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "batch": args.batch, "image_size": args.image_size, "compile": args.compile}
    table = markdown_table(["variant", "images/s", "vs dense ViT-S"],
                           [[r["variant"], r["images_per_second"], r["vs_dense"]] for r in rows])
    for r in rows:
        if "top_ops" in r:
            table += f"\n\nTop ops of a training step of {r['variant']}:\n\n" + markdown_table(
                ["op", "us", "share"], [[o["op"], o["us_per_call"], f"{o['share']:.0%}"] for o in r["top_ops"]])
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(", ".join(f"{k}={v}" for k, v in env.items()) + "\n\n" + table)


if __name__ == "__main__":
    main()
