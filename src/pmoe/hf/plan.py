"""From tensor keys and shapes alone: a model's MoE blocks, and how each tensor of the pruned model is made."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from pmoe.errors import check
from pmoe.hf.adapters import Family

Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class Slice:
    """An output tensor: input tensor `source`, whole (`rows` None) or its dim-0 `rows` in this order."""

    source: str
    rows: tuple[int, ...] | None = None


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def moe_blocks(family: Family, shapes: Shapes) -> list[str]:
    """Key prefixes of the MoE blocks, in natural order; PmoeError if there is none or one lacks its router."""
    blocks = {role.block for key in shapes if (role := family.classify(key))}
    check(bool(blocks), f"no MoE router found; expected {family.model_type} keys like "
                        f"{family.router_key('<block>')} with <block> matching {family.block}")
    for block in blocks:
        key = family.router_key(block)
        check(key in shapes, f"MoE block {block} has no router tensor {key}; expected one with a row per expert")
        check(len(shapes[key]) == 2, f"router {key} has shape {list(shapes[key])}; expected [experts, hidden]")
    return sorted(blocks, key=_natural)


def expert_count(family: Family, shapes: Shapes, blocks: Sequence[str]) -> int:
    """Rows of the routers, which must agree across blocks."""
    counts = {b: shapes[family.router_key(b)][0] for b in blocks}
    check(len(set(counts.values())) == 1, f"the routers have different expert counts {counts}; expected one count")
    return next(iter(counts.values()))


def plan_tensors(family: Family, shapes: Shapes, kept: Mapping[str, Sequence[int]], k: int) -> dict[str, Slice]:
    """Output key -> Slice for each tensor of the pruned model, in input order.

    Router and fused tensors keep rows `kept[block]`; per-expert tensors of kept experts are renumbered
    0..len(kept)-1 in id order, the others dropped; tensors outside MoE blocks are copied.
    """
    plan: dict[str, Slice] = {}
    for key, shape in shapes.items():
        role = family.classify(key)
        if role is None:
            plan[key] = Slice(key)
            continue
        ids = list(kept[role.block])
        if role.kind == "expert":
            check(role.expert < k, f"{key} names expert {role.expert}; expected ids below {k}")
            if role.expert in ids:
                plan[family.expert_key(role.block, ids.index(role.expert), role.tail)] = Slice(key)
        else:
            check(len(shape) > 0 and shape[0] == k, f"{key} has shape {list(shape)}; expected {k} experts on dim 0")
            plan[key] = Slice(key, tuple(ids))
    return plan
