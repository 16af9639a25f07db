"""pmoe.hf on a tiny random model of every MoE model_type the installed transformers ships, found by iterating over
its config classes (those naming an expert count). Each is built with 8 experts, grouped routing with 2 groups where
the config has it, pruned from 8 to 4 experts per layer, loaded with `from_pretrained` (no missing or unexpected
keys), and compared with the fine-tuned model whose pruned experts' router logits are -inf (a patched F.linear adds
the mask to the router's outputs; score-correction biases of pruned experts are -inf too); it must also generate
the same tokens. Families refused on purpose (`pmoe.hf.adapters.REFUSED`) must be refused before anything is
written. Families whose config the generic tiny sizes do not fit get FAMILY_OVERRIDES (validators, derived dims,
layer patterns); those that cannot be built tiny here are listed in UNBUILDABLE with the reason.
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
MAX_PARAMS = 10_000_000  # keeps the whole file within CI time
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
MIXED = "two kinds"  # layer_types: the default pattern's first layer kind, then its first other kind
MLA = dict(num_key_value_heads=2, qk_head_dim=16)  # latent attention: kv heads = heads, qk_head_dim is derived
FAMILY_OVERRIDES: dict[str, dict] = {  # model_type (of the config or sub-config) -> fields set after shrinking
    "zaya": dict(num_experts_per_tok=1),  # validator: top-1 only (refused, built to check the refusal)
    "glm5_next_text": dict(num_key_value_heads=2, qk_rope_head_dim=0,  # validator: kv heads = heads, no RoPE (DSA)
                           layer_types=MIXED),  # its cache needs an attention layer (named per version)
    "hy_v4_vl_text": dict(MLA, rope_parameters=dict(mrope_section=[2, 1, 1])),  # validator: sum qk_rope_head_dim/2
    "mistral_large4_text": dict(MLA, kv_source_layers=[0, 1]),  # validator: one entry per layer
    "granitemoehybrid": dict(mamba_n_heads=4, mamba_d_head=16,  # validator: heads * head size = 2 * hidden
                             layer_types=["linear_attention", "full_attention"]),  # its cache needs an attention layer
    "nemotron_h": dict(layers_block_type=["full_attention", "moe"]),  # the default pattern's 2 first have no MoE
    "kimi_linear": dict(layer_types=["linear_attention", "full_attention"]),  # its cache needs an attention layer
    "lfm2_moe": dict(layer_types=["conv", "full_attention"], num_dense_layers=1),  # no default pattern
    "ernie4_5_vl_moe_text": dict(moe_intermediate_size=[16, 16],  # one per modality (refused, built to check)
                                 rope_parameters=dict(mrope_section=[3, 3, 2])),  # sums to head_dim / 2
    "mistral4": dict(MLA, rope_parameters=dict(partial_rotary_factor=1.0)),  # all of head_dim = qk_rope_head_dim
    "glm4v_moe_text": dict(rope_parameters=dict(mrope_section=[2, 1, 1])),  # sums to the rotary half (16 * 0.5 / 2)
    "hunyuan_v1_moe": dict(head_dim=16),  # default None, read as is
    "dbrx": {"attn_config.rope_theta": 10000.0,  # read from the attention sub-config, which has no such field
             "attn_config.clip_qkv": 8.0,  # None breaks torch.clamp
             "ffn_config.ffn_hidden_size": 16},  # not a generic tiny field
    "qwen4_exp_text": dict(indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=16,  # its sparse-attention
                           indexer_budget=8, indexer_compress_ratio=4),  # indexer has no defaults
    "deepseek_ocr2_text": dict(mlp_layer_types=["dense", "sparse"]),  # default None, read as a list
    "step3p5_vision": dict(mlp_ratio=2.0),  # intermediate_size (64) is recomputed from it on loading
    "step3p5": dict(sliding_window=4),  # default None, but its layer pattern has sliding-window layers
    "inkling2_text": dict(unpadded_vocab_size=64),  # the head's width, padded to vocab_size
    "inkling2_loop_text": dict(unpadded_vocab_size=64),
    "inkling2_vision": dict(text_hidden_size=32),  # validator: the text model's hidden size
    "glm4v_moe_vision": dict(out_hidden_size=32),  # its merger, 17M by default
    "glm5_next_vision": dict(out_hidden_size=32, projection_intermediate_size=64),  # its merger, 50M by default
    "minimax_m3_vl": dict(projector_hidden_size=32, merged_hidden_size=128),  # its projector, 150M by default
    "muse_spark": dict(out_hidden_size=32, projector_hidden_size=32),  # its vision adapter, 40M by default
    "muse_spark_text": dict(moe_hidden_size=16),  # its experts' width
    "muse_spark_audio": dict(out_hidden_size=32, hidden_sizes=[16, 32]),  # its tower, 70M by default
    # nemo_speechlm: its audio encoders load a saved fused qkv in three equal chunks (as many kv heads as heads);
    # its diarization head's audio_hidden_size is not saved (512 on loading), so that encoder stays 512 wide
    "nemotron3_diarization_audio": dict(hidden_size=512, num_key_value_heads=2),
    "nemotron3_5_transcribe_asr_audio": dict(num_key_value_heads=2),
    "nemotron3_5_transcribe_word_timestamp": dict(num_key_value_heads=2, blank_token_id=63),  # validator: < vocab
    "axk2": MLA,  # these latent-attention families: see MLA
    "deepseek_v32": MLA,
    "glm_moe_dsa": MLA,
    "hy_v4": MLA,
    "longcat_flash": MLA,
    "dots3_note_text": dict(MLA, rope_parameters=dict(indexed_attention=dict(  # the rotary fraction is recomputed
        rope_type="default", rope_theta=8e7, partial_rotary_factor=1.0))),  # as qk_rope_head_dim / head_dim on loading
}
NO_AUTO = "no Auto model class takes this config (a part of a composite model)"
UNBUILDABLE: dict[str, str] = {  # model_type -> why no tiny model of it is built here
    "deepseek_ocr2_text": NO_AUTO,
    "nemotron_h_omni": NO_AUTO,
    "qwen3_omni_moe_talker_text": NO_AUTO,
    "qwen3_omni_moe_text": NO_AUTO,
    "step3p5": NO_AUTO,
    "unlimited_ocr_text": NO_AUTO,
    "ernie4_5_vl_moe_text": NO_AUTO,
    "dots3_note_vision_encoder": NO_AUTO,
    "inkling_mm_model": "needs scipy (no dependency of pmoe); with it, 64M parameters with its vision defaults",
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
    if getattr(config, "is_heterogeneous", False):  # per-layer sizes (transformers >= 5.2x): one global size
        config.per_layer_config = None
    layers = getattr(config, "num_hidden_layers", None)
    overrides = FAMILY_OVERRIDES.get(config.model_type, {})
    for name, value in config.to_dict().items():  # per-layer lists (layer_types) cut to the tiny depth
        if isinstance(value, list) and layers and len(value) == layers and not name.endswith("_layers"):
            last = next(v for v in value if v != value[0]) if overrides.get(name) == MIXED else value[-1]
            setattr(config, name, [value[0], last])  # often dense/linear first, sparse/full last
    for name, value in TINY.items():
        if getattr(config, name, None) is not None and name not in overrides:
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
    for name, value in overrides.items():  # "sub.field" sets a sub-config's field; a dict updates the config's dict
        if value == MIXED:
            continue
        path, _, leaf = name.rpartition(".")
        target = getattr(config, path) if path else config
        current = getattr(target, leaf, None)
        setattr(target, leaf, {**current, **value} if isinstance(current, dict) else value)
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
    assert sum(p.numel() for p in model.parameters()) < MAX_PARAMS, "shrink it further (FAMILY_OVERRIDES)"
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
    if model_type not in CONFIG_MAPPING_NAMES:  # kolibri1 is newer than transformers 5.17
        pytest.skip(f"no {model_type} in transformers {transformers.__version__}")
    base = build(model_type)
    ft = finetune(base)
    pruned, report = prune_model(base, ft, PruneSpec(keep=KEEP))
    kept = [layer.kept for layer in report.layers]
    with masked_routers(ft, kept):
        ref = run(ft)
    assert_close(run(pruned.eval()), ref)
