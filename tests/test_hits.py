"""Class-patch hit rates of vision models on the canvas images, against a hand-worked geometry and a plain count."""
import json

import torch

from pmoe.analysis import expert_cells
from pmoe.analysis.cells import ExpertCells
from pmoe.analysis.hits import class_patch_hits, patch_overlap
from pmoe.checkpoints import load_checkpoint
from pmoe.cli import main
from pmoe.data.vision import make_image_dataset
from pmoe.models.presets import build_preset
from pmoe.train import FitConfig
from pmoe.runs.images import ImageDataSpec, build_for_data, initial_model, train_preset


def test_patch_overlap_by_hand():
    aligned = patch_overlap(ExpertCells([], cell=14, offset=0), 2, 2, grid=2, patch=14)
    assert torch.equal(aligned, torch.eye(4, dtype=torch.bool))
    # Cells of 8 px from -2 (a 28 px canvas padded into 32): rows/cols [-2,6) [6,14) -> patch 0, [14,22) [22,30) -> 1.
    shifted = patch_overlap(ExpertCells([], cell=8, offset=-2), 4, 4, grid=2, patch=14)
    side = torch.tensor([0, 0, 1, 1])
    expected = (side.view(4, 1, 1) * 2 + side.view(1, 4, 1) == torch.arange(4).view(1, 1, 4)).reshape(16, 4)
    assert torch.equal(shifted, expected)
    straddle = patch_overlap(ExpertCells([], cell=10, offset=0), 2, 2, grid=2, patch=14)  # cell 1: [10, 20)
    assert straddle[3].tolist() == [True, True, True, True] and straddle[0].tolist() == [True, False, False, False]


def test_hit_rates_equal_a_plain_count_for_a_patch_router_vit():
    ds = make_image_dataset("fashion-patches-image", "test", num_samples=40)  # 4x4 canvases of 28 px
    torch.manual_seed(0)
    model = build_preset("vit-moe-tiny", image_size=112, patch_size=28, router="patch", in_channels=1,
                         num_classes=2).eval()
    res = class_patch_hits(model, ds, batch_size=16)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    mask = expert_cells(model, x).masks[-1].flatten(2)  # (N, k, 16): cells are the canvas patches
    pos = ds.attributes["disc_pos"]
    hit = torch.stack([mask[b, :, pos[b]] for b in range(len(ds))]).float()  # (N, k)
    torch.testing.assert_close(torch.tensor(res["per_expert"]), hit.mean(0))
    assert abs(res["chance"] - mask.float().sum(-1).mean().item() / 16) < 1e-6
    per_class = [hit[ds.labels == c].mean(0) for c in (0, 1)]
    assert abs(res["best_expert"] - sum(h.max().item() for h in per_class) / 2) < 1e-6
    assert list(res["per_class"]) == ds.classes


def test_initial_model_rebuilds_the_weights_a_run_started_from(tmp_path, capsys):
    spec = ImageDataSpec("fashion-patches-image", samples=32, test_samples=20, options={"num_samples": 40})
    opts = {"patch_size": 28, "router": "patch"}
    torch.manual_seed(3)
    start = build_for_data("vit-moe-tiny", spec.make("train"), opts)
    train_preset("vit-moe-tiny", spec, FitConfig(epochs=1, batch_size=16, seed=3, device="cpu"), tmp_path / "run",
                 opts, progress=False)
    init, trained = initial_model(tmp_path / "run"), load_checkpoint(tmp_path / "run")[0]
    assert all(torch.equal(a, b) for a, b in zip(init.state_dict().values(), start.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(init.state_dict().values(), trained.state_dict().values()))
    assert main(["route", str(tmp_path / "run"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= out["class_patch_initial"]["best_expert"] <= 1 and "class_patch" in out


def test_image_samples_records_class_patch_hits_on_canvases(tmp_path, capsys):
    args = ["experiment", "image-samples", "--out", str(tmp_path), "--models", "vit-tiny:patch_size=28",
            "vit-moe-tiny:patch_size=28,router=patch", "--samples", "128", "--test-samples", "40", "--seeds", "1",
            "--epochs", "1", "--min-steps", "0", "--json"]
    assert main(args) == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    dense, moe = runs
    assert "class_patch" not in dense and set(moe["class_patch"]) == {"best_expert", "chance", "initial"}
    assert "covers the class patch of a test canvas" in (tmp_path / "results.md").read_text()
