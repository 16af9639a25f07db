"""The human lines of the runs' results, per kind (`RunKind.eval_lines`, `RunKind.route_lines`): what `pmoe eval`,
`pmoe route` and `pmoe train` print without --json."""
from __future__ import annotations

import torch


def routing_line(r: dict) -> str:
    """The human form of a theory model's `discriminative_routing` (with the run's initial weights', if any)."""
    initial = f"at the run's initial weights {r['initial']['best_expert']:.3f}; " if "initial" in r else ""
    return (f"best expert of each class takes its discriminative patch in {r['best_expert']:.3f} of the test samples "
            f"({initial}chance {r['chance_best_expert']:.3f} for the best of {len(r['per_expert'])} experts, "
            f"{r['chance']:.3f} = l/n for one)")


def vision_eval_lines(r: dict) -> list[str]:
    """One split of a vision checkpoint, with group accuracies where the data set has groups."""
    s = r["split"]
    groups = f"   worst-group accuracy {r['worst_group_accuracy']:.4f}" if "worst_group_accuracy" in r else ""
    return [f"{r['model']} on {r['data']} {s} ({r['samples']} images): accuracy {r[f'{s}_accuracy']:.4f}   "
            f"loss {r[f'{s}_loss']:.4f}{groups}   parameters {r['params']}"]


def theory_eval_lines(r: dict) -> list[str]:
    """Both splits of a theory checkpoint, with the routers' class-patch hits of a pMoE model."""
    return ([f"{r['model']}: train accuracy {r['train_accuracy']:.4f}   test accuracy {r['test_accuracy']:.4f}   "
             f"parameters {r['params']}"] + ([routing_line(r["routing"])] if "routing" in r else []))


def theory_route_lines(r: dict) -> list[str]:
    lines = [f"chance (l/n) = {r['chance']:.3f}; some expert picks the discriminative patch in "
             f"{r['any_expert']:.1%} of {r['test_samples']} test samples", routing_line(r),
             "expert   all      y=+1     y=-1"]
    return lines + [f"{s:>6}   {a:.3f}    {p:.3f}    {m:.3f}" for s, (a, p, m) in
                    enumerate(zip(r["per_expert"], r["per_class"]["+1"], r["per_class"]["-1"]))]


def vision_route_lines(r: dict) -> list[str]:
    freq, classes = torch.tensor(r["frequency"]), r["classes"]
    C, k, gh, gw = freq.shape
    lines = [f"{r['model']} on {r['data']} test, MoE layer {r['layer']} (of {r['layers']}): {k} experts, {gh}x{gw} "
             f"cells of {r['cell']} px; per class, the (row, column) cells each expert takes most and the share of "
             f"the class's test images ({r['images']} in all) in which it takes them:"]
    for s in range(k):
        top = [freq[c, s].flatten().topk(min(3, gh * gw)) for c in range(C)]
        lines.append(f"expert {s}   " + "   ".join(f"{classes[c][:16]}: " + " ".join(
            f"({i // gw},{i % gw}) {v:.2f}" for v, i in zip(t.values.tolist(), t.indices.tolist()))
            for c, t in enumerate(top)))
    if "class_patch" in r:
        hits = r["class_patch"]
        lines.append(f"class patch covered by the best expert of each class in {hits['best_expert']:.3f} of the test "
                     f"canvases (chance {hits['chance_best_expert']:.3f} for the best of {k} experts, "
                     f"{hits['chance']:.3f} for one); per expert: " + " ".join(f"{h:.3f}" for h in hits["per_expert"]))
    if "class_patch_initial" in r:
        lines.append(f"at the run's initial weights: {r['class_patch_initial']['best_expert']:.3f}")
    return lines
