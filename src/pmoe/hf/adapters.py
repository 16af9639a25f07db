"""Hugging Face MoE families: where each keeps its routers and experts, and which config fields count them.

A family is one `Family(...)` line. Keys are read as, with `{block}` an MoE block's key prefix:
  `{block}.{router}.{param}`             router tensors, one row per expert (weight `[k, d]`, optional bias `[k]`);
  `{block}.experts.{expert_prefix}{e}.…` per-expert tensors of expert `e`;
  `{block}.experts.{name}`               fused tensors, all experts stacked on dim 0 (`[k, …]`).
Everything else (attention, embeddings, Qwen2-MoE's `shared_expert`) is copied unchanged.
The same patterns match the on-disk keys that `save_pretrained` writes (per-expert) and the in-memory keys of
transformers 5 (Mixtral's `mlp.gate`, fused `experts.gate_up_proj`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

from pmoe.errors import PmoeError, check


class KeyRole(NamedTuple):
    """What a tensor key is to the pruner: `kind` is "router", "expert" (of expert `expert`) or "fused"."""

    block: str
    kind: str
    expert: int | None = None
    tail: str = ""


@dataclass(frozen=True)
class Family:
    """Key and config layout of one MoE model family (see the module docstring)."""

    model_type: str  # config.json "model_type"
    block: str  # regex of an MoE block's key prefix
    num_experts: tuple[str, ...]  # config fields holding the expert count; each one present is updated
    router: str = "gate"  # router module inside the block
    expert_prefix: str = ""  # text before the expert id in per-expert keys
    top_k: tuple[str, ...] = ("num_experts_per_tok",)  # config fields clamped to the kept expert count

    @cached_property
    def _router_re(self) -> re.Pattern:
        return re.compile(rf"(?P<block>{self.block})\.{re.escape(self.router)}\.(?P<tail>[^.]+)")

    @cached_property
    def _experts_re(self) -> re.Pattern:
        return re.compile(rf"(?P<block>{self.block})\.experts\.(?P<rest>.+)")

    @cached_property
    def _expert_re(self) -> re.Pattern:
        return re.compile(rf"{re.escape(self.expert_prefix)}(?P<e>\d+)\.(?P<tail>.+)")

    def classify(self, key: str) -> KeyRole | None:
        """The role of tensor `key`, or None for a tensor that pruning copies unchanged."""
        if m := self._router_re.fullmatch(key):
            return KeyRole(m["block"], "router", tail=m["tail"])
        if m := self._experts_re.fullmatch(key):
            if e := self._expert_re.fullmatch(m["rest"]):
                return KeyRole(m["block"], "expert", int(e["e"]), e["tail"])
            return KeyRole(m["block"], "fused", tail=m["rest"])
        return None

    def router_key(self, block: str) -> str:
        """Key of the router weight `[k, d]` of MoE block `block`."""
        return f"{block}.{self.router}.weight"

    def expert_key(self, block: str, expert: int, tail: str) -> str:
        """Key of per-expert tensor `tail` of expert `expert` in MoE block `block`."""
        return f"{block}.experts.{self.expert_prefix}{expert}.{tail}"

    def config_changes(self, config: dict[str, Any], num_experts: int, keep: int) -> dict[str, int]:
        """The config fields to set when `keep` of `num_experts` experts remain: expert counts, clamped top-K."""
        counts = [f for f in self.num_experts if f in config]
        check(bool(counts), f"config.json of this {self.model_type} model has none of {list(self.num_experts)}; "
                            "expected its expert count there")
        for f in counts:
            check(config[f] == num_experts, f"config.json {f}={config[f]!r} but the routers have {num_experts} rows; "
                                            "expected the two to agree")
        changes = {f: keep for f in counts}
        changes.update({f: keep for f in self.top_k if isinstance(config.get(f), int) and config[f] > keep})
        return changes


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("mixtral", r"model\.layers\.\d+\.(?:block_sparse_moe|mlp)", ("num_local_experts", "num_experts")),
    Family("qwen2_moe", r"model\.layers\.\d+\.mlp", ("num_experts",)),
    Family("qwen3_moe", r"model\.layers\.\d+\.mlp", ("num_experts", "num_local_experts")),
    Family("olmoe", r"model\.layers\.\d+\.mlp", ("num_experts",)),
    Family("switch_transformers", r"(?:encoder|decoder)\.block\.\d+\.layer\.\d+\.mlp", ("num_experts",),
           router="router.classifier", expert_prefix="expert_", top_k=()),
)}


def family_of(config: dict[str, Any]) -> Family:
    """The family of a model from its config.json contents; PmoeError for an unknown `model_type`."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise PmoeError(f"config.json model_type {model_type!r} is not a supported MoE family; "
                        f"expected one of {sorted(FAMILIES)}")
    return FAMILIES[model_type]
