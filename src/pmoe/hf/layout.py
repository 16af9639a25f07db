"""Where a checkpoint keeps its MoE blocks, read off tensor names and shapes alone (any family).

With `E` routed experts and `R = E + zero-compute experts` router rows:
  router   a `[R, hidden]` `*.weight` under a module named gate/router/classifier/wg; its parent is the MoE block;
  expert   `{block}.…experts.{e}.…` or `….experts.expert_{e}.…`: one expert's tensor, renumbered or dropped;
  sliced   any other tensor of the block with an expert axis: dim 0 of size E or R (fused experts `[E, …]`,
           router biases, score-correction biases, MXFP4 blocks/scales, Granite's `input_linear`), the one
           axis of size E of a vector such as ERNIE-4.5's `moe_statics.e_score_correction_bias` `[1, E]`, or
           dim 0 of a fused expert matrix flattened expert-major, `[E * n, …]` (DBRX's `experts.mlp.w1`): E blocks
           of n rows.
A routing tensor saved under a sibling module of the block (`layers.0.moe.router.expert_bias` beside the block
`layers.0.mlp`) belongs to that block. Modules whose name starts with "shared" are never touched, nor, in a
multimodal model, vision/audio towers.
Discovery fails, naming the tensor, on anything it cannot place: an expert-sized axis elsewhere, a fused expert
tensor without one, expert tensors outside any block with a router, missing or out-of-range expert ids.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from pmoe.errors import check
from pmoe.hf.adapters import MoeConfig

Shapes = Mapping[str, Sequence[int]]
ROUTER_MODULES = {"gate", "router", "classifier", "wg"}
SHARED = re.compile(r"shared.*")
TOWER = re.compile(r"(?:vision|visual|audio).*")
PER_EXPERT = re.compile(r"(?P<head>(?:.+\.)?experts\.(?:expert_)?)(?P<e>\d+)(?P<tail>\..+)")


@dataclass(frozen=True)
class Role:
    """What one tensor of an MoE block is: "router", "sliced" along `axis`, or "expert" `expert`'s own tensor.

    A sliced axis of size R (router rows) keeps the zero-compute rows too; it holds `width` consecutive rows per
    expert (more than 1 for a flattened fused expert matrix). An expert tensor's key is `head + str(expert) + tail`.
    """

    kind: str
    block: str
    axis: int = 0
    width: int = 1
    expert: int = -1
    head: str = ""
    tail: str = ""


@dataclass(frozen=True)
class Layout:
    """The MoE blocks of a checkpoint (natural key order), their routers, and the role of every tensor in them."""

    moe: MoeConfig
    blocks: list[str]
    routers: dict[str, str]  # block -> router weight key
    roles: dict[str, Role]  # key -> role; keys without a role are copied unchanged


def natural(key: str) -> list:
    """Sort key: 'layers.10' after 'layers.9'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _skipped(parts: Sequence[str], moe: MoeConfig) -> bool:
    """Shared-expert modules, and towers of a multimodal model whose MoE settings are nested."""
    return any(SHARED.fullmatch(p) or (moe.path and TOWER.fullmatch(p)) for p in parts)


def find_routers(moe: MoeConfig, shapes: Shapes) -> dict[str, str]:
    """MoE block -> its router weight key (see the module docstring)."""
    routers: dict[str, str] = {}
    for key, shape in shapes.items():
        parts = key.split(".")
        at = next((i for i, p in enumerate(parts[:-1]) if p in ROUTER_MODULES), None)
        if (at is None or parts[-1] != "weight" or len(shape) != 2 or shape[0] != moe.router_rows
                or (moe.hidden is not None and shape[1] != moe.hidden) or _skipped(parts, moe)):
            continue
        block = ".".join(parts[:at])
        check(block not in routers, f"MoE block {block} has two router candidates {routers.get(block)} and {key}; "
                                    "expected one")
        routers[block] = key
    check(bool(routers), f"no MoE router found; expected a [{moe.router_rows}, {moe.hidden}] weight under a module "
                         f"named one of {sorted(ROUTER_MODULES)} ({moe.model_type}, {moe.num_experts} experts)")
    return routers


def expert_axis(key: str, shape: Sequence[int], moe: MoeConfig, fused: bool) -> tuple[int, int] | None:
    """The expert axis of a tensor of an MoE block and its rows per expert, None if it has none; PmoeError if it is
    ambiguous. A `fused` matrix (under `experts`) whose dim 0 is a multiple of E is flattened expert-major."""
    sizes = {moe.num_experts, moe.router_rows}
    if shape and shape[0] in sizes:
        return 0, 1
    at = [i for i, n in enumerate(shape) if n in sizes]
    if len(at) == 1 and all(n == 1 for i, n in enumerate(shape) if i != at[0]):
        return at[0], 1
    check(not at, f"{key} has shape {list(shape)} with {moe.num_experts} (the expert count) at axis {at}; expected "
                  "the expert axis first, or a vector [1, .., E]: cannot tell which axis to slice")
    if fused and len(shape) >= 2 and shape[0] % moe.num_experts == 0:
        return 0, shape[0] // moe.num_experts
    check(not fused or len(shape) < 2, f"{key} has shape {list(shape)} but sits under experts; expected the "
                                       f"expert axis ({moe.num_experts}) first, or dim 0 a multiple of it")
    return None


def _sibling(parts: list[str], routers: dict[str, str], moe: MoeConfig) -> str | None:
    """The MoE block beside routing tensor `parts` saved under a sibling module (`layers.0.moe.router.expert_bias`
    beside block `layers.0.mlp`), if the tensor names a router or experts."""
    if _skipped(parts, moe) or not any(p in ROUTER_MODULES or "expert" in p for p in parts):
        return None
    parents = {b.rpartition(".")[0]: b for b in routers}
    return next((parents[p] for p in (".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)) if p in parents),
                None)


def _role(key: str, block: str, router: str, shape: Sequence[int], moe: MoeConfig) -> Role | None:
    rest = key[len(block) + 1:]
    if key == router:
        return Role("router", block)
    if m := PER_EXPERT.fullmatch(rest):
        e = int(m["e"])
        check(e < moe.router_rows, f"{key} names expert {e}; expected ids below {moe.router_rows}")
        return Role("expert", block, expert=e, head=f"{block}.{m['head']}", tail=m["tail"])
    axis = expert_axis(key, shape, moe, fused="experts" in rest.split("."))
    return None if axis is None else Role("sliced", block, *axis)


def discover(moe: MoeConfig, shapes: Shapes) -> Layout:
    """The layout of the checkpoint with tensor `shapes` and MoE settings `moe`; PmoeError on anything unplaced."""
    routers = find_routers(moe, shapes)
    blocks = sorted(routers, key=natural)
    roles: dict[str, Role] = {}
    for key, shape in shapes.items():
        parts = key.split(".")
        block = next((b for b in (".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)) if b in routers), None)
        if block is None:
            sibling = _sibling(parts, routers, moe)
            axis = None if sibling is None else expert_axis(key, shape, moe, fused=False)
            check(axis is not None or "experts" not in parts or _skipped(parts, moe),
                  f"{key} is an expert tensor outside any MoE block with a router; expected it in one")
            if axis is not None:
                roles[key] = Role("sliced", sibling, *axis)
            continue
        if _skipped(parts[block.count(".") + 1:], moe):
            continue
        if role := _role(key, block, routers[block], shape, moe):
            roles[key] = role
    for block in blocks:
        _check_complete(block, [(k, r) for k, r in roles.items() if r.block == block], moe)
    return Layout(moe, blocks, routers, roles)


def _check_complete(block: str, roles: list[tuple[str, Role]], moe: MoeConfig) -> None:
    """Every per-expert tensor name present for all experts 0..E-1 (or 0..R-1), and at least one expert tensor."""
    experts = [r for _, r in roles if r.kind != "router"]
    check(bool(experts), f"MoE block {block} has a router but no expert tensors; expected per-expert or fused ones")
    ids: dict[tuple[str, str], set[int]] = {}
    for r in experts:
        if r.kind == "expert":
            ids.setdefault((r.head, r.tail), set()).add(r.expert)
    for (head, tail), found in ids.items():
        k = moe.router_rows if max(found) >= moe.num_experts else moe.num_experts
        missing = sorted(set(range(k)) - found)
        check(not missing, f"{head}{{e}}{tail} is missing for experts {missing}; expected all {k} experts")
