"""How each tensor of the pruned model is made from the fine-tuned one, given the kept experts of every block."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from pmoe.hf.layout import Layout, Shapes


@dataclass(frozen=True)
class Slice:
    """An output tensor: input tensor `source`, whole (`rows` None) or its `rows` along `axis`, in this order."""

    source: str
    rows: tuple[int, ...] | None = None
    axis: int = 0

    def shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The output shape, from the source's `shape`."""
        out = list(shape)
        if self.rows is not None:
            out[self.axis] = len(self.rows)
        return tuple(out)

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """This slice of the source tensor `t`."""
        return t if self.rows is None else t.index_select(self.axis, torch.tensor(self.rows, device=t.device))


def plan_tensors(layout: Layout, shapes: Shapes, kept: Mapping[str, Sequence[int]]) -> dict[str, Slice]:
    """Output key -> Slice for each tensor of the pruned model, in input order.

    Routers and sliced tensors keep `kept[block]` (each expert's `width` rows), then the extra router rows
    (zero-compute experts) on an axis of router-row size; per-expert tensors of kept experts are renumbered
    0..len(kept)-1 in id order (extra experts follow), the others dropped; everything else is copied.
    """
    moe = layout.moe
    zero = tuple(range(moe.num_experts, moe.router_rows))
    plan: dict[str, Slice] = {}
    for key, shape in shapes.items():
        role = layout.roles.get(key)
        if role is None:
            plan[key] = Slice(key)
            continue
        ids = [*kept[role.block], *zero]
        if role.kind == "expert":
            if role.expert in ids:
                plan[f"{role.head}{ids.index(role.expert)}{role.tail}"] = Slice(key)
            continue
        experts = ids if shape[role.axis] == moe.router_rows * role.width else kept[role.block]
        rows = [e * role.width + r for e in experts for r in range(role.width)]
        plan[key] = Slice(key, tuple(rows), role.axis)
    return plan
