"""Data for the pMoE theory models: the theory's synthetic data and the paper's patch canvases of IDX images."""
from __future__ import annotations

import dataclasses

from pmoe.data.base import PatchDataset
from pmoe.data.idx import DEFAULT_DATA_DIR, load_idx_dataset, read_idx
from pmoe.data.patches import PatchCanvasConfig, canvas_image, make_patch_canvas
from pmoe.data.synthetic import SyntheticConfig, make_synthetic, synthetic_patterns
from pmoe.errors import check

DATASETS = ("synthetic", "fashion-patches")
_CONFIGS = {"synthetic": SyntheticConfig, "fashion-patches": PatchCanvasConfig}
_TEST_SEED_OFFSET = 10_000_019  # synthetic test samples come from seed + this, train samples from seed


def make_dataset(name: str, split: str, num_samples: int, seed: int, **options) -> PatchDataset:
    """Data set `name` (one of DATASETS), split 'train' | 'test'; `options` set fields of its config."""
    check(name in DATASETS, f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    check(split in ("train", "test"), f"split must be 'train' or 'test', got {split!r}")
    fields = [f.name for f in dataclasses.fields(_CONFIGS[name])]
    unknown = sorted(set(options) - set(fields))
    check(not unknown, f"unknown option(s) {', '.join(unknown)} for data set {name!r}; valid: {', '.join(fields)}")
    cfg = _CONFIGS[name](**options)
    if name == "fashion-patches":
        return make_patch_canvas(cfg, split, num_samples, seed)
    ds = make_synthetic(cfg, num_samples, seed if split == "train" else seed + _TEST_SEED_OFFSET)
    ds.meta["split"] = split
    return ds


__all__ = ["DATASETS", "DEFAULT_DATA_DIR", "PatchCanvasConfig", "PatchDataset", "SyntheticConfig", "canvas_image",
           "load_idx_dataset", "make_dataset", "make_patch_canvas", "make_synthetic", "read_idx",
           "synthetic_patterns"]
