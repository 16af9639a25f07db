"""Class-patch hit rates of vision models on the canvas images, against a hand-worked geometry and a plain count."""
import torch

from pmoe.analysis import expert_cells
from pmoe.analysis.cells import ExpertCells
from pmoe.analysis.hits import class_patch_hits, patch_overlap
from pmoe.data.vision import make_image_dataset
from pmoe.models.presets import build_preset


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
