"""pmoe.hf on hand-made checkpoints (no transformers): grouped routing, protected experts, expert axes other than 0,
flattened fused experts, zero-compute router rows, routing tensors saved beside the block, nested configs, and the
refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from pmoe.cli import main
from pmoe.errors import PmoeError
from pmoe.hf import PruneSpec, prune_checkpoint

H, E = 8, 8


def checkpoint(folder: Path, seed: int, config: dict, extra: dict[str, torch.Tensor] | None = None,
               grow: dict[int, float] | None = None, rows: int = E, prefix: str = "model") -> dict[str, torch.Tensor]:
    """A DeepSeek-like layout: layer 0 dense, layer 1 MoE with router, score bias, fused experts, shared expert.
    Router row `e` is scaled by `grow[e]`."""
    g = torch.Generator().manual_seed(seed)
    moe = f"{prefix}.layers.1.mlp"
    t = {f"{prefix}.layers.0.mlp.gate_proj.weight": torch.randn(16, H, generator=g),
         f"{moe}.gate.weight": torch.randn(rows, H, generator=g),
         f"{moe}.gate.e_score_correction_bias": torch.arange(rows, dtype=torch.float32),
         f"{moe}.experts.gate_up_proj": torch.arange(rows, dtype=torch.float32)[:, None, None].repeat(1, 6, H),
         f"{moe}.shared_experts.up_proj.weight": torch.randn(E, H, generator=g), **(extra or {})}
    t[f"{moe}.gate.weight"] /= t[f"{moe}.gate.weight"].norm(dim=1, keepdim=True)  # so Δ_e = grow[e] - 1
    for e, s in (grow or {}).items():
        t[f"{moe}.gate.weight"][e] *= s
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(t, folder / "model.safetensors")
    return t


def pair(tmp_path: Path, config: dict, grow: dict[int, float], **kwargs) -> tuple[Path, Path]:
    checkpoint(tmp_path / "base", 0, config, **kwargs)
    checkpoint(tmp_path / "ft", 0, config, grow=grow, **kwargs)
    return tmp_path / "base", tmp_path / "ft"


DS = {"model_type": "deepseek_v3", "n_routed_experts": E, "hidden_size": H, "num_experts_per_tok": 4}
GROWN = {1: 3.0, 2: 2.5, 3: 2.0, 0: 1.5, 6: 1.2}  # by Δ: 1, 2, 3, 0 (group 0), then 6, then 4, 5, 7 (Δ = 0)


def test_grouped_routing_keeps_the_best_of_each_group(tmp_path):
    config = {**DS, "n_group": 2, "topk_group": 1}
    report = prune_checkpoint(*pair(tmp_path, config, GROWN), tmp_path / "out", PruneSpec(keep=4))
    kept = report.layers[0].kept
    assert kept == [1, 2, 4, 6]  # not the overall best four, 0-3: two per group
    assert report.groups == 2 and report.config_changes == {"n_routed_experts": 4, "num_experts_per_tok": 2}
    out = load_file(tmp_path / "out" / "model.safetensors")
    assert_close(out["model.layers.1.mlp.gate.e_score_correction_bias"], torch.tensor(kept, dtype=torch.float32))
    assert_close(out["model.layers.1.mlp.experts.gate_up_proj"][:, 0, 0], torch.tensor(kept, dtype=torch.float32))
    assert out["model.layers.1.mlp.shared_experts.up_proj.weight"].shape == (E, H)  # shared: never sliced


def test_groups_a_token_never_leaves_are_dropped(tmp_path):
    report = prune_checkpoint(*pair(tmp_path, {**DS, "n_group": 2, "topk_group": 2}, GROWN), tmp_path / "out",
                              PruneSpec(keep=4))
    assert report.layers[0].kept == [0, 1, 2, 3] and report.groups == 1
    assert report.config_changes == {"n_routed_experts": 4, "n_group": 1, "topk_group": 1}


@pytest.mark.parametrize("keep, message", [(3, "keep 3 cannot be split evenly over the 2 expert groups"),
                                           (2, "keep 2 cannot be split evenly over the 2 expert groups")])
def test_grouped_routing_that_cannot_be_preserved_is_refused(tmp_path, keep, message):
    with pytest.raises(PmoeError, match=message):
        prune_checkpoint(*pair(tmp_path, {**DS, "n_group": 2, "topk_group": 1}, GROWN), tmp_path / "out",
                         PruneSpec(keep=keep))
    assert not (tmp_path / "out").exists()


def test_protected_experts_are_kept(tmp_path):
    base, ft = pair(tmp_path, {**DS, "n_group": 2, "topk_group": 1}, GROWN)
    report = prune_checkpoint(base, ft, tmp_path / "out", PruneSpec(keep=4, protect=((0, 7), (0, 5))))
    assert report.layers[0].kept == [1, 2, 5, 7] and report.protected == [(0, 5), (0, 7)]
    with pytest.raises(PmoeError, match=r"protected experts \[4, 5, 7\] of MoE layer 0 .* in group 1"):
        prune_checkpoint(base, ft, tmp_path / "o2", PruneSpec(keep=4, protect=((0, 4), (0, 5), (0, 7))))
    with pytest.raises(PmoeError, match="protected 1:0 is outside the 1 MoE layers x 8 experts"):
        prune_checkpoint(base, ft, tmp_path / "o3", PruneSpec(keep=4, protect=((1, 0),)))


def test_expert_axis_one_sibling_bias_and_nested_config(tmp_path):
    """ERNIE-style [1, E] statics, a Kolibri-style `moe.router.expert_bias` beside the block, a text_config."""
    config = {"model_type": "vl", "text_config": {"model_type": "t", "moe_num_experts": E, "hidden_size": H,
                                                  "moe_k": 2}, "vision_config": {"num_experts": E}}
    extra = {"model.language_model.layers.1.mlp.moe_statics.e_score_correction_bias": torch.arange(E)[None].float(),
             "model.language_model.layers.1.moe.router.expert_bias": torch.arange(E).float(),
             "model.visual.blocks.0.mlp.gate.weight": torch.ones(E, H)}
    base, ft = pair(tmp_path, config, GROWN, extra=extra, prefix="model.language_model")
    report = prune_checkpoint(base, ft, tmp_path / "out", PruneSpec(keep=3))
    kept = [1, 2, 3]
    assert report.layers[0].kept == kept and report.config_changes == {"text_config.moe_num_experts": 3}
    out = load_file(tmp_path / "out" / "model.safetensors")
    layer = "model.language_model.layers.1"
    assert_close(out[f"{layer}.mlp.moe_statics.e_score_correction_bias"], torch.tensor([kept]).float())
    assert_close(out[f"{layer}.moe.router.expert_bias"], torch.tensor(kept).float())
    assert out["model.visual.blocks.0.mlp.gate.weight"].shape == (E, H)  # the vision tower is untouched
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["text_config"]["moe_num_experts"] == 3 and written["vision_config"] == {"num_experts": E}


def test_flattened_fused_experts_keep_row_blocks(tmp_path):
    """DBRX: a fused expert matrix saved [E * n, hidden] keeps the n rows of each kept expert."""
    w1 = torch.arange(E).repeat_interleave(3)[:, None].repeat(1, 5).float()  # row block e holds e
    base, ft = pair(tmp_path, DS, GROWN, extra={"model.layers.1.mlp.experts.mlp.w1": w1})
    report = prune_checkpoint(base, ft, tmp_path / "out", PruneSpec(keep=3))
    out = load_file(tmp_path / "out" / "model.safetensors")["model.layers.1.mlp.experts.mlp.w1"]
    assert_close(out, torch.tensor(report.layers[0].kept).repeat_interleave(3)[:, None].repeat(1, 5).float())


def test_zero_compute_router_rows_stay(tmp_path):
    """LongCat-Flash: 2 zero-compute experts add router rows 8, 9 (and rows of a fused tensor), never pruned."""
    config = {"model_type": "longcat_flash", "n_routed_experts": E, "zero_expert_num": 2, "hidden_size": H,
              "moe_topk": 2}
    report = prune_checkpoint(*pair(tmp_path, config, GROWN, rows=E + 2), tmp_path / "out", PruneSpec(keep=4))
    assert report.layers[0].kept == [0, 1, 2, 3] and len(report.layers[0].delta) == E
    out = load_file(tmp_path / "out" / "model.safetensors")
    assert_close(out["model.layers.1.mlp.gate.e_score_correction_bias"], torch.tensor([0., 1, 2, 3, 8, 9]))
    assert out["model.layers.1.mlp.gate.weight"].shape == (6, H)


@pytest.mark.parametrize("extra, message", [
    ({"model.layers.1.mlp.experts.down_proj": torch.zeros(6, E, E)}, r"with 8 \(the expert count\) at axis \[1, 2\]"),
    ({"model.layers.1.mlp.odd_bias": torch.zeros(3, E)}, "odd_bias has shape \\[3, 8\\]"),
    ({"model.layers.2.mlp.experts.0.w1.weight": torch.zeros(3, H)}, "outside any MoE block with a router"),
    ({"model.layers.1.moe.experts.0.w1.weight": torch.zeros(3, 5)}, "moe.experts.0.w1.weight is an expert tensor outside"),
])
def test_unplaceable_expert_tensors_are_refused_before_writing(tmp_path, extra, message):
    with pytest.raises(PmoeError, match=message):
        prune_checkpoint(*pair(tmp_path, DS, GROWN, extra=extra), tmp_path / "out", PruneSpec(keep=4))
    assert not (tmp_path / "out").exists()


def test_refused_family_and_cli_protect(tmp_path, capsys):
    base, ft = pair(tmp_path, {**DS, "model_type": "deepseek_v4"}, GROWN)
    with pytest.raises(PmoeError, match="model_type 'deepseek_v4' is not supported: its hash-routed MoE layers"):
        prune_checkpoint(base, ft, tmp_path / "out", PruneSpec(keep=4))
    base, ft = pair(tmp_path / "ok", DS, GROWN)
    args = ["hf-prune", "--base", str(base), "--finetuned", str(ft), "--keep", "2", "--quiet", "--json"]
    assert main(args + ["--protect", "0:7", "--out", str(tmp_path / "o1")]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["kept"] == [1, 7]
    with pytest.raises(SystemExit):
        main(args + ["--protect", "0-7", "--out", str(tmp_path / "o2")])
    assert "is not a protect list" in capsys.readouterr().err


def test_mxfp4_blocks_and_scales_are_sliced_bit_exact(tmp_path):
    """gpt-oss's MXFP4 experts: uint8 `*_blocks` [E, rows, groups, 16] and `*_scales` [E, rows, groups] beside a
    float bias [E, rows] keep the kept experts' bytes unchanged, in order."""
    ids = torch.arange(E, dtype=torch.uint8)
    extra = {"model.layers.1.mlp.experts.down_proj_blocks": ids.view(E, 1, 1, 1).repeat(1, H, 2, 16) * 17,
             "model.layers.1.mlp.experts.down_proj_scales": ids.view(E, 1, 1).repeat(1, H, 2) + 120,
             "model.layers.1.mlp.experts.down_proj_bias": torch.arange(E, dtype=torch.float32)[:, None].repeat(1, H)}
    base, ft = pair(tmp_path, DS, GROWN, extra=extra)
    report = prune_checkpoint(base, ft, tmp_path / "out", PruneSpec(keep=4))
    kept, out = torch.tensor(report.layers[0].kept), load_file(tmp_path / "out" / "model.safetensors")
    for name, t in extra.items():
        assert out[name].dtype == t.dtype and torch.equal(out[name], t[kept]), name
