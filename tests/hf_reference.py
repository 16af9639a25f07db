"""The reference a pruned Hugging Face MoE must equal: the fine-tuned model whose routers give the pruned experts a
logit of -inf, so that softmax and top-K run over the kept experts only."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import torch


@contextlib.contextmanager
def masked_router_logits(routers: list[torch.Tensor], kept: list[list[int]], extra_from: int | None = None
                         ) -> Iterator[None]:
    """Inside: the logits computed with router weight `routers[i]` (E(+Z), hidden) are -inf for the experts outside
    `kept[i]`; rows from `extra_from` on (zero-compute experts) stay."""
    masks = {}
    for w, ids in zip(routers, kept):
        mask = torch.full((w.shape[0],), float("-inf"))  # (E,)
        mask[ids] = 0.0
        if extra_from is not None:
            mask[extra_from:] = 0.0
        masks[id(w)] = mask
    linear = torch.nn.functional.linear

    def masked_linear(x, weight, bias=None):
        y = linear(x, weight, bias)
        return y + masks[id(weight)].to(y.dtype) if id(weight) in masks else y

    with mock.patch("torch.nn.functional.linear", masked_linear):
        yield
