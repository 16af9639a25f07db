"""What a pruning run decided and saved: per-layer Δ and kept ids, parameter and size savings; JSON and markdown."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class LayerRanking:
    """One MoE layer: Δ and the method's score per expert, and the ids kept (ascending)."""

    name: str
    delta: list[float]
    scores: list[float]
    kept: list[int]


@dataclass(frozen=True)
class PruneReport:
    """The outcome of one pruning run. Sizes are checkpoint file bytes, or tensor bytes for an in-memory model."""

    family: str
    method: str
    seed: int
    num_experts: int  # experts per MoE layer before pruning
    keep: int  # and after
    config_changes: dict[str, int]
    layers: list[LayerRanking]
    parameters: tuple[int, int]  # (before, after)
    size_bytes: tuple[int, int]  # (before, after)
    groups: int = 1  # expert groups of grouped routing, each keeping keep / groups experts
    protected: list[tuple[int, int]] = field(default_factory=list)  # (MoE layer, expert) never pruned
    paths: dict[str, str] = field(default_factory=dict)  # base, finetuned, out
    not_copied: list[str] = field(default_factory=list)  # weight files of the fine-tuned folder left behind

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: experts, parameters and size before and after."""
        (p0, p1), (b0, b1) = self.parameters, self.size_bytes
        return (f"{self.family}: kept {self.keep} of {self.num_experts} experts in {len(self.layers)} MoE layers "
                f"({self.method}); parameters {_si(p0)} -> {_si(p1)} ({_change(p0, p1)}), "
                f"size {_si(b0)}B -> {_si(b1)}B ({_change(b0, b1)})")

    def to_markdown(self) -> str:
        """Summary table, then Δ per layer and expert with the kept experts in bold."""
        (p0, p1), (b0, b1) = self.parameters, self.size_bytes
        method = self.method + (f" (seed {self.seed})" if self.method == "random" else "")
        rows = [("family", self.family), ("method", method),
                ("experts per MoE layer", f"{self.num_experts} -> {self.keep} in each of {len(self.layers)} layers"
                 + (f", {self.keep // self.groups} in each of {self.groups} groups" if self.groups > 1 else "")),
                *([("protected", ", ".join(f"{i}:{e}" for i, e in self.protected))] if self.protected else []),
                ("config changes", ", ".join(f"`{k}={v}`" for k, v in self.config_changes.items())),
                ("parameters", f"{_si(p0)} -> {_si(p1)} ({_change(p0, p1)})"),
                ("size", f"{_si(b0)}B -> {_si(b1)}B ({_change(b0, b1)})"),
                *((name, f"`{path}`") for name, path in self.paths.items()),
                *([("not copied", ", ".join(self.not_copied))] if self.not_copied else [])]
        lines = ["# Expert pruning report", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
                 "## Δ per layer and expert", "",
                 "Δ_s = ‖w_s^(T)‖₂ − ‖w_s^(0)‖₂ (fine-tuned minus pretrained router norm); kept experts in bold.",
                 "",
                 "| layer | kept | " + " | ".join(f"e{e}" for e in range(self.num_experts)) + " |",
                 "|---|---|" + "---:|" * self.num_experts]
        for layer in self.layers:
            cells = [f"**{d:+.4g}**" if e in layer.kept else f"{d:+.4g}" for e, d in enumerate(layer.delta)]
            lines.append(f"| `{layer.name}` | {','.join(map(str, layer.kept))} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def _si(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def _change(before: int, after: int) -> str:
    return f"{100 * (after - before) / before:+.1f}%" if before else "n/a"
