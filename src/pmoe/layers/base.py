"""The routed-layer contract: what models, pruning, analysis and distributed code may rely on in any MoE layer.

A `RoutedLayer` has
* `router`: `nn.Linear(d, k, bias=False)`; row s of its weight (k, d) is expert s's router vector;
* `experts`: a bank mapping (k', M, d) -> (k', M, d_out), weights with a leading expert axis (`pmoe.layers.experts`);
* `num_experts` k (the router's rows) and `in_features` d;
* `kept`: None, or the (k',) ids of the experts that zero-mode pruning kept in the bank (`pmoe.prune.surgery`);
* `groups`: expert groups routed apart (E³: its M members, group m = experts m*k/M .. (m+1)*k/M - 1), else 1;
* `combine`: `sum` (output (B, n, d_out)) or `concat` (expert s fills channel block s: (B, n, k*d_out));
* `route(x)` -> the routing of x; `aux_loss(routing)` -> its weighted auxiliary loss;
  `forward(x, routing=None)` -> `MoEOutput` (output, routing, aux loss);
* `calls_bank()`: whether a forward calls the bank as a module (its hooks see the routed rows), and the context
  `calling_bank()` inside which it does (the same values): expert parallelism and calibration hook the bank.

The one state a forward leaves is `last_routing`, the routing of the last call: `collect_aux_loss` and routing
analysis read it, forward never does (torch.compile has nothing to guard on). Everything else is computed per call.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch
from torch import Tensor, nn

from pmoe.errors import check
from pmoe.layers.routing import PatchRouting, TokenRouting

Routing = PatchRouting | TokenRouting


class MoEOutput(NamedTuple):
    output: Tensor  # (B, n, d_out), or (B, n, k*d_out) for concat
    routing: Routing
    aux_loss: Tensor  # () weighted auxiliary loss to add to the task loss (0 for patch routing)


def check_tokens(x: Tensor, d: int) -> None:
    check(x.dim() == 3 and x.shape[-1] == d, f"MoE input must be (B, n, d={d}), got shape {tuple(x.shape)}")


class RoutedLayer(nn.Module, ABC):
    """Router + expert bank; subclasses define `route` and `compute` (see the module docstring for the contract)."""

    groups: int = 1
    combine: str = "sum"

    def __init__(self, experts: nn.Module, router_std: float) -> None:
        super().__init__()
        check(0 <= router_std < math.inf, f"router_std must be >= 0 and finite, got {router_std}")
        self.experts = experts
        self.num_experts, self.in_features = experts.num_experts, experts.in_features
        self.router = nn.Linear(self.in_features, self.num_experts, bias=False)  # weight[s] = w_s
        nn.init.normal_(self.router.weight, std=router_std)
        self.register_buffer("kept", None, persistent=False)  # (k',) experts left by zero-mode pruning; None: all
        self.last_routing: Routing | None = None

    @abstractmethod
    def route(self, x: Tensor) -> Routing:
        """x: (B, n, d) -> which expert takes which token, with what gate."""

    @abstractmethod
    def compute(self, x: Tensor, routing: Routing) -> Tensor:
        """x: (B, n, d) -> (B, n, d_out): the experts on the tokens `routing` gives them, combined."""

    def calls_bank(self) -> bool:
        """Whether a forward calls `experts` as a module (so its forward hooks run); True unless overridden."""
        return True

    @contextmanager
    def calling_bank(self) -> Iterator[None]:
        """Inside, a forward calls `experts` as a module (the same values); layers that always do change nothing."""
        yield

    def aux_loss(self, routing: Routing) -> Tensor:
        """() auxiliary loss of a routing, weighted; 0 unless the layer has one (a plain tensor, as the gates)."""
        return routing.gates.new_zeros(())

    def forward(self, x: Tensor, routing: Routing | None = None) -> MoEOutput:
        """x: (B, n, d) -> MoEOutput; `routing`: use it instead of routing x (e.g. a fixed routing for analysis)."""
        r = self.route(x) if routing is None else routing
        self.last_routing = r
        return MoEOutput(self.compute(x, r), r, self.aux_loss(r))


def routed_layers(module: nn.Module) -> list[RoutedLayer]:
    """The routed layers inside `module` (itself included), in registration order: depth order for a sequential
    model."""
    return [m for m in module.modules() if isinstance(m, RoutedLayer)]


def collect_aux_loss(module: nn.Module) -> Tensor:
    """() sum of the auxiliary losses of the last forward of every routed layer inside `module` (0 before any).

    The one way to get the aux loss of a model that holds pmoe layers anywhere (our ViT, a timm ViT with `MoEMlp`,
    a transformers model with swapped blocks): add it to the task loss after the forward.
    """
    zero = torch.zeros((), device=next(module.parameters()).device)  # plain, also for sharded (DTensor) weights
    return sum((m.aux_loss(m.last_routing) for m in routed_layers(module) if m.last_routing is not None), zero)
