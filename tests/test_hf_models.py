"""pmoe.hf against real tiny transformers models of every family, built from configs (random weights, no downloads).

The reference for truncate semantics is the fine-tuned model itself with the pruned experts' router logits set to
-inf (a patched F.linear adds the mask to the outputs of the router weights), and the kept experts chosen here from
the in-memory router weights.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402
from transformers import (AutoModelForCausalLM, MixtralConfig, OlmoeConfig, Qwen2MoeConfig,  # noqa: E402
                          Qwen3MoeConfig, SwitchTransformersConfig, SwitchTransformersForConditionalGeneration)

from pmoe.hf import PruneSpec, prune_checkpoint, prune_model  # noqa: E402
from hf_reference import masked_router_logits  # noqa: E402

transformers.logging.set_verbosity_error()
COMMON = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
MOE = dict(num_experts=6, num_experts_per_tok=2)
CONFIGS = {
    "mixtral": lambda: MixtralConfig(**COMMON, num_local_experts=6, num_experts_per_tok=2),
    "qwen2_moe": lambda: Qwen2MoeConfig(**COMMON, **MOE, moe_intermediate_size=8, shared_expert_intermediate_size=16,
                                        mlp_only_layers=[0], norm_topk_prob=True),
    "qwen3_moe": lambda: Qwen3MoeConfig(**COMMON, **MOE, moe_intermediate_size=8, norm_topk_prob=True),
    "olmoe": lambda: OlmoeConfig(**COMMON, **MOE),
    "switch_transformers": lambda: SwitchTransformersConfig(
        vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2, num_experts=6,
        encoder_sparse_step=2, decoder_sparse_step=1, router_bias=True, decoder_start_token_id=0),
}
ROUTER = re.compile(r".*\.(?:gate|router\.classifier)\.weight")  # router weights of the in-memory modules
INPUT = torch.tensor([[5, 9, 3, 17, 40, 22, 8], [1, 60, 33, 12, 7, 7, 51]])


def build(family: str, seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    model = (SwitchTransformersForConditionalGeneration(config) if family == "switch_transformers"
             else AutoModelForCausalLM.from_config(config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ROUTER.fullmatch(name):
                p.normal_()  # decisive routing
    return model.eval()


def routers(model) -> list[torch.Tensor]:
    """Router weights `[k, d]` in natural key order (the order of the report's layers)."""
    key = lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]  # noqa: E731
    named = dict(model.named_parameters())
    return [named[n] for n in sorted(named, key=key) if ROUTER.fullmatch(n)]


def finetune(model, grow: dict[int, list[int]] | None = None):
    """A 'fine-tuned' copy: every weight perturbed; router rows `grow[layer]` scaled up by 3."""
    ft = copy.deepcopy(model)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for i, ids in (grow or {}).items():
            routers(ft)[i][ids] *= 3.0
    return ft


def expected_kept(base, ft, keep: int) -> list[list[int]]:
    """Kept experts by the signed router-norm change, computed from the in-memory weights."""
    deltas = [f.detach().norm(dim=1) - b.detach().norm(dim=1) for b, f in zip(routers(base), routers(ft))]
    return [sorted(d.argsort(descending=True)[:keep].tolist()) for d in deltas]


def masked_routers(model, kept: list[list[int]]):
    """Inside: the router logits of experts outside `kept` are -inf (so softmax/top-K run over the kept ones)."""
    return masked_router_logits(routers(model), kept)


def run(model, generate: bool = False) -> torch.Tensor:
    extra = {"decoder_input_ids": INPUT[:, :4]} if model.config.is_encoder_decoder else {}
    with torch.no_grad():
        if generate:
            return model.generate(INPUT, max_new_tokens=3, do_sample=False)
        return model(INPUT, **extra).logits


def save(model, folder: Path, sharded: bool) -> Path:
    model.save_pretrained(folder, max_shard_size="12KB" if sharded else "1GB")
    assert sharded == (folder / "model.safetensors.index.json").exists()
    return folder


def assert_matches_reference(pruned, ft, kept: list[list[int]]) -> None:
    with masked_routers(ft, kept):
        ref_logits, ref_tokens = run(ft), run(ft, generate=True)
    assert_close(run(pruned), ref_logits)
    assert torch.equal(run(pruned, generate=True), ref_tokens)


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_pruned_checkpoint_loads_and_matches_masked_router_reference(tmp_path, family, sharded):
    base = build(family)
    ft = finetune(base)
    save(base, tmp_path / "base", sharded)
    save(ft, tmp_path / "ft", sharded)
    report = prune_checkpoint(tmp_path / "base", tmp_path / "ft", tmp_path / "out", PruneSpec(keep=3))
    kept = expected_kept(base, ft, 3)
    assert [layer.kept for layer in report.layers] == kept
    assert len(kept) == {"qwen2_moe": 1, "switch_transformers": 3}.get(family, 2)
    cls = type(ft)
    pruned, info = cls.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert (pruned.config.num_local_experts if family == "mixtral" else pruned.config.num_experts) == 3
    assert json.loads((tmp_path / "out" / "generation_config.json").read_text()) == \
        json.loads((tmp_path / "ft" / "generation_config.json").read_text())
    assert_matches_reference(pruned.eval(), ft, kept)
    assert report.parameters[1] == sum(p.numel() for p in pruned.parameters())


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_keep_below_top_k_clamps_it(tmp_path, family):
    base = build(family)
    ft = finetune(base)
    report = prune_checkpoint(save(base, tmp_path / "base", False), save(ft, tmp_path / "ft", False),
                              tmp_path / "out", PruneSpec(keep=1))
    assert report.config_changes["num_experts_per_tok"] == 1
    pruned = type(ft).from_pretrained(tmp_path / "out").eval()
    assert pruned.config.num_experts_per_tok == 1
    assert_matches_reference(pruned, ft, expected_kept(base, ft, 1))


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_planted_router_growth_is_kept(tmp_path, family):
    base = build(family, seed=1)
    n_layers = len(routers(base))
    planted = {i: [(2 * i + 1) % 6, (2 * i + 4) % 6] for i in range(n_layers)}
    ft = finetune(base, grow=planted)
    report = prune_checkpoint(save(base, tmp_path / "base", True), save(ft, tmp_path / "ft", True),
                              tmp_path / "out", PruneSpec(ratio=2 / 3))
    assert [layer.kept for layer in report.layers] == [sorted(planted[i]) for i in range(n_layers)]


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_prune_model_in_memory_equals_checkpoint_pruning(tmp_path, family):
    base = build(family)
    ft = finetune(base)
    pruned, report = prune_model(base, ft, PruneSpec(keep=3))
    kept = expected_kept(base, ft, 3)
    assert [layer.kept for layer in report.layers] == kept
    assert_matches_reference(pruned, ft, kept)
    prune_checkpoint(save(base, tmp_path / "base", False), save(ft, tmp_path / "ft", False), tmp_path / "out",
                     PruneSpec(keep=3))
    loaded = type(ft).from_pretrained(tmp_path / "out").state_dict()
    mine = pruned.state_dict()
    assert mine.keys() == loaded.keys()
    for key in mine:
        assert_close(mine[key], loaded[key], rtol=0, atol=0)
    assert pruned.get_output_embeddings().weight is pruned.get_input_embeddings().weight or \
        not ft.config.tie_word_embeddings
    assert report.parameters[1] < report.parameters[0] and report.size_bytes[1] < report.size_bytes[0]
    routers_only = {k: v for k, v in base.state_dict().items() if ROUTER.fullmatch(k)}
    assert [layer.kept for layer in prune_model(routers_only, ft, PruneSpec(keep=3))[1].layers] == kept


def test_fused_expert_tensors_on_disk(tmp_path):
    """Checkpoints stored with the fused in-memory layout (`experts.gate_up_proj` [E, ...]) are sliced on dim 0."""
    base = build("mixtral")
    ft = finetune(base)
    for name, model in (("base", base), ("ft", ft)):
        (tmp_path / name).mkdir()
        model.config.save_pretrained(tmp_path / name)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / name / "model.safetensors",
                  metadata={"format": "pt"})
    report = prune_checkpoint(tmp_path / "base", tmp_path / "ft", tmp_path / "out", PruneSpec(keep=3))
    kept = expected_kept(base, ft, 3)
    assert [layer.kept for layer in report.layers] == kept
    pruned = type(ft).from_pretrained(tmp_path / "out").eval()
    assert_close(pruned.model.layers[1].mlp.experts.gate_up_proj, ft.model.layers[1].mlp.experts.gate_up_proj[kept[1]],
                 rtol=0, atol=0)
    assert_matches_reference(pruned, ft, kept)
