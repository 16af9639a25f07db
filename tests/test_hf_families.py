"""pmoe.hf on a tiny random model of every MoE model_type the installed transformers ships, found by iterating over
its config classes (those naming an expert count). Each is built with 8 experts, grouped routing with 2 groups where
the config has it, pruned from 8 to 4 experts per layer, loaded with `from_pretrained` (no missing or unexpected
keys), and compared with the fine-tuned model whose pruned experts' router logits are -inf (a patched F.linear adds
the mask to the router's outputs); it must also generate the same tokens. Families refused on purpose are listed
in REFUSED with the reason; those that cannot be built tiny here in UNBUILDABLE.
"""
from __future__ import annotations

import contextlib
import re
import warnings
from unittest import mock

import pytest
import torch
from torch.testing import assert_close

transformers = pytest.importorskip("transformers")
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM  # noqa: E402
from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES  # noqa: E402

from pmoe.errors import PmoeError  # noqa: E402
from pmoe.hf import MoeConfig, PruneSpec, prune_checkpoint  # noqa: E402
from pmoe.hf.adapters import COUNT_FIELDS, GROUP_FIELDS, TOPK_GROUP_FIELDS  # noqa: E402

transformers.logging.set_verbosity_error()
E, KEEP = 8, 4
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
            num_experts_per_tok=2, num_experts_per_token=2, shared_expert_intermediate_size=16,
            expert_ffn_hidden_size=16, moe_shared_expert_intermediate_size=16, kv_lora_rank=16, q_lora_rank=16,
            qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, d_model=32, d_ff=64, num_layers=2,
            num_decoder_layers=2, num_heads=2, d_kv=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, decoder_start_token_id=0)
UNBUILDABLE: dict[str, str] = {}
REFUSED: dict[str, str] = {}
ROUTER = re.compile(r".*\.(?:gate|router|classifier|wg)(?:\.\w+)*\.weight")
INPUT = torch.tensor([[5, 9, 3, 17, 40, 22, 8], [1, 60, 33, 12, 7, 7, 51]])


def moe_types() -> list[str]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model_type in sorted(CONFIG_MAPPING_NAMES):
            with contextlib.suppress(Exception):
                MoeConfig.read(CONFIG_MAPPING[model_type]().to_dict())
                out.append(model_type)
    return out


def shrink(config, groups: bool = True):
    """Tiny sizes, 8 experts, 2 expert groups of which a token uses 1 (if the config groups experts)."""
    for name, value in TINY.items():
        if getattr(config, name, None) is not None:
            setattr(config, name, value)
    for name in COUNT_FIELDS:
        if isinstance(getattr(config, name, None), int):
            setattr(config, name, E)
    for fields, value in ((GROUP_FIELDS, 2), (TOPK_GROUP_FIELDS, 1)):
        for name in fields:
            if name in config.to_dict() and groups:
                setattr(config, name, value)
    text = getattr(config, "text_config", None)
    if text is not None and not isinstance(text, dict):
        shrink(text, groups)
    return config


def build(model_type: str):
    torch.manual_seed(0)
    config = shrink(CONFIG_MAPPING[model_type]())
    for auto in (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModel):
        with contextlib.suppress(ValueError):
            model = auto.from_config(config)
            break
    with torch.no_grad():
        for w in routers(model):
            w.normal_()  # decisive routing
    return model.eval()


def routers(model) -> list[torch.Tensor]:
    """The in-memory router weights [rows, hidden], in natural key order."""
    key = lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]  # noqa: E731
    named = dict(model.named_parameters())
    return [named[n] for n in sorted(named, key=key)
            if ROUTER.fullmatch(n) and "shared" not in n and named[n].dim() == 2 and named[n].shape[0] >= E
            and not re.search(r"vision|visual|audio", n)]


def finetune(model):
    ft = type(model)(model.config).eval()
    ft.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for i, w in enumerate(routers(ft)):
            w[[i % E, (i + 5) % E]] *= 3.0
    return ft


@contextlib.contextmanager
def masked_routers(model, kept: list[list[int]]):
    masks = {}
    for w, ids in zip(routers(model), kept):
        masks[id(w)] = torch.full((w.shape[0],), float("-inf"))
        masks[id(w)][ids] = 0.0
        masks[id(w)][E:] = 0.0  # zero-compute experts stay
    linear = torch.nn.functional.linear

    def masked_linear(x, weight, bias=None):
        y = linear(x, weight, bias)
        return y + masks[id(weight)].to(y.dtype) if id(weight) in masks else y

    with mock.patch("torch.nn.functional.linear", masked_linear):
        yield


def run(model, generate: bool = False):
    extra = {"decoder_input_ids": INPUT[:, :4]} if model.config.is_encoder_decoder else {}
    with torch.no_grad():
        if generate:
            return model.generate(INPUT, max_new_tokens=3, do_sample=False)
        out = model(INPUT, **extra)
        return out.logits if "logits" in out else out.last_hidden_state


@pytest.mark.parametrize("model_type", moe_types())
def test_family_pruned_to_4_of_8_matches_masked_reference(tmp_path, model_type):
    if model_type in UNBUILDABLE:
        pytest.skip(UNBUILDABLE[model_type])
    base = build(model_type)
    ft = finetune(base)
    base.save_pretrained(tmp_path / "base")
    ft.save_pretrained(tmp_path / "ft")
    if model_type in REFUSED:
        with pytest.raises(PmoeError, match=REFUSED[model_type]):
            prune_checkpoint(tmp_path / "base", tmp_path / "ft", tmp_path / "out", PruneSpec(keep=KEEP))
        assert not (tmp_path / "out").exists()
        return
    report = prune_checkpoint(tmp_path / "base", tmp_path / "ft", tmp_path / "out", PruneSpec(keep=KEEP))
    kept = [layer.kept for layer in report.layers]
    assert len(kept) == len(routers(ft)) and all(len(k) == KEEP for k in kept)
    pruned, info = type(ft).from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    pruned.eval()
    with masked_routers(ft, kept):
        ref = run(ft)
        ref_tokens = run(ft, generate=True) if ft.can_generate() else None
    assert_close(run(pruned), ref)
    if ref_tokens is not None:
        assert torch.equal(run(pruned, generate=True), ref_tokens)
