"""Model surgery: physically remove experts from the routed layers of a model, in mode `zero` or `truncate`.

* `zero` (the official V-MoE pruning): the router keeps its k rows and routes over all k experts as before;
  the expert bank is sliced to the kept experts, and what the router sends to a removed expert is lost (it
  contributes zero; gates are not renormalised, capacities unchanged). The layer's `kept` buffer maps the two.
* `truncate`: the router rows of the removed experts go too, so the layer is a k'-expert layer routing over the
  kept experts only (token routing: top-K and capacity ceil(T·K·c/k') over them; ViT's patch routing: each expert
  takes l = ceil(n·K/k') patches, as `PatchMoE` computes for k' experts). In WRN-pMoE the channels the
  removed experts filled go from the BN and the head as well, their constant contribution folded into the head's
  bias (exact in eval mode). Per-sample expert choice is the same per expert either way.

Banks are sliced generically: every tensor of >= 1 dim in an expert bank is k blocks along dim 0 (`MlpExperts`:
leading expert axis; `ConvExperts`: the grouped conv's and the BN's per-expert channel blocks).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pmoe.errors import check
from pmoe.layers import PatchMoE, RoutedLayer, TokenMoE

MODES = ("zero", "truncate")


def take_blocks(t: Tensor, dim: int, k: int, kept: Tensor) -> Tensor:
    """The blocks `kept` of the k equal blocks of t along `dim`, in order."""
    return t.unflatten(dim, (k, -1)).index_select(dim, kept).flatten(dim, dim + 1)


def _slice_tensors(module: nn.Module, dim: int, k: int, kept: Tensor, names: Sequence[str] | None = None) -> None:
    """Slice the parameters and buffers `names` (default: all of >= 1 dim) of `module` itself to blocks `kept`."""
    tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
    for name, t in tensors:
        if t.dim() == 0 or (names is not None and name not in names):
            continue
        if isinstance(t, nn.Parameter):
            t.data = take_blocks(t.data, dim, k, kept)
        else:
            setattr(module, name, take_blocks(t, dim, k, kept))


def slice_bank(bank: nn.Module, kept: Tensor) -> None:
    """Keep experts `kept` (k',) of an expert bank in place; sets its `num_experts` and its convs' and BNs' sizes."""
    k = bank.num_experts
    for m in bank.modules():
        _slice_tensors(m, 0, k, kept)
        if isinstance(m, nn.Conv2d):  # grouped conv: one group per expert
            m.groups, m.out_channels, m.in_channels = len(kept), m.weight.shape[0], m.weight.shape[1] * len(kept)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_features = m.weight.shape[0]
    bank.num_experts = len(kept)


def check_kept(layer: RoutedLayer, kept: Sequence[int], mode: str, where: str) -> None:
    """PmoeError unless `kept` is a valid choice of experts to keep in `layer` under `mode`."""
    k, M = layer.num_experts, layer.groups
    check(layer.kept is None and layer.experts.num_experts == k, f"{where} is pruned already; prune the unpruned model")
    check(list(kept) == sorted(set(kept)) and all(0 <= s < k for s in kept),
          f"{where}: kept experts {list(kept)} must be distinct ascending ids in 0..{k - 1}")
    check(1 <= len(kept) <= k - 1, f"{where}: keeping {len(kept)} of {k} experts; expected 1..{k - 1}")
    per_group = [sum(1 for s in kept if s // (k // M) == m) for m in range(M)]
    check(len(set(per_group)) == 1, f"{where}: an E³ layer keeps the same number of experts in each of its {M} "
                                    f"member groups, got {per_group}")
    if mode == "truncate" and isinstance(layer, TokenMoE):
        K = layer.num_selected
        check(per_group[0] >= K, f"{where}: truncate keeps {per_group[0]} experts per routing group, fewer than the "
                                 f"{K} each token picks; keep at least {K * M} or use mode 'zero'")


def prune_layer(layer: PatchMoE | TokenMoE, kept: Sequence[int], mode: str) -> None:
    """Remove every expert of `layer` but `kept` (ascending ids), in place."""
    idx = torch.tensor(list(kept), dtype=torch.long, device=layer.router.weight.device)
    slice_bank(layer.experts, idx)
    if mode == "zero":
        layer.kept = idx
    else:
        _slice_tensors(layer.router, 0, layer.num_experts, idx)
        layer.router.out_features = layer.num_experts = len(kept)


@torch.no_grad()
def _truncate_concat_head(norm: nn.BatchNorm2d, head: nn.Linear, kept: Sequence[int], k: int) -> None:
    """WRN-pMoE: drop the channel blocks of removed experts from BN and head; their eval-mode constant
    ReLU(BN(0)), pooled, goes into the head's bias."""
    gone = torch.tensor([s for s in range(k) if s not in kept], device=head.weight.device)
    kept = torch.tensor(list(kept), device=head.weight.device)
    zero_in = F.relu(norm.bias - norm.running_mean * norm.weight / (norm.running_var + norm.eps).sqrt())  # (k*O,)
    head.bias += take_blocks(head.weight, 1, k, gone) @ take_blocks(zero_in, 0, k, gone)
    _slice_tensors(norm, 0, k, kept)
    _slice_tensors(head, 1, k, kept, names=("weight",))
    norm.num_features, head.in_features = norm.weight.shape[0], head.weight.shape[1]


def check_pruning(model: nn.Module, kept: Sequence[Sequence[int]], mode: str) -> None:
    """PmoeError unless `prune_model(model, kept, mode)` can be done."""
    check(mode in MODES, f"mode must be one of {MODES}, got {mode!r}")
    layers = model.moe_layers()
    check(len(kept) == len(layers), f"{len(kept)} lists of kept experts for the {len(layers)} MoE layers of the model")
    for i, (layer, ids) in enumerate(zip(layers, kept)):
        check_kept(layer, ids, mode, f"MoE layer {i}")


def prune_model(model: nn.Module, kept: Sequence[Sequence[int]], mode: str = "zero") -> nn.Module:
    """Keep experts `kept[i]` (ascending ids) of the i-th routed layer of `model.moe_layers()`; returns `model`.

    Parameters and compute really drop: the banks are sliced. See the module docstring for the two modes.
    """
    check_pruning(model, kept, mode)
    for layer, ids in zip(model.moe_layers(), kept):
        k = layer.num_experts
        prune_layer(layer, ids, mode)
        if mode == "truncate" and layer.combine == "concat":
            _truncate_concat_head(*model.concat_head(), ids, k)
    return model


def pruning_record(kept: Sequence[Sequence[int]], mode: str, num_experts: Sequence[int], **info) -> dict:
    """The `pruning` section of a pruned checkpoint's config.json: what `apply_record` needs, and `info`."""
    return {"mode": mode, "num_experts": list(num_experts), "kept": [list(map(int, ids)) for ids in kept], **info}


def apply_record(model: nn.Module, record: dict) -> nn.Module:
    """Give a model built from an unpruned config the pruned shape that `record` describes (before loading weights)."""
    check(isinstance(record, dict) and "mode" in record and "kept" in record,
          f"the config's 'pruning' section must hold 'mode' and 'kept', got {record!r}")
    counts = [layer.num_experts for layer in model.moe_layers()]
    check(record.get("num_experts", counts) == counts,
          f"the pruning record is for MoE layers of {record.get('num_experts')} experts; the model has {counts}")
    return prune_model(model, record["kept"], record["mode"])
