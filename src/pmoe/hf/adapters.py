"""What the tensor names cannot tell: the config.json fields that count, route and group the experts.

Families name the same setting differently (`num_local_experts`, `num_experts`, `n_routed_experts`,
`moe_num_experts`; `num_experts_per_tok`, `num_experts_per_token`, ...). Multimodal models keep the language model's
settings in `text_config`. `MoeConfig.read` finds them; `MoeConfig.changes` says what to write after pruning, as
dotted paths (`text_config.num_experts`), which `apply_changes` sets in a config.json dict. `REFUSED` lists the
families whose routing pruning cannot preserve, with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pmoe.errors import PmoeError, check

COUNT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
TOP_K_FIELDS = ("num_experts_per_tok", "num_experts_per_token", "moe_k", "moe_topk", "moe_top_k", "top_k_experts")
GROUP_FIELDS = ("n_group", "num_expert_group")  # experts split into this many groups of consecutive ids
TOPK_GROUP_FIELDS = ("topk_group",)  # groups a token may use
ZERO_FIELDS = ("zero_expert_num",)  # LongCat-Flash: router rows beyond the routed experts, zero-compute experts
SINK_FIELDS = ("shared_expert_sink",)  # if true, the shared experts (`n_shared_experts`) have router rows too
NESTED = ("text_config", "ffn_config")  # where multimodal models (and DBRX) keep the MoE settings
REFUSED = {  # model_type -> why its pruned outputs would not be the fine-tuned model's restricted to the kept experts
    "deepseek_v4": "its hash-routed MoE layers pick experts by token id (tid2eid tables), which pruning would break",
    "doge": "its experts are product-key retrieval embeddings with no router row per expert",
    "ernie4_5_vl_moe": "its checkpoint keeps text and vision experts in one list (ids 0..2E-1) with two routers saved "
                       "transposed (gate.weight, gate.weight_1: [hidden, E]) and statics [2, E]; which expert serves "
                       "which modality is not readable from names and shapes",
    "zaya": "its router is an MLP (gate.router_mlp.out_proj: E+1 rows, one a skip expert) over a learned projection, "
            "not an [E, hidden] linear router; pruning would need to slice it and its skip row",
    "nllb-moe": "transformers' NllbMoeExperts (5.24) one-hot encodes the router's 0/1 top-1 mask, not expert ids, so "
                "only expert_0 and expert_1 ever compute, whatever the routing; renumbering the kept experts would "
                "change which weights those are",
}


def _ints(config: dict[str, Any], fields: tuple[str, ...]) -> dict[str, int]:
    return {f: config[f] for f in fields if isinstance(config.get(f), int) and not isinstance(config[f], bool)}


def _extra_rows(config: dict[str, Any]) -> int:
    """Router rows after the routed experts: LongCat-Flash's zero-compute experts, Inkling's shared-expert sinks."""
    sink = any(config.get(f) is True for f in SINK_FIELDS)
    return sum(_ints(config, ZERO_FIELDS).values()) + (config.get("n_shared_experts") or 0) * sink


@dataclass(frozen=True)
class MoeConfig:
    """The MoE settings of a config.json: where they live and their values."""

    path: str  # "" for top level, else the nested key ("text_config")
    model_type: str
    num_experts: int  # routed experts per MoE layer
    count_fields: tuple[str, ...]  # fields holding num_experts
    zero_experts: int  # router rows after the routed experts, never pruned (zero-compute or shared sink experts)
    hidden: int | None  # hidden size, the router's input width
    top_k: dict[str, int]  # experts per token, by field
    groups: dict[str, int]  # expert groups (`n_group`), by field; empty if ungrouped
    topk_group: dict[str, int]  # groups per token, by field

    @property
    def router_rows(self) -> int:
        return self.num_experts + self.zero_experts

    @property
    def num_groups(self) -> int:
        return max(self.groups.values(), default=1)

    @classmethod
    def read(cls, config: dict[str, Any]) -> MoeConfig:
        """The MoE settings of `config` (config.json contents); PmoeError if it names no expert count."""
        model_type = config.get("model_type")
        check(model_type not in REFUSED, f"model_type {model_type!r} is not supported: {REFUSED.get(model_type)}")
        for path in ("", *NESTED):
            sub = config if not path else config.get(path)
            counts = _ints(sub, COUNT_FIELDS) if isinstance(sub, dict) else {}
            counts = {f: v for f, v in counts.items() if v > 1}
            if not counts:
                continue
            check(len(set(counts.values())) == 1, f"config.json {path or model_type} has expert counts {counts}; "
                                                  "expected one value")
            hidden = _ints(sub, ("hidden_size", "d_model")).values()
            return cls(path, str(sub.get("model_type", model_type)), next(iter(counts.values())), tuple(counts),
                       _extra_rows(sub), next(iter(hidden), None), _ints(sub, TOP_K_FIELDS),
                       {f: v for f, v in _ints(sub, GROUP_FIELDS).items() if v >= 1},
                       _ints(sub, TOPK_GROUP_FIELDS))
        raise PmoeError(f"config.json (model_type {model_type!r}) names no expert count; expected one of "
                        f"{list(COUNT_FIELDS)} above 1 at the top level or in {list(NESTED)}")

    def field(self, name: str) -> str:
        """Dotted path of field `name`."""
        return f"{self.path}.{name}" if self.path else name

    def changes(self, keep: int, groups: int, reachable: int) -> dict[str, int]:
        """Fields to set when `keep` experts remain in `groups` groups, of which a token reaches `reachable`."""
        out = {self.field(f): keep for f in self.count_fields}
        if groups != self.num_groups:
            out.update({self.field(f): groups for f in (*self.groups, *self.topk_group)})
        out.update({self.field(f): reachable for f, v in self.top_k.items() if v > reachable})
        return out


def apply_changes(config: dict[str, Any], changes: dict[str, int]) -> dict[str, Any]:
    """A copy of config.json contents `config` with the dotted `changes` set."""
    out = {**config}
    for name, value in changes.items():
        path, _, leaf = name.rpartition(".")
        if path:
            out[path] = {**out[path], leaf: value}
        else:
            out[leaf] = value
    return out

