"""pmoe.hf without transformers: criteria, key roles, the streaming writer, and checkpoint pruning of hand-made
Mixtral-layout checkpoints (values, sharding, planted routers, and every user error)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from pmoe.cli import main
from pmoe.errors import PmoeError
from pmoe.hf import MoeConfig, PruneSpec, discover, prune_checkpoint
from pmoe.hf.checkpoint import runs
from pmoe.hf.writer import OutTensor, write_safetensors
from pmoe.prune.criteria import delta_scores, random_scores, router_norm_scores, select_kept


def fake_checkpoint(folder: Path, k: int = 6, layers: int = 2, hidden: int = 8, inter: int = 4, seed: int = 0,
                    model_type: str = "mixtral", shards: int = 1, drop: tuple[str, ...] = (),
                    router_scale: dict[tuple[int, int], float] | None = None) -> dict[str, torch.Tensor]:
    """A Mixtral-layout checkpoint of random bf16 tensors; `router_scale[(layer, expert)]` scales a router row."""
    g = torch.Generator().manual_seed(seed)
    t = {"model.embed_tokens.weight": torch.randn(16, hidden, generator=g).bfloat16()}
    for i in range(layers):
        moe = f"model.layers.{i}.block_sparse_moe"
        t[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(hidden, hidden, generator=g).bfloat16()
        t[f"{moe}.gate.weight"] = torch.randn(k, hidden, generator=g).bfloat16()
        for e in range(k):
            for w, shape in (("w1", (inter, hidden)), ("w2", (hidden, inter)), ("w3", (inter, hidden))):
                t[f"{moe}.experts.{e}.{w}.weight"] = torch.randn(*shape, generator=g).bfloat16()
    for (i, e), s in (router_scale or {}).items():
        t[f"model.layers.{i}.block_sparse_moe.gate.weight"][e] *= s
    t = {key: v for key, v in t.items() if key not in drop}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "num_local_experts": k,
                                                    "num_experts_per_tok": 2, "hidden_size": hidden}))
    (folder / "tokenizer.json").write_text("{}")
    keys = sorted(t)
    if shards == 1:
        save_file(t, folder / "model.safetensors", metadata={"format": "pt"})
        return t
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[s::shards]
        save_file({key: t[key] for key in part}, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 0},
                                                                     "weight_map": weight_map}))
    return t


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in folder.glob("*.safetensors"):
        out.update(load_file(f))
    return out


# ---- criteria, key roles, writer -------------------------------------------------------------------------------

def test_criteria_match_explicit_norms():
    base, ft = torch.randn(5, 7), torch.randn(5, 7)
    norm = lambda w: torch.tensor([math.sqrt(sum(x * x for x in row.tolist())) for row in w])  # noqa: E731
    assert_close(delta_scores(base, ft), norm(ft) - norm(base))
    assert_close(router_norm_scores(base, ft), norm(ft))
    a = random_scores(base, ft, torch.Generator().manual_seed(3))
    assert_close(a, random_scores(base, ft, torch.Generator().manual_seed(3)))
    assert a.shape == (5,)


def test_select_kept_takes_largest_and_breaks_ties_by_lower_id():
    assert select_kept(torch.tensor([0.1, 3.0, -2.0, 3.0, 0.5]), 3) == [1, 3, 4]
    assert select_kept(torch.tensor([1.0, 1.0, 1.0]), 2) == [0, 1]


def test_discovered_roles():
    moe = MoeConfig.read({"model_type": "x", "text_config": {"num_local_experts": 4, "hidden_size": 8}})
    assert (moe.path, moe.num_experts) == ("text_config", 4)
    assert moe.field("num_local_experts") == "text_config.num_local_experts"
    blk = "model.language_model.layers.0.mlp"
    shapes = {f"{blk}.gate.weight": (4, 8), f"{blk}.gate.e_score_correction_bias": (4,),
              f"{blk}.moe_statics.e_score_correction_bias": (1, 4), f"{blk}.experts.gate_up_proj": (4, 6, 8),
              f"{blk}.shared_experts.up_proj.weight": (4, 8), "model.layers.1.mlp.gate_proj.weight": (4, 8),
              "model.visual.blocks.0.mlp.gate.weight": (4, 8),
              **{f"{blk}.experts.{e}.w2.weight": (8, 3) for e in range(4)}}
    layout = discover(moe, shapes)
    assert layout.blocks == [blk] and layout.routers == {blk: f"{blk}.gate.weight"}
    roles = {k: (r.kind, r.axis, r.expert) for k, r in layout.roles.items()}
    assert roles == {f"{blk}.gate.weight": ("router", 0, -1), f"{blk}.gate.e_score_correction_bias": ("sliced", 0, -1),
                     f"{blk}.moe_statics.e_score_correction_bias": ("sliced", 1, -1),
                     f"{blk}.experts.gate_up_proj": ("sliced", 0, -1),
                     **{f"{blk}.experts.{e}.w2.weight": ("expert", 0, e) for e in range(4)}}
    for bad, message in [({f"{blk}.experts.down_proj": (6, 4, 4)}, r"with 4 \(the expert count\) at axis \[1, 2\]"),
                         ({f"{blk}.experts.down_proj": (6, 3)}, "sits under experts; expected the expert axis"),
                         ({"model.layers.2.mlp.experts.0.w1.weight": (3, 8)}, "outside any MoE block"),
                         ({f"{blk}.experts.4.w2.weight": (8, 3)}, "names expert 4; expected ids below 4")]:
        with pytest.raises(PmoeError, match=message):
            discover(moe, {**shapes, **bad})
    with pytest.raises(PmoeError, match=r"experts.\{e\}.w2.weight is missing for experts \[2\]"):
        discover(moe, {k: v for k, v in shapes.items() if k != f"{blk}.experts.2.w2.weight"})


def test_runs_groups_consecutive_rows():
    assert runs([0, 1, 3, 5, 6, 7]) == [(0, 2), (3, 4), (5, 8)]
    assert runs([]) == []


def test_streaming_writer_matches_safetensors(tmp_path):
    tensors = {"a": torch.randn(6, 3).bfloat16(), "b": torch.arange(5), "c": torch.tensor(2.5), "d": torch.ones(0, 4),
               "e": torch.randn(2, 2, 2)}
    pieces = {"a": lambda: (tensors["a"][:2], tensors["a"][2:]), "e": lambda: tensors["e"].unbind(0)}
    out = [OutTensor(k, {torch.bfloat16: "BF16", torch.int64: "I64", torch.float32: "F32"}[v.dtype], tuple(v.shape),
                     pieces.get(k, lambda v=v: [v])) for k, v in tensors.items()]
    size = write_safetensors(tmp_path / "x.safetensors", out, {"format": "pt"})
    assert size == (tmp_path / "x.safetensors").stat().st_size
    loaded = load_file(tmp_path / "x.safetensors")
    for k, v in tensors.items():
        assert_close(loaded[k], v, rtol=0, atol=0)


# ---- checkpoint pruning: values and planted routers ---------------------------------------------------------------

@pytest.mark.parametrize("shards", [1, 3])
def test_pruned_tensors_are_the_kept_slices(tmp_path, shards):
    base = fake_checkpoint(tmp_path / "base", seed=0)
    ft = fake_checkpoint(tmp_path / "ft", seed=1, shards=shards)
    report = prune_checkpoint(tmp_path / "base", tmp_path / "ft", tmp_path / "out", PruneSpec(keep=4))
    out = load_folder(tmp_path / "out")
    assert len(list((tmp_path / "out").glob("*.safetensors"))) == shards
    for i in range(2):
        moe = f"model.layers.{i}.block_sparse_moe"
        delta = ft[f"{moe}.gate.weight"].float().norm(dim=1) - base[f"{moe}.gate.weight"].float().norm(dim=1)
        kept = sorted(delta.argsort(descending=True)[:4].tolist())
        assert report.layers[i].kept == kept
        assert_close(torch.tensor(report.layers[i].delta), delta)
        assert_close(out[f"{moe}.gate.weight"], ft[f"{moe}.gate.weight"][kept], rtol=0, atol=0)
        for new, old in enumerate(kept):
            assert_close(out[f"{moe}.experts.{new}.w2.weight"], ft[f"{moe}.experts.{old}.w2.weight"], rtol=0, atol=0)
        assert f"{moe}.experts.4.w1.weight" not in out
    assert_close(out["model.embed_tokens.weight"], ft["model.embed_tokens.weight"], rtol=0, atol=0)
    assert len(out) == len(ft) - 2 * 2 * 3
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_local_experts"] == 4 and config["num_experts_per_tok"] == 2
    assert (tmp_path / "out" / "tokenizer.json").read_text() == "{}"
    params = lambda ts: sum(v.numel() for v in ts.values())  # noqa: E731
    assert report.parameters == (params(ft), params(out))
    if shards > 1:
        index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
        assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in out.values())
        assert set(index["weight_map"]) == set(out)
    saved = json.loads((tmp_path / "out" / "prune_report.json").read_text())
    assert saved["layers"][0]["kept"] == report.layers[0].kept
    assert "| `model.layers.1.block_sparse_moe` |" in (tmp_path / "out" / "prune_report.md").read_text()


def test_planted_router_growth_is_kept_and_signed(tmp_path):
    fake_checkpoint(tmp_path / "base", seed=0, router_scale={(0, 0): 10.0, (1, 5): 10.0})
    # Fine-tuning grows experts 1, 4 (layer 0) and 2, 3 (layer 1); shrinks expert 5 of layer 0 (large |Δ|, Δ < 0);
    # experts 0 (layer 0) and 5 (layer 1) keep a large norm from pretraining without growing.
    fake_checkpoint(tmp_path / "ft", seed=0, router_scale={(0, 0): 10.0, (1, 5): 10.0, (0, 1): 3.0, (0, 4): 3.0,
                                                           (1, 2): 3.0, (1, 3): 3.0, (0, 5): 0.05})
    delta = prune_checkpoint(tmp_path / "base", tmp_path / "ft", tmp_path / "d", PruneSpec(keep=2))
    assert [layer.kept for layer in delta.layers] == [[1, 4], [2, 3]]
    assert delta.layers[0].delta[5] < 0
    norm = prune_checkpoint(tmp_path / "base", tmp_path / "ft", tmp_path / "n", PruneSpec(keep=1, method="router-norm"))
    assert [layer.kept for layer in norm.layers] == [[0], [5]]
    assert json.loads((tmp_path / "n" / "config.json").read_text())["num_experts_per_tok"] == 1


def test_random_method_is_seeded(tmp_path):
    fake_checkpoint(tmp_path / "base", seed=0)
    fake_checkpoint(tmp_path / "ft", seed=1)
    picks = [[layer.kept for layer in prune_checkpoint(tmp_path / "base", tmp_path / "ft", tmp_path / f"r{i}",
                                                       PruneSpec(ratio=0.5, method="random", seed=s)).layers]
             for i, s in enumerate((7, 7, 8, 9))]
    assert picks[0] == picks[1] and all(len(k) == 3 for p in picks for k in p)
    assert picks[0] != picks[2] or picks[0] != picks[3]


# ---- user errors ----------------------------------------------------------------------------------------------

@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    fake_checkpoint(tmp_path / "base", seed=0)
    fake_checkpoint(tmp_path / "ft", seed=1, shards=2)
    return tmp_path / "base", tmp_path / "ft"


@pytest.mark.parametrize("kwargs, message", [
    (dict(k=4), "base has 4 experts per MoE layer, fine-tuned 6"),
    (dict(inter=5), "experts.0.w2.weight has shape [8, 5] in base but [8, 4] in fine-tuned"),
    (dict(model_type="qwen2_moe"), "base model_type 'qwen2_moe' differs from fine-tuned 'mixtral'"),
    (dict(layers=3), "base MoE layers"),
    (dict(drop=("model.layers.1.block_sparse_moe.gate.weight",)),
     "base MoE layers .*model.layers.0.block_sparse_moe.* differ"),
])
def test_mismatched_base_is_refused(tmp_path, pair, kwargs, message):
    fake_checkpoint(tmp_path / "other", **kwargs)
    with pytest.raises(PmoeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        prune_checkpoint(tmp_path / "other", pair[1], tmp_path / "out", PruneSpec(keep=3))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec, message", [
    (dict(keep=0), "keep 0 is outside 1..5"), (dict(keep=6), "keep 6 is outside 1..5"),
    (dict(ratio=0.05), r"ratio 0.05 \(keep 6\) is outside 1..5"), (dict(ratio=1.0), r"ratio 1.0 is outside \(0, 1\)"),
    (dict(keep=2, ratio=0.5), "exactly one of keep and ratio"), (dict(keep=2, method="abs"), "method 'abs' is unknown"),
    (dict(keep=2, layers=(0,)), r"layers \[0\] select 1 of 2 MoE layers"),
    (dict(keep=2, layers=(0, 1, 2)), r"layers \[2\] are outside 0..1"),
])
def test_bad_spec_is_refused(tmp_path, pair, spec, message):
    with pytest.raises(PmoeError, match=message):
        prune_checkpoint(*pair, tmp_path / "out", PruneSpec(**spec))


def test_all_layers_selected_explicitly(tmp_path, pair):
    assert len(prune_checkpoint(*pair, tmp_path / "out", PruneSpec(keep=2, layers=(1, 0))).layers) == 2


def test_corrupt_truncated_and_missing_files_are_refused(tmp_path, pair):
    shard = pair[1] / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    with pytest.raises(PmoeError, match="model-00002-of-00002.safetensors: not a readable safetensors file"):
        prune_checkpoint(*pair, tmp_path / "out", PruneSpec(keep=2))
    shard.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(PmoeError, match="not a readable safetensors file"):
        prune_checkpoint(*pair, tmp_path / "out", PruneSpec(keep=2))
    shard.unlink()
    with pytest.raises(PmoeError, match="names shard model-00002-of-00002.safetensors, which is missing"):
        prune_checkpoint(*pair, tmp_path / "out", PruneSpec(keep=2))
    with pytest.raises(PmoeError, match="does not exist"):
        prune_checkpoint(tmp_path / "nowhere", pair[1], tmp_path / "out", PruneSpec(keep=2))
    with pytest.raises(PmoeError, match="is a file, not a folder; expected a local Hugging Face model folder"):
        prune_checkpoint(pair[0] / "config.json", pair[1], tmp_path / "out", PruneSpec(keep=2))
    (pair[0] / "model.safetensors").unlink()
    with pytest.raises(PmoeError, match="has neither model.safetensors nor model.safetensors.index.json"):
        prune_checkpoint(*pair, tmp_path / "out", PruneSpec(keep=2))
    assert not (tmp_path / "out").exists()


def test_unknown_family_and_used_output_are_refused(tmp_path, pair):
    fake_checkpoint(tmp_path / "llama", model_type="llama")
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(PmoeError, match="model_type 'llama'.* names no expert count; expected one of"):
        prune_checkpoint(tmp_path / "llama", tmp_path / "llama", tmp_path / "out", PruneSpec(keep=2))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(PmoeError, match="--out .*out already holds files of another run"):
        prune_checkpoint(*pair, tmp_path / "out", PruneSpec(keep=2))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_a_router_with_nan_or_inf_is_refused(tmp_path, pair):
    fake_checkpoint(tmp_path / "nan", seed=1, router_scale={(1, 2): float("nan"), (1, 3): float("inf")})
    with pytest.raises(PmoeError, match=r"fine-tuned router model.layers.1.block_sparse_moe.gate.weight has 16 NaN "
                                        r"or infinite entries of 48: its experts cannot be ranked"):
        prune_checkpoint(pair[0], tmp_path / "nan", tmp_path / "out", PruneSpec(keep=2))
    assert not (tmp_path / "out").exists()


# ---- command line ---------------------------------------------------------------------------------------------

def test_cli_json_and_errors(tmp_path, pair, capsys):
    args = ["hf-prune", "--base", str(pair[0]), "--finetuned", str(pair[1]), "--out", str(tmp_path / "out")]
    assert main(args + ["--ratio", "0.5", "--method", "router-norm", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["keep"] == 3 and report["method"] == "router-norm" and len(report["layers"]) == 2
    assert report["parameters"][1] < report["parameters"][0] and report["size_bytes"][1] < report["size_bytes"][0]
    assert main(args + ["--keep", "2"]) == 2
    assert "pmoe hf-prune: error: --out" in capsys.readouterr().err
    assert main(args[:-1] + [str(tmp_path / "o2"), "--keep", "9"]) == 2
    assert "keep 9 is outside 1..5" in capsys.readouterr().err
    for layers in ("0-x", "0-99999999999999999999", "5-2"):  # not a number, a range too long to spell out, descending
        with pytest.raises(SystemExit):
            main(args + ["--keep", "2", "--layers", layers])
        assert "is not a layer list" in capsys.readouterr().err
