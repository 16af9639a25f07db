"""Routing pictures: the chosen-cell masks of each model family against hand-made routings, the PNG, `pmoe route`."""
import dataclasses
import json
from typing import Callable

import pytest
import torch

from pmoe.analysis import draw_routing_grid, expert_cells, pick_frequency
from pmoe.analysis.cells import kept_tokens
from pmoe.checkpoints import save_checkpoint
from pmoe.cli import main
from pmoe.errors import PmoeError
from pmoe.models import build_theory_model, theory_config
from pmoe.models.presets import build_preset, preset
from pmoe.layers.routing import PatchRouting, TokenRouting
from pmoe.runs.images import ImageDataSpec

PNG = b"\x89PNG"


def fixed_routing(index: list[list[int]], batch: int) -> Callable[[torch.Tensor], PatchRouting]:
    """A `route` that ignores its input: expert s takes positions index[s] of every sample."""
    idx = torch.tensor(index).expand(batch, -1, -1)  # (B, k, l)
    return lambda x: PatchRouting(idx, torch.ones(idx.shape), torch.zeros(batch, 1, len(index)))


def theory_model():
    """Joint pMoE on 4x4 canvases of 28x28 patches, l=1: expert 0 scores a patch by its sum, expert 1 by minus it."""
    model = build_theory_model(theory_config("pmoe", n=16, d=784, experts=2, l=1))
    model.moe.router.weight.data = torch.stack([torch.ones(784), -torch.ones(784)])
    return model


def ramp_canvases(batch: int) -> torch.Tensor:
    """(B, 1, 112, 112): patch j (row-major) of every canvas is the constant j / 16."""
    patches = torch.arange(16.0).div(16).view(1, 4, 1, 4, 1).expand(batch, 4, 28, 4, 28)
    return patches.reshape(batch, 1, 112, 112)


def test_theory_cells_follow_the_router_weights():
    cells = expert_cells(theory_model(), ramp_canvases(3))
    (mask,) = cells.masks
    assert mask.shape == (3, 2, 4, 4) and mask.sum(dim=(2, 3)).eq(1).all()
    assert mask[:, 0, 3, 3].all() and mask[:, 1, 0, 0].all()  # the brightest patch, the darkest
    assert (cells.cell, cells.offset) == (28, 0) and cells.rect(3, 3) == (84, 84, 28, 28)


def test_wrn_regions_map_to_the_zero_padded_image():
    model = build_preset("wrn-pmoe-tiny", in_channels=1, num_classes=2, input_size=28).eval()  # 4x4 regions of 8 px
    model.moe.route = fixed_routing([[5, 0, 1, 2], [5, 6, 7, 15], [8, 9, 10, 11], [12, 13, 14, 15]], 2)
    cells = expert_cells(model, torch.randn(2, 1, 28, 28))
    (mask,) = cells.masks
    assert mask.shape == (2, 4, 4, 4) and mask.sum(dim=(2, 3)).eq(4).all()
    assert mask[:, 0, 1, 1].all() and mask[:, 1, 1, 1].all() and not mask[:, 2, 1, 1].any()
    assert (cells.cell, cells.offset) == (8, -2) and cells.rect(1, 1) == (6, 6, 8, 8)  # 28 px padded by 2 into 32


def test_vit_patch_router_cells_skip_the_cls_token():
    model = build_preset("vit-moe-tiny", in_channels=1, num_classes=2, image_size=28, router="patch").eval()
    for ffn in model.moe_ffns():  # 7x7 patches of 4 px; token 1 + 7 r + c is patch (r, c)
        ffn.moe.route = fixed_routing([[0, 1 + 7 * 2 + 3], [1, 49], [0, 8], [2, 3]], 2)
    cells = expert_cells(model, torch.randn(2, 1, 28, 28))
    assert len(cells.masks) == 2 and cells.masks[-1].shape == (2, 4, 7, 7)
    mask = cells.masks[-1][0]
    assert mask[0].sum() == 1 and mask[0, 2, 3] and mask[1, 0, 0] and mask[1, 6, 6] and mask[2, 1, 0]
    assert cells.rect(2, 3) == (12, 8, 4, 4)


def test_token_router_cells_are_the_tokens_each_expert_kept():
    expert = torch.tensor([[[0, 1], [2, 1], [1, 0]]])  # (G=1, T=3, K=2)
    dropped = torch.tensor([[[False, False], [False, True], [True, False]]])
    r = TokenRouting(expert, torch.zeros_like(expert), torch.ones(1, 3, 2), dropped, 2, torch.zeros(()),
                     torch.zeros(()))
    assert kept_tokens(r, batch=1, n=3, k=3)[0].tolist() == [[True, False, True], [True, False, False],
                                                             [False, True, False]]


@pytest.mark.parametrize("name,experts_per_token", [("vit-moe-tiny", 2), ("e3-tiny", 2)])
def test_token_routers_without_drops_give_every_patch_its_experts(name, experts_per_token):
    # Ample capacity: each patch is kept by its K experts (E3: K=1 in each of its M=2 members).
    model = build_preset(name, in_channels=1, num_classes=2, image_size=28, eval_capacity_factor=10.0).eval()
    for mask in expert_cells(model, torch.randn(3, 1, 28, 28)).masks:
        assert mask.shape == (3, 4, 7, 7) and mask.sum(dim=1).eq(experts_per_token).all()


def test_dense_model_is_refused():
    with pytest.raises(PmoeError, match="dense model"):
        expert_cells(build_preset("wrn-tiny", in_channels=1, num_classes=2, input_size=28), torch.randn(1, 1, 28, 28))


def test_pick_frequency_and_png(tmp_path):
    model, x = theory_model(), ramp_canvases(4)
    y = torch.tensor([0, 1, 1, 0])
    freq, counts = pick_frequency(model, [(x[:2], y[:2]), (x[2:], y[2:])], num_classes=2)
    assert counts.tolist() == [2, 2] and freq.shape == (2, 2, 4, 4)
    assert freq[:, 0, 3, 3].eq(1).all() and freq[:, 0].sum() == 2 and freq[:, 1, 0, 0].eq(1).all()
    path = tmp_path / "grid.png"
    draw_routing_grid(path, x, y, ["a", "b"], expert_cells(model, x), frequency=freq, marked=torch.tensor([3, -1, 0, 5]))
    assert path.read_bytes()[:4] == PNG
    with pytest.raises(PmoeError, match="layer must be in -1..0"):
        pick_frequency(model, [(x, y)], 2, layer=1)


def test_route_png_for_a_theory_checkpoint(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert main(["train", "--model", "pmoe", "--data", "fashion-patches", "--samples", "20", "--test-samples", "20",
                 "--epochs", "1", "--out", str(ck), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["route", str(ck), "--png", str(tmp_path / "r.png"), "--examples", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["chance"] == pytest.approx(6 / 16) and out["png"] == str(tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == PNG


def test_route_png_never_writes_over_its_input_or_another_file(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert main(["train", "--model", "pmoe", "--data", "fashion-patches", "--samples", "20", "--test-samples", "20",
                 "--epochs", "1", "--out", str(ck), "--quiet"]) == 0
    config = (ck / "config.json").read_bytes()
    (tmp_path / "old.png").write_bytes(b"mine")
    for png, message in [(ck / "config.json", "expected a file name ending in .png"), ("", "''"),
                         (ck / "r.png", "is inside the input"), (tmp_path / "old.png", "exists already"),
                         (tmp_path, "expected a file name ending in .png")]:
        capsys.readouterr()
        assert main(["route", str(ck), "--png", str(png)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pmoe route: error: --png" in err[0] and message in err[0], err
    assert (ck / "config.json").read_bytes() == config and not (ck / "r.png").exists()
    assert (tmp_path / "old.png").read_bytes() == b"mine"
    assert main(["route", str(ck), "--png", str(tmp_path / "old.png"), "--overwrite"]) == 0
    assert (tmp_path / "old.png").read_bytes()[:4] == PNG


def save_vision(path, name: str, **overrides) -> None:
    """A fresh preset model for Fashion-MNIST images, saved with a data section (30 test images)."""
    arch, cfg = preset(name, in_channels=1, num_classes=10, image_size=28, **overrides)
    model = build_preset(name, in_channels=1, num_classes=10, image_size=28, **overrides)
    save_checkpoint(path, model, arch, dataclasses.asdict(cfg), preset=name,
                    data=dataclasses.asdict(ImageDataSpec("fashion-mnist", test_samples=30)))


def test_route_png_for_a_vit_moe_checkpoint(tmp_path, capsys):
    save_vision(tmp_path / "vit", "vit-moe-tiny", router="patch")
    png = tmp_path / "vit.png"
    assert main(["route", str(tmp_path / "vit"), "--png", str(png), "--examples", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["layer"], out["experts"], out["grid"], out["cell"], out["images"]) == (1, 4, [7, 7], 4, 30)
    assert torch.tensor(out["frequency"]).shape == (10, 4, 7, 7) and png.read_bytes()[:4] == PNG
    assert main(["route", str(tmp_path / "vit"), "--layer", "0"]) == 0
    assert "MoE layer 0" in capsys.readouterr().out
    assert main(["route", str(tmp_path / "vit"), "--layer", "2"]) == 2
    assert "layer must be in -2..1" in capsys.readouterr().err


def test_route_reports_class_patch_hits_on_canvas_images(tmp_path, capsys):
    arch, cfg = preset("wrn-pmoe-tiny", in_channels=1, num_classes=2, image_size=112, region=7, l=2)
    model = build_preset("wrn-pmoe-tiny", in_channels=1, num_classes=2, image_size=112, region=7, l=2)
    save_checkpoint(tmp_path / "wrn", model, arch, dataclasses.asdict(cfg), preset="wrn-pmoe-tiny",
                    data=dataclasses.asdict(ImageDataSpec("fashion-patches-image", options={"num_samples": 20})))
    assert main(["route", str(tmp_path / "wrn"), "--json"]) == 0
    hits = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["class_patch"]
    assert abs(hits["chance"] - 2 / 16) < 1e-6  # 7x7 regions of the 28x28 map are the canvas patches; l = 2
    assert len(hits["per_expert"]) == 4 and 0 <= hits["best_expert"] <= 1
    assert main(["route", str(tmp_path / "wrn")]) == 0
    assert "class patch covered by the best expert of each class" in capsys.readouterr().out


def test_route_png_refuses_a_dense_vision_checkpoint(tmp_path, capsys):
    save_vision(tmp_path / "wrn", "wrn-tiny")
    assert main(["route", str(tmp_path / "wrn"), "--png", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "dense 'wrn-tiny' model, which has no routers" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
