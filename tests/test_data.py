"""pmoe.data: IDX reading, the theory's synthetic data, the patch canvases and the registry."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pmoe.data import (DATASETS, DEFAULT_DATA_DIR, PatchCanvasConfig, PatchDataset, SyntheticConfig, canvas_image,
                       load_idx_dataset, make_dataset, make_patch_canvas, make_synthetic, read_idx,
                       synthetic_patterns)
from pmoe.errors import PmoeError

IDX_TYPES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}
K = 3  # images per class in the fake data sets
TEST_OFFSET = 100  # fake test images have pixel values 101.., train images 1..


def idx_bytes(arr: np.ndarray) -> bytes:
    """arr in the IDX format: 00 00, type byte, ndim, big-endian sizes and data."""
    header = bytes([0, 0, IDX_TYPES[arr.dtype.type], arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def fake_mnist(folder: Path, gz: bool = True, variant: bool = False) -> Path:
    """10 classes × K constant 28×28 images per split; image k of class c has pixels 1 + c*K + k (+100 for test)."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.arange(10, dtype=np.uint8), K)
    for split, prefix, offset in (("train", "train", 0), ("test", "t10k", TEST_OFFSET)):
        values = (1 + offset + np.arange(10 * K)).astype(np.uint8)
        images = np.broadcast_to(values[:, None, None], (10 * K, 28, 28)).copy()
        sep = "." if variant else "-"
        write(folder / f"{prefix}-images{sep}idx3-ubyte{'.gz' if gz else ''}", idx_bytes(images), gz)
        write(folder / f"{prefix}-labels{sep}idx1-ubyte{'.gz' if gz else ''}", idx_bytes(labels), gz)
    return folder


def identify(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(class, is_test) of every fake 28×28 patch in x (..., 784)."""
    v = torch.round(x * 255).to(torch.int64)
    assert (v == v[..., :1]).all(), "a patch is not one constant image"
    v = v[..., 0].numpy()
    return (v - 1) % TEST_OFFSET // K, v > TEST_OFFSET


# ---------------------------------------------------------------- IDX files

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", list(IDX_TYPES))
def test_read_idx_roundtrip(tmp_path, gz, dtype):
    arr = (np.arange(2 * 3 * 5) * 7 - 40).astype(dtype).reshape(2, 3, 5)
    out = read_idx(write(tmp_path / "a.idx", idx_bytes(arr), gz))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative and out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out, arr)


def _bad_files() -> dict[str, tuple[bytes, bool]]:
    good = idx_bytes(np.zeros((4, 3), np.uint8))
    return {
        "truncated data": (good[:-1], False),
        "trailing bytes": (good + b"\0", True),
        "bad magic": (b"\1" + good[1:], False),
        "unknown type": (good[:2] + b"\x0a" + good[3:], False),
        "truncated header": (good[:6], True),
        "empty": (b"", False),
        "truncated gzip": (gzip.compress(good)[:-6], False),
        "corrupt gzip": (gzip.compress(good)[:10] + b"garbage" * 5, False),
    }


@pytest.mark.parametrize("case", list(_bad_files()))
def test_read_idx_rejects_bad_files_naming_them(tmp_path, case):
    data, gz = _bad_files()[case]
    path = write(tmp_path / "bad-file.idx", data, gz)
    with pytest.raises(PmoeError, match="bad-file.idx"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(PmoeError, match="nothere.idx"):
        read_idx(tmp_path / "nothere.idx")


@pytest.mark.parametrize("gz, variant", [(True, False), (False, False), (True, True), (False, True)])
def test_load_idx_dataset_finds_files(tmp_path, gz, variant):
    folder = fake_mnist(tmp_path / "data", gz=gz, variant=variant)
    images, labels = load_idx_dataset(folder, "test")
    assert images.shape == (10 * K, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.uint8
    np.testing.assert_array_equal(images[:, 5, 7], TEST_OFFSET + 1 + np.arange(10 * K))
    np.testing.assert_array_equal(labels, np.repeat(np.arange(10), K))


def test_load_idx_dataset_errors(tmp_path):
    expected = "(?s)no-such-dir.*train-images-idx3-ubyte.*apt-get install dataset-fashion-mnist"
    with pytest.raises(PmoeError, match=expected):
        load_idx_dataset(tmp_path / "no-such-dir", "train")
    folder = fake_mnist(tmp_path / "data")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(PmoeError, match="t10k-labels-idx1-ubyte.*--data-dir"):
        load_idx_dataset(folder, "test")
    with pytest.raises(PmoeError, match="split"):
        load_idx_dataset(folder, "valid")
    write(folder / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(5, np.uint8)), gz=False)
    with pytest.raises(PmoeError, match="labels"):
        load_idx_dataset(folder, "test")


# ---------------------------------------------------------------- PatchDataset

def test_patch_dataset_validates_and_subsets():
    x, y, pos = torch.zeros(4, 6, 10), torch.tensor([1.0, -1, 1, -1]), torch.tensor([0, 5, 2, 3])
    ds = PatchDataset(x, y, pos, grid=(2, 3), patch_shape=(2, 5), meta={"a": 1})
    assert (len(ds), ds.n, ds.d) == (4, 6, 10)
    sub = ds.subset(torch.tensor([3, 1]))
    assert len(sub) == 2 and sub.y.tolist() == [-1, -1] and sub.disc_pos.tolist() == [3, 5]
    assert sub.grid == (2, 3) and sub.meta == {"a": 1}
    bad = {"x": dict(x=torch.zeros(4, 60)), "x dtype": dict(x=torch.zeros(4, 6, 10, dtype=torch.float64)),
           "y": dict(y=torch.tensor([1.0, 0, 1, -1])), "y shape": dict(y=y[:3]),
           "pos": dict(disc_pos=torch.tensor([0, 6, 0, 0])), "pos dtype": dict(disc_pos=pos.int()),
           "grid": dict(grid=(2, 2)), "patch_shape": dict(patch_shape=(3, 3))}
    for name, change in bad.items():
        args = dict(x=x, y=y, disc_pos=pos) | change
        with pytest.raises(PmoeError, match="PatchDataset"):
            PatchDataset(**args)


# ---------------------------------------------------------------- synthetic data

@pytest.mark.parametrize("similarity", [0.0, 0.3, 0.9])
def test_synthetic_patterns_realise_similarity(similarity):
    cfg = SyntheticConfig(d=20, num_irrelevant=6, similarity=similarity, pattern_scale=2.5)
    o, q = synthetic_patterns(cfg, patterns_seed=3)
    p = torch.cat([o, q]).double()  # (8, d)
    assert torch.allclose(p.norm(dim=1), torch.full((8,), 2.5, dtype=torch.float64))
    cos = (p @ p.T) / 2.5**2
    resembles = torch.tensor([0, 1] + [i % 2 for i in range(6)])  # which o each pattern is or resembles
    expected = torch.zeros(8, 8, dtype=torch.float64)
    for i in range(8):
        for j in range(8):
            if i == j:
                expected[i, j] = 1
            elif resembles[i] == resembles[j]:
                expected[i, j] = similarity**2 if i >= 2 and j >= 2 else similarity
    torch.testing.assert_close(cos, expected, atol=1e-12, rtol=0)


def test_synthetic_samples_without_noise_are_exact_patterns():
    cfg = SyntheticConfig(n=7, d=16, num_irrelevant=4, similarity=0.5, noise=0.0)
    ds = make_synthetic(cfg, 200, seed=1, patterns_seed=2)
    o, q = (t.float() for t in synthetic_patterns(cfg, patterns_seed=2))
    assert ds.x.shape == (200, 7, 16) and ds.x.dtype == torch.float32 and ds.grid is None
    assert (ds.y == 1).sum() == 100 and (ds.y == -1).sum() == 100
    rows = torch.arange(200)
    expected_disc = torch.where((ds.y > 0)[:, None], o[0], o[1])  # (N, d)
    assert torch.equal(ds.x[rows, ds.disc_pos], expected_disc)
    others = torch.ones(200, 7, dtype=torch.bool)
    others[rows, ds.disc_pos] = False
    rest = ds.x[others]  # (N*(n-1), d)
    match = (rest[:, None, :] == q[None]).all(-1)  # (N*(n-1), M)
    assert (match.sum(1) == 1).all(), "every other patch is exactly one irrelevant pattern"
    assert (match.sum(0) > 0).all(), "all irrelevant patterns are used"
    counts = torch.bincount(ds.disc_pos, minlength=7)
    assert (counts > 10).all(), "discriminative positions spread over all patches"


def test_synthetic_noise_and_determinism():
    cfg = SyntheticConfig(noise=0.3)
    a, b = make_synthetic(cfg, 100, seed=5), make_synthetic(cfg, 100, seed=5)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.disc_pos, b.disc_pos)
    assert not torch.equal(make_synthetic(cfg, 100, seed=6).x, a.x)
    o, _ = synthetic_patterns(cfg)
    resid = a.x[torch.arange(100), a.disc_pos].double() - torch.where((a.y > 0)[:, None], o[0], o[1])
    assert abs(resid.std().item() - 0.3) < 0.02 and abs(resid.mean().item()) < 0.02
    odd = make_synthetic(cfg, 11, seed=0)
    assert (odd.y == 1).sum() == 6
    assert a.meta["seed"] == 5 and a.meta["noise"] == 0.3 and a.meta["name"] == "synthetic"


@pytest.mark.parametrize("field, value", [("n", 0), ("num_irrelevant", 0), ("d", 9), ("similarity", 1.0),
                                          ("similarity", -0.1), ("noise", -1.0), ("pattern_scale", 0.0)])
def test_synthetic_config_validation(field, value):
    with pytest.raises(PmoeError, match=field):
        SyntheticConfig(**{"d": 10, field: value})


# ---------------------------------------------------------------- patch canvases

def test_patch_canvas_structure(tmp_path):
    folder = fake_mnist(tmp_path / "data", gz=False)
    cfg = PatchCanvasConfig(grid=3, classes=(4, 7), data_dir=str(folder))
    for split in ("train", "test"):
        ds = make_patch_canvas(cfg, split, 300, seed=0)
        assert ds.x.shape == (300, 9, 784) and ds.grid == (3, 3) and ds.patch_shape == (28, 28)
        assert (ds.y == 1).sum() == 150
        cls, is_test = identify(ds.x)  # (N, n) each
        assert (is_test == (split == "test")).all(), "canvases use only their own split's images"
        in_pair = np.isin(cls, [4, 7])
        assert (in_pair.sum(1) == 1).all(), "exactly one patch of the class pair"
        rows = np.arange(300)
        assert in_pair[rows, ds.disc_pos.numpy()].all()
        np.testing.assert_array_equal(cls[rows, ds.disc_pos.numpy()], np.where(ds.y.numpy() > 0, 4, 7))
        assert set(np.unique(cls[~in_pair])) == set(range(10)) - {4, 7}, "irrelevant patches from all other classes"
        assert (torch.bincount(ds.disc_pos, minlength=9) > 10).all()
    again = make_patch_canvas(cfg, "test", 300, seed=0)
    assert torch.equal(again.x, ds.x) and torch.equal(again.y, ds.y) and torch.equal(again.disc_pos, ds.disc_pos)
    assert not torch.equal(make_patch_canvas(cfg, "test", 300, seed=1).x, ds.x)
    image = canvas_image(ds, 5)  # (84, 84)
    assert image.shape == (84, 84)
    r, c = divmod(int(ds.disc_pos[5]), 3)
    assert torch.equal(image[28 * r:28 * (r + 1), 28 * c:28 * (c + 1)], ds.x[5, ds.disc_pos[5]].reshape(28, 28))


def test_patch_canvas_validation(tmp_path):
    folder = str(fake_mnist(tmp_path / "data"))
    with pytest.raises(PmoeError, match="grid"):
        PatchCanvasConfig(grid=0, data_dir=folder)
    with pytest.raises(PmoeError, match="distinct"):
        PatchCanvasConfig(classes=(3, 3), data_dir=folder)
    with pytest.raises(PmoeError, match="pair"):
        PatchCanvasConfig(classes=(1, 2, 3), data_dir=folder)
    with pytest.raises(PmoeError, match="class 42"):
        make_patch_canvas(PatchCanvasConfig(classes=(1, 42), data_dir=folder), "train", 10, 0)
    with pytest.raises(PmoeError, match="num_samples"):
        make_patch_canvas(PatchCanvasConfig(data_dir=folder), "train", 1, 0)
    with pytest.raises(PmoeError, match="nowhere"):
        make_patch_canvas(PatchCanvasConfig(data_dir=str(tmp_path / "nowhere")), "train", 10, 0)
    with pytest.raises(PmoeError, match="canvas_image"):
        canvas_image(make_synthetic(SyntheticConfig(), 2, 0), 0)


# ---------------------------------------------------------------- registry

def test_make_dataset(tmp_path):
    assert DATASETS == ("synthetic", "fashion-patches")
    with pytest.raises(PmoeError, match="synthetic, fashion-patches"):
        make_dataset("cifar", "train", 10, 0)
    with pytest.raises(PmoeError, match="(?s)colour.*similarity"):
        make_dataset("synthetic", "train", 10, 0, colour=1)
    with pytest.raises(PmoeError, match="split"):
        make_dataset("synthetic", "val", 10, 0)
    train = make_dataset("synthetic", "train", 50, 0, noise=0.0, n=4)
    test = make_dataset("synthetic", "test", 50, 0, noise=0.0, n=4)
    assert train.meta["split"] == "train" and test.meta["split"] == "test" and train.n == 4
    assert not torch.equal(train.x, test.x)
    assert torch.equal(torch.unique(train.x.reshape(-1, 64), dim=0), torch.unique(test.x.reshape(-1, 64), dim=0)), \
        "train and test share their patterns"
    folder = fake_mnist(tmp_path / "data")
    ds = make_dataset("fashion-patches", "test", 20, 3, data_dir=str(folder), grid=2, classes=[0, 1])
    assert ds.x.shape == (20, 4, 784) and ds.meta["classes"] == (0, 1) and ds.meta["split"] == "test"
    assert torch.equal(ds.x, make_patch_canvas(PatchCanvasConfig(2, (0, 1), str(folder)), "test", 20, 3).x)


@pytest.mark.skipif(not os.path.isdir(DEFAULT_DATA_DIR), reason=f"{DEFAULT_DATA_DIR} is missing")
def test_real_fashion_mnist():
    images, labels = load_idx_dataset(DEFAULT_DATA_DIR, "train")
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    assert np.bincount(labels).tolist() == [6000] * 10
    assert load_idx_dataset(DEFAULT_DATA_DIR, "test")[0].shape == (10000, 28, 28)
    ds = make_dataset("fashion-patches", "train", 16, 0)
    assert ds.x.shape == (16, 16, 784) and 0 <= ds.x.min() and ds.x.max() <= 1 and (ds.y == 1).sum() == 8
    flat = images.reshape(60000, -1)
    for i in range(4):
        pixels = torch.round(ds.x[i, ds.disc_pos[i]] * 255).to(torch.uint8).numpy()
        found = np.flatnonzero((flat == pixels).all(1))
        assert len(found) >= 1 and labels[found[0]] == (1 if ds.y[i] > 0 else 9), "disc patch is a trouser or boot"
