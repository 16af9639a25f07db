"""pmoe.hf on a tiny random model of every MoE model_type the installed transformers ships, found by iterating over
its config classes (those naming an expert count). Each is built with 8 experts, grouped routing with 2 groups where
the config has it, pruned from 8 to 4 experts per layer, loaded with `from_pretrained` (no missing or unexpected
keys), and compared with the fine-tuned model whose pruned experts' router logits are -inf (a patched F.linear adds
the mask to the router's outputs; score-correction biases of pruned experts are -inf too); it must also generate
the same tokens. Families refused on purpose (`pmoe.hf.adapters.REFUSED`) must be refused before anything is
written; those that cannot be built tiny here are listed in UNBUILDABLE with the reason.
"""
from __future__ import annotations

import contextlib
import re
import warnings

import pytest
import torch
from torch.testing import assert_close

transformers = pytest.importorskip("transformers")
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM  # noqa: E402
from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES  # noqa: E402

from hf_reference import masked_router_logits  # noqa: E402
from pmoe.errors import PmoeError  # noqa: E402
from pmoe.hf import MoeConfig, PruneSpec, prune_checkpoint, prune_model  # noqa: E402
from pmoe.hf.adapters import COUNT_FIELDS, GROUP_FIELDS, NESTED, REFUSED, TOPK_GROUP_FIELDS  # noqa: E402

transformers.logging.set_verbosity_error()
E, KEEP = 8, 4
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
            num_experts_per_tok=2, num_experts_per_token=2, shared_expert_intermediate_size=16,
            expert_ffn_hidden_size=16, moe_shared_expert_intermediate_size=16, kv_lora_rank=16, q_lora_rank=16,
            qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, d_model=32, d_ff=64, num_layers=2,
            num_decoder_layers=2, num_heads=2, d_kv=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, decoder_start_token_id=0, first_k_dense_replace=1,
            encoder_sparse_step=1, decoder_sparse_step=1, attn_layer_offset=1, attn_layer_period=2,
            expert_layer_offset=1, expert_layer_period=2, zero_expert_num=2, mlp_only_layers=[0])
NO_AUTO = "no Auto model class takes this config (a part of a composite model)"
VALIDATOR = "its config validator rejects the generic tiny sizes"
ATTN = "its attention (sparse indexer / latent dims) does not build at the generic tiny sizes"
UNBUILDABLE: dict[str, str] = {  # model_type -> why no tiny model of it is built here
    "deepseek_ocr2_text": NO_AUTO,
    "nemotron_h_omni": NO_AUTO,
    "qwen3_omni_moe_talker_text": NO_AUTO,
    "qwen3_omni_moe_text": NO_AUTO,
    "step3p5": NO_AUTO,
    "unlimited_ocr_text": NO_AUTO,
    "glm5_next_text": VALIDATOR,
    "granitemoehybrid": VALIDATOR,
    "hy_v4_vl": VALIDATOR,
    "hy_v4_vl_text": VALIDATOR,
    "inkling2": VALIDATOR,
    "inkling2_loop": VALIDATOR,
    "mistral_large4": VALIDATOR,
    "mistral_large4_text": VALIDATOR,
    "nemo_speechlm": VALIDATOR,
    "zaya": VALIDATOR,
    "axk2": ATTN,
    "deepseek_v32": ATTN,
    "glm_moe_dsa": ATTN,
    "hy_v4": ATTN,
    "mistral4": ATTN,
    "longcat_flash": ATTN,
    "dots3_note": "heterogeneous per-layer config: global sizes cannot be set",
    "dots3_note_text": "heterogeneous per-layer config: global sizes cannot be set",
    "dots3_note_vision_encoder": "heterogeneous per-layer config: global sizes cannot be set",
    "ernie4_5_vl_moe": "moe_intermediate_size is a per-modality list",
    "ernie4_5_vl_moe_text": "moe_intermediate_size is a per-modality list",
    "glm4v_moe": "its mrope sections are fixed to the default head size",
    "glm4v_moe_text": "its mrope sections are fixed to the default head size",
    "inkling2_text": "its vocabulary layout needs the default vocab size",
    "inkling2_loop_text": "its vocabulary layout needs the default vocab size",
    "inkling_mm_model": "needs scipy, which is not installed",
    "dbrx": "its attention sub-config loses rope_theta when shrunk generically",
    "hunyuan_v1_moe": "its dynamic-alpha rope needs rope parameters the tiny config leaves unset",
    "step3p7": "its tiny vision config does not survive save_pretrained (fc2 width is recomputed)",
    "deepseek_ocr2": "its vision encoder needs the default image sizes",
    "kimi_linear": "its linear-attention cache fails at two layers",
    "lfm2_moe": "its layer_types default is None and the tiny layer pattern is not derivable",
    "nemotron_h": "its hybrid layer pattern string is not cut generically (no MoE layer in two layers)",
    "qwen4_exp": "needs linear-attention head sizes the generic tiny config leaves unset",
    "qwen4_exp_text": "needs linear-attention head sizes the generic tiny config leaves unset",
    "minimax_m3_vl": "over 50M parameters even with tiny text sizes (vision defaults)",
    "muse_spark": "over 50M parameters even with tiny text sizes (vision defaults)",
    "glm5_next": "over 50M parameters even with tiny text sizes (vision defaults)",
}
ROUTER = re.compile(r".*\.(?:gate|router|classifier|wg)(?:\.\w+)*\.weight")
BIAS = re.compile(r"(?:e_score_correction_bias|expert_bias)$")
INPUT = torch.tensor([[5, 9, 3, 17, 40, 22, 8], [1, 60, 33, 12, 7, 7, 51]])


def moe_types() -> list[str]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model_type in sorted(CONFIG_MAPPING_NAMES):
            with contextlib.suppress(Exception):
                config = CONFIG_MAPPING[model_type]().to_dict()
                if any(isinstance(c, dict) and isinstance(c.get(f), int) and (c[f] > 1 or "moe" in model_type)
                       for c in (config, *map(config.get, NESTED)) for f in COUNT_FIELDS):
                    out.append(model_type)
    return out


def shrink(config, groups: bool = True):
    """Tiny sizes, 8 experts, 2 expert groups of which a token uses 1 (if the config groups experts)."""
    layers = getattr(config, "num_hidden_layers", None)
    for name, value in config.to_dict().items():  # per-layer lists (layer_types) cut to the tiny depth
        if isinstance(value, list) and layers and len(value) == layers and not name.endswith("_layers"):
            setattr(config, name, [value[0], value[-1]])  # often dense/linear first, sparse/full last
    for name, value in TINY.items():
        if getattr(config, name, None) is not None:
            with contextlib.suppress(AttributeError):  # read-only properties
                setattr(config, name, value)
    if "num_experts_per_tok" in config.to_dict():
        config.num_experts_per_tok = TINY["num_experts_per_tok"]
    for name in COUNT_FIELDS:
        if isinstance(getattr(config, name, None), int):
            setattr(config, name, E)
    if getattr(config, "qk_rope_head_dim", None):
        config.head_dim = config.qk_rope_head_dim  # multi-head latent attention: rotary part
    for fields, value in ((GROUP_FIELDS, 2), (TOPK_GROUP_FIELDS, 1)):
        for name in fields:
            if name in config.to_dict() and groups:
                setattr(config, name, value)
    for sub in config.sub_configs:
        if isinstance(getattr(config, sub, None), transformers.PreTrainedConfig):
            shrink(getattr(config, sub), groups)
    return config


def build(model_type: str):
    torch.manual_seed(0)
    config = shrink(CONFIG_MAPPING[model_type]())
    if config.is_encoder_decoder:
        config.decoder_start_token_id = 0
    model = None
    for auto in (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModel):
        with contextlib.suppress(ValueError):
            model = model or auto.from_config(config)
    if model is None:  # as UNBUILDABLE's NO_AUTO, in other transformers versions
        pytest.skip(f"{NO_AUTO} in transformers {transformers.__version__}")
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
    biases = [t for n, t in model.state_dict(keep_vars=True).items() if BIAS.search(n)]
    saved = [b.detach().clone() for b in biases]
    if biases:  # a score-correction bias must not lift a pruned expert back into the top-K
        assert len(biases) == len(kept)
        with torch.no_grad():
            for b, ids in zip(biases, kept):
                mask = torch.ones(b.shape[-1], dtype=torch.bool)
                mask[ids] = False
                mask[E:] = False
                b[..., mask] = float("-inf")
    try:
        with masked_router_logits(routers(model), kept, extra_from=E):  # zero-compute experts stay
            yield
    finally:
        with torch.no_grad():
            for b, v in zip(biases, saved):
                b.copy_(v)


def run(model, generate: bool = False):
    extra = {"decoder_input_ids": INPUT[:, :4]} if model.config.is_encoder_decoder else {}
    with torch.no_grad():
        if generate:
            return model.generate(INPUT, max_new_tokens=3, do_sample=False, use_cache=False)
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
        with pytest.raises(PmoeError, match=f"model_type '{model_type}' is not supported: "):
            prune_checkpoint(tmp_path / "base", tmp_path / "ft", tmp_path / "out", PruneSpec(keep=KEEP))
        assert not (tmp_path / "out").exists()
        return
    report = prune_checkpoint(tmp_path / "base", tmp_path / "ft", tmp_path / "out", PruneSpec(keep=KEEP))
    kept = [layer.kept for layer in report.layers]
    assert len(kept) == len(routers(ft)) and all(len(k) == KEEP for k in kept)
    moe = MoeConfig.read(ft.config.to_dict())
    if moe.num_groups == 2 and set(moe.topk_group.values()) == {1}:  # grouped: two kept in each group of four
        assert report.groups == 2 and all(sum(e < E // 2 for e in k) == KEEP // 2 for k in kept)
    pruned, info = type(ft).from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    pruned.eval()
    with masked_routers(ft, kept):
        ref = run(ft)
        ref_tokens = run(ft, generate=True) if ft.can_generate() else None
    assert_close(run(pruned), ref)
    if ref_tokens is not None:
        assert torch.equal(run(pruned, generate=True), ref_tokens)



@pytest.mark.parametrize("model_type", ["deepseek_v3", "gpt_oss", "kolibri1", "llama4_text"])
def test_in_memory_pruning_matches_masked_reference(model_type):
    """`prune_model` reads the in-memory layout (fused experts, buffers) by the same discovery."""
    base = build(model_type)
    ft = finetune(base)
    pruned, report = prune_model(base, ft, PruneSpec(keep=KEEP))
    kept = [layer.kept for layer in report.layers]
    with masked_routers(ft, kept):
        ref = run(ft)
    assert_close(run(pruned.eval()), ref)
