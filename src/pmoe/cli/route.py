"""`pmoe route DIR`: which patches the routers of a checkpoint pick.

Theory checkpoints (pmoe, pmoe-separate): how often each expert picks the class-discriminative patch, against chance
l/n, and the best expert of each class against the same routers at the run's initial weights (rebuilt from its config
and seed; random routers can favour the class patch) and against the chance level of a max over k experts.
Vision checkpoints (WRN-pMoE, ViT-MoE, E3): per class, the share of test images in which each expert of one MoE
layer takes each cell (a ViT patch, a region of WRN-pMoE's feature map), most taken first; on the patch-canvas
images also how often each expert's cells cover the class patch, against chance and the run's initial weights.
`--png PATH` draws, for both, each expert's cells on example test images of every class, beside per-class heat maps
of those shares."""
from __future__ import annotations

import argparse
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from pmoe.analysis import ExpertCells, draw_routing_grid, examples_per_class, expert_cells, layer_index, pick_frequency
from pmoe.analysis.hits import class_patch_hits
from pmoe.checkpoints import load_checkpoint, read_config
from pmoe.cli.common import emit, positive_int, refuse_flags, routing_line
from pmoe.data.patches import canvas_image
from pmoe.data.vision import ImageBatches, seeded_generator
from pmoe.errors import check
from pmoe.fields import typed
from pmoe.metrics import discriminative_routing
from pmoe.runs.theory import evaluate_checkpoint, initial_theory_model
from pmoe.train import resolve_device
from pmoe.runs.images import ImageDataSpec, initial_model

BATCH = 256  # images per forward pass when counting picks


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("route", help="which patches the experts' routers of a checkpoint pick", description=__doc__)
    p.add_argument("checkpoint", help="checkpoint folder of a routed model (pmoe, pmoe-separate, WRN-pMoE, ViT-MoE, E3)")
    p.add_argument("--png", metavar="PATH", help="draw each expert's chosen cells on example test images per class")
    p.add_argument("--layer", type=int, default=-1, help="MoE layer, by index in depth order (default: -1, the last)")
    p.add_argument("--examples", type=positive_int, default=3, help="example images per class in the PNG (default: 3)")
    p.add_argument("--images", type=positive_int, default=1000, help="test images to count picks over (default: 1000)")
    p.add_argument("--device", help="vision checkpoints: auto (default), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result, lines = (_theory if read_config(args.checkpoint)["arch"] == "theory" else _vision)(args)
    if args.png:
        lines.append(f"routing picture: {args.png}")
    emit({"checkpoint": args.checkpoint, **result, **({"png": args.png} if args.png else {})}, args.json, lines)
    return 0


def _picture(args: argparse.Namespace, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
             examples: tuple[Tensor, Tensor], classes: list[str], marked: Tensor | None,
             title: str) -> tuple[Tensor, ExpertCells]:
    """(pick shares (C, k, gh, gw) of MoE layer --layer over `batches`, the cells of the examples (images, labels));
    with --png, the picture of the examples."""
    freq, _ = pick_frequency(model, batches, len(classes), args.layer)
    cells = expert_cells(model, examples[0])
    if args.png:
        draw_routing_grid(args.png, *examples, classes, cells, args.layer, freq, marked, title)
    return freq, cells


def _theory(args: argparse.Namespace) -> tuple[dict, list[str]]:
    refuse_flags(args, ("device",), "to vision checkpoints only")
    model, cfg, _, test_ds = evaluate_checkpoint(args.checkpoint)
    check(hasattr(model, "moe"), f"{args.checkpoint} holds a {cfg['model']['model']!r} model, which has no routers")
    r = discriminative_routing(model, test_ds)
    initial = initial_theory_model(cfg)
    if initial is not None:
        r["initial"] = discriminative_routing(initial, test_ds)
    lines = [f"chance (l/n) = {r['chance']:.3f}; some expert picks the discriminative patch in "
             f"{r['any_expert']:.1%} of {len(test_ds)} test samples", routing_line(r),
             "expert   all      y=+1     y=-1"]
    lines += [f"{s:>6}   {a:.3f}    {p:.3f}    {m:.3f}" for s, (a, p, m) in
              enumerate(zip(r["per_expert"], r["per_class"]["+1"], r["per_class"]["-1"]))]
    if args.png:
        ds = test_ds.subset(torch.arange(min(len(test_ds), args.images)))
        labels = (ds.y > 0).long()  # class 1: y=+1
        canvases = lambda idx: torch.stack([canvas_image(ds, i) for i in idx.tolist()]).unsqueeze(1)  # noqa: E731
        idx = examples_per_class(labels, args.examples)
        _picture(args, model, ((canvases(b), labels[b]) for b in torch.arange(len(ds)).split(BATCH)),
                 (canvases(idx), labels[idx]), ["y=-1", "y=+1"], ds.disc_pos[idx],
                 f"{args.checkpoint}: {cfg['model']['model']}, l={model.moe.l}; dashed: the class patch")
    return r, lines


def _vision(args: argparse.Namespace) -> tuple[dict, list[str]]:
    model, cfg = load_checkpoint(args.checkpoint)
    name, data = cfg.get("preset") or cfg["arch"], cfg.get("data", {}).get("name")
    check(len(model.moe_layers()) > 0, f"{args.checkpoint} holds a dense {name!r} model, which has no routers")
    check(data is not None, f"{args.checkpoint}/config.json records no data spec; cannot rebuild its test data")
    layer = layer_index(len(model.moe_layers()), args.layer)
    device = resolve_device(args.device or "auto")
    ds = typed(ImageDataSpec, cfg.get("data"), "the data section of config.json").make("test")
    ds = ds.subset(torch.randperm(len(ds), generator=seeded_generator(0))[:args.images].sort().values)
    examples = next(iter(ImageBatches(ds.subset(examples_per_class(ds.labels, args.examples)), BATCH, device=device)))
    freq, cells = _picture(args, model.to(device), ImageBatches(ds, BATCH, device=device), examples, ds.classes,
                           None, f"{args.checkpoint}: {name} on {data}, MoE layer {layer}")
    C, k, gh, gw = freq.shape
    lines = [f"{name} on {data} test, MoE layer {layer} (of {len(model.moe_layers())}): {k} experts, {gh}x{gw} "
             f"cells of {cells.cell} px; per class, the (row, column) cells each expert takes most and the share of "
             f"the class's test images ({len(ds)} in all) in which it takes them:"]
    for s in range(k):
        top = [freq[c, s].flatten().topk(min(3, gh * gw)) for c in range(C)]
        lines.append(f"expert {s}   " + "   ".join(f"{ds.classes[c][:16]}: " + " ".join(
            f"({i // gw},{i % gw}) {v:.2f}" for v, i in zip(t.values.tolist(), t.indices.tolist()))
            for c, t in enumerate(top)))
    result = {"model": name, "data": data, "layer": layer, "experts": k, "grid": [gh, gw], "cell": cells.cell,
              "offset": cells.offset, "images": len(ds), "classes": ds.classes, "frequency": freq.tolist()}
    if "disc_pos" in ds.attributes:  # canvases: how often the experts' cells cover the class patch
        hits = class_patch_hits(model, ds, layer, BATCH, device)
        lines.append(f"class patch covered by the best expert of each class in {hits['best_expert']:.3f} of the test "
                     f"canvases (chance {hits['chance_best_expert']:.3f} for the best of {k} experts, "
                     f"{hits['chance']:.3f} for one); per expert: "
                     + " ".join(f"{h:.3f}" for h in hits["per_expert"]))
        result["class_patch"] = hits
        initial = initial_model(args.checkpoint)
        if initial is not None:  # the same routers before training: random routers can favour the class patch too
            result["class_patch_initial"] = class_patch_hits(initial, ds, layer, BATCH, device)
            lines.append(f"at the run's initial weights: {result['class_patch_initial']['best_expert']:.3f}")
    return result, lines
