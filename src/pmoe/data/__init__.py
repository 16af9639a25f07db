"""Data for the pMoE theory models: the theory's synthetic data, the paper's patch canvases of IDX images, and a
user's own samples in an .npz file (pmoe.data.files)."""
from __future__ import annotations

from pmoe.data.base import PatchDataset, check_fits_memory
from pmoe.data.files import FILE_PREFIX, PatchFileConfig, file_options, load_patch_file, save_patch_file
from pmoe.data.idx import DEFAULT_DATA_DIR, load_idx_dataset, read_idx
from pmoe.data.patches import PatchCanvasConfig, canvas_image, make_patch_canvas
from pmoe.data.synthetic import SyntheticConfig, make_synthetic, synthetic_patterns
from pmoe.errors import check
from pmoe.fields import typed

DATASETS = ("synthetic", "fashion-patches")  # by name; and "file", a user's .npz (DataSpec.from_file, --data file:PATH)
_CONFIGS = {"synthetic": SyntheticConfig, "fashion-patches": PatchCanvasConfig, "file": PatchFileConfig}
_TEST_SEED_OFFSET = 10_000_019  # synthetic test samples come from seed + this, train samples from seed


def make_dataset(name: str, split: str, num_samples: int | None, seed: int, **options) -> PatchDataset:
    """Data set `name` (one of DATASETS, or 'file'), split 'train' | 'test'; `options` set fields of its config.
    `num_samples` None: all of a file's samples."""
    check(name in _CONFIGS, f"unknown data set {name!r}; valid names: {', '.join(_CONFIGS)}")
    check(split in ("train", "test"), f"split must be 'train' or 'test', got {split!r}")
    cfg = typed(_CONFIGS[name], options, f"options of data set {name!r}")
    if name == "file":
        return load_patch_file(cfg, split, num_samples, seed)
    if name == "fashion-patches":
        return make_patch_canvas(cfg, split, num_samples, seed)
    check_fits_memory(num_samples, cfg.n, cfg.d, split)
    ds = make_synthetic(cfg, num_samples, seed if split == "train" else seed + _TEST_SEED_OFFSET)
    ds.meta["split"] = split
    return ds


__all__ = ["DATASETS", "DEFAULT_DATA_DIR", "FILE_PREFIX", "PatchCanvasConfig", "PatchDataset", "PatchFileConfig",
           "SyntheticConfig", "canvas_image", "file_options", "load_idx_dataset", "load_patch_file", "make_dataset",
           "make_patch_canvas", "make_synthetic", "read_idx", "save_patch_file", "synthetic_patterns"]
