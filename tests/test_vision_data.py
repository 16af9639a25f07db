"""pmoe.data.vision: every on-disk format on tiny files, splits, subsets, augmentation, batches, spurious sets."""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pmoe.data.vision import (IMAGE_DATASETS, STATS, Augment, ImageBatches, ImageDataset, ImageFiles, attribute,
                              attribute_contrast, augment_batch, balanced_subset, channel_stats, class_sets,
                              crop_flip, make_image_dataset, make_spurious, seeded_generator, stamp_corner,
                              stratified_split)
from pmoe.errors import PmoeError

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


# ---------------------------------------------------------------- tiny files of each format

def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    data = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, ">u4").tobytes() + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def fake_idx(folder: Path, gz: bool, per_class: int = 3) -> Path:
    """10 classes × per_class images per split, labels i % 10; image i has value 20·(i % 10) + 1 (+ 5 in test)
    everywhere but pixel (27, 27), which holds i % 256."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, offset in (("train", 0), ("t10k", 5)):
        n = 10 * per_class
        images = np.repeat((20 * (np.arange(n) % 10) + 1 + offset)[:, None, None], 28, 1).repeat(28, 2)
        images[:, 27, 27] = np.arange(n) % 256
        write_idx(folder / f"{prefix}-images-idx3-ubyte{'.gz' if gz else ''}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{'.gz' if gz else ''}", np.arange(n) % 10, gz)
    return folder


def cifar_rows(n: int, start: int) -> np.ndarray:
    """(n, 3072) uint8 rows: image i has R = start + i everywhere, G = 2, B = 3, and R pixel (5, 7) = 250."""
    rows = np.zeros((n, 3, 32, 32), np.uint8)
    rows[:, 0] = (start + np.arange(n))[:, None, None]
    rows[:, 1], rows[:, 2] = 2, 3
    rows[:, 0, 5, 7] = 250
    return rows.reshape(n, 3072)


def dump(path: Path, obj: dict, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def fake_cifar10(parent: Path) -> Path:
    """cifar-10-batches-py/ with 5 train batches of 2 images and a test batch of 3; labels = image index % 10."""
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(1, 6):
        dump(folder / f"data_batch_{b}", {b"batch_label": b"x", b"data": cifar_rows(2, 2 * (b - 1)),
                                          b"labels": [(2 * (b - 1) + i) % 10 for i in range(2)]})
    dump(folder / "test_batch", {b"data": cifar_rows(3, 100), b"labels": [0, 1, 2]}, protocol=4)
    dump(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072})
    return folder


def fake_cifar100(parent: Path) -> Path:
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", 6), ("test", 4)):
        dump(folder / name, {b"data": cifar_rows(n, 10), b"fine_labels": [99 - i for i in range(n)],
                             b"coarse_labels": [19 - i for i in range(n)]})
    dump(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                           b"coarse_label_names": [f"s{i}".encode() for i in range(20)]})
    return folder


CELEBA_ATTRS = ["Black_Hair", "Blond_Hair", "Eyeglasses", "Smiling"]


def celeba_attrs(i: int) -> dict[str, int]:
    """Attributes of fake image i: Smiling and Eyeglasses count in binary, hair alternates every 4 images."""
    return {"Black_Hair": (i // 4) % 2, "Blond_Hair": 1 - (i // 4) % 2, "Eyeglasses": i % 2, "Smiling": (i // 2) % 2}


def fake_celeba(root: Path, n: int = 12, nested: bool = False) -> Path:
    """n 20×24 (W×H) PNGs named like CelebA's; image i: value 10·i % 250 in its central 20×20 square, 255 above and
    below; partition: i % 3 (train, val, test in turn)."""
    img_dir = root / "img_align_celeba" / ("img_align_celeba" if nested else "")
    img_dir.mkdir(parents=True)
    names = [f"{i + 1:06d}.png" for i in range(n)]
    for i, name in enumerate(names):
        a = np.full((24, 20, 3), 255, np.uint8)
        a[2:22] = 10 * i % 250
        Image.fromarray(a).save(img_dir / name)
    rows = [f"{name} " + " ".join(f"{2 * celeba_attrs(i)[a] - 1:2d}" for a in CELEBA_ATTRS)
            for i, name in enumerate(names)]
    (root / "list_attr_celeba.txt").write_text(f"{n}\n{' '.join(CELEBA_ATTRS)} \n" + "\n".join(rows) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{name} {i % 3}\n" for i, name in enumerate(names)))
    return root


def fake_folder(root: Path, splits: tuple[str, ...] = ("train", "val"), size: tuple[int, int] = (6, 5)) -> Path:
    """root/<split>/{cat,dog}/: 3 cat PNGs and 2 dog JPEGs per split, constant 40 (cat) and 200 (dog)."""
    for split in splits:
        for cls, value, count, ext in (("dog", 200, 2, "jpg"), ("cat", 40, 3, "png")):
            (root / split / cls).mkdir(parents=True)
            for k in range(count):
                Image.new("RGB", size, (value,) * 3).save(root / split / cls / f"{k}.{ext}")
    return root


def in_memory(n_per_class: int = 10, classes: int = 3, hw: int = 6) -> ImageDataset:
    """C classes × n_per_class uint8 RGB images, image i constant i % 256."""
    n = classes * n_per_class
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, hw, hw).clone()
    return ImageDataset(images, torch.arange(n) % classes, [f"k{c}" for c in range(classes)], *STATS["cifar10"])


# ---------------------------------------------------------------- formats

@pytest.mark.parametrize("gz", [False, True])
def test_idx_images(tmp_path, gz):
    folder = fake_idx(tmp_path / "mnist", gz)
    train, test = (make_image_dataset("fashion-mnist", s, data_dir=folder) for s in ("train", "test"))
    assert train.images.shape == (30, 1, 28, 28) and train.images.dtype == torch.uint8 and train.in_memory
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == [i % 10 for i in range(30)]
    assert train.classes[9] == "Ankle boot" and len(test) == 30 and train.image_shape == (1, 28, 28)
    assert int(train.images[4, 0, 13, 17]) == 81 and int(train.images[4, 0, 27, 27]) == 4
    assert int(test.images[4, 0, 0, 0]) == 86
    x, y = train[4]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 4
    torch.testing.assert_close(x[0, :27], torch.full((27, 28), (81 / 255 - 0.2860) / 0.3530))
    assert make_image_dataset("mnist", "train", data_dir=folder).classes == [str(d) for d in range(10)]


def test_cifar10(tmp_path):
    folder = fake_cifar10(tmp_path)
    for data_dir in (tmp_path, folder):  # the folder or its parent
        train = make_image_dataset("cifar10", "train", data_dir=data_dir)
        assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
        assert train.labels.tolist() == list(range(10)) and train.classes == [f"c{i}" for i in range(10)]
    assert train.images[:, 0, 0, 0].tolist() == list(range(10))  # batches in order 1..5
    assert int(train.images[3, 0, 5, 7]) == 250 and int(train.images[3, 1, 5, 7]) == 2
    assert int(train.images[3, 2, 31, 31]) == 3
    test = make_image_dataset("cifar10", "test", data_dir=tmp_path)
    assert len(test) == 3 and test.images[:, 0, 0, 0].tolist() == [100, 101, 102]
    assert train.mean == STATS["cifar10"][0]


def test_cifar100_fine_and_coarse(tmp_path):
    fake_cifar100(tmp_path)
    fine = make_image_dataset("cifar100", "train", data_dir=tmp_path)
    assert fine.labels.tolist() == [99, 98, 97, 96, 95, 94] and len(fine.classes) == 100 and fine.classes[99] == "f99"
    coarse = make_image_dataset("cifar100", "test", data_dir=tmp_path, coarse=True)
    assert coarse.labels.tolist() == [19, 18, 17, 16] and coarse.classes[0] == "s0" and len(coarse.classes) == 20
    assert int(coarse.images[2, 0, 1, 1]) == 12


class _Boom:
    """Unpickling it would create the file `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("case", ["truncated", "garbage", "code", "no dict", "missing key", "bad shape"])
def test_cifar_rejects_bad_pickles_naming_the_file(tmp_path, case):
    folder = fake_cifar10(tmp_path)
    path = folder / "data_batch_3"
    good = path.read_bytes()
    content = {"truncated": good[: len(good) // 2], "garbage": b"not a pickle at all",
               "code": pickle.dumps({b"data": _Boom(tmp_path / "pwned"), b"labels": []}),
               "no dict": pickle.dumps([1, 2]),
               "missing key": pickle.dumps({b"data": cifar_rows(2, 0)}),
               "bad shape": pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})}[case]
    path.write_bytes(content)
    with pytest.raises(PmoeError, match="data_batch_3"):
        make_image_dataset("cifar10", "train", data_dir=tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_celeba(tmp_path):
    root = fake_celeba(tmp_path / "celeba")
    train = make_image_dataset("celeba", "train", data_dir=tmp_path, image_size=8)  # the parent works too
    assert not train.in_memory and len(train) == 4 and train.image_shape == (3, 8, 8)
    idx = [0, 3, 6, 9]  # partition 0
    want = [2 * celeba_attrs(i)["Smiling"] + celeba_attrs(i)["Eyeglasses"] for i in idx]
    assert train.labels.tolist() == want and train.classes[1] == "Smiling=0,Eyeglasses=1" and train.num_classes == 4
    assert train.attributes["Blond_Hair"].tolist() == [bool(celeba_attrs(i)["Blond_Hair"]) for i in idx]
    batch = train.images[torch.arange(4)]
    assert batch.shape == (4, 3, 8, 8) and batch.dtype == torch.uint8
    assert torch.equal(batch, torch.tensor([10 * i for i in idx], dtype=torch.uint8).view(4, 1, 1, 1).expand_as(batch))
    stretched = make_image_dataset("celeba", "val", data_dir=root, image_size=8, center_crop=False).images[0]
    assert int(stretched[0, 0, 0]) > 50 and int(stretched[0, 4, 4]) == 10  # image 1: the white strips stay
    own = make_image_dataset("celeba", "test", data_dir=root, image_size=None, attrs="Smiling")
    assert own.image_shape == (3, 24, 20) and own.classes == ["Smiling=0", "Smiling=1"]
    assert own.labels.tolist() == [celeba_attrs(i)["Smiling"] for i in (2, 5, 8, 11)]
    x, y = own[0]
    assert x.shape == (3, 24, 20) and y == own.labels[0]
    mean, std = (torch.tensor(v) for v in STATS["imagenet"])
    torch.testing.assert_close(x[:, 0, 0], (1 - mean) / std)  # a white pixel
    assert len(make_image_dataset("celeba", "train", data_dir=fake_celeba(tmp_path / "kaggle", nested=True))) == 4


@pytest.mark.parametrize("case", ["count", "value", "short row", "partition", "attribute", "no images", "no attrs"])
def test_celeba_errors(tmp_path, case):
    root = fake_celeba(tmp_path)
    attr, part = root / "list_attr_celeba.txt", root / "list_eval_partition.txt"
    lines = attr.read_text().splitlines()
    options, match = {}, "list_attr_celeba.txt"
    if case == "count":
        attr.write_text("\n".join(["13"] + lines[1:]))
    elif case == "value":
        attr.write_text("\n".join(lines[:3] + [lines[3].replace("-1", " 0", 1)] + lines[4:]))
    elif case == "short row":
        attr.write_text("\n".join(lines[:3] + [lines[3].rsplit(" ", 1)[0]] + lines[4:]))
    elif case == "partition":
        part.write_text("\n".join(part.read_text().splitlines()[:-1]))
        match = "list_eval_partition.txt.*000012.png"
    elif case == "attribute":
        options, match = {"attrs": ("Smiling", "Wings")}, "Wings.*valid: Black_Hair"
    elif case == "no images":
        (root / "img_align_celeba").rename(root / "elsewhere")
        match = "img_align_celeba"
    else:
        attr.unlink()
        match = "list_attr_celeba.txt.*CelebA"
    with pytest.raises(PmoeError, match=match):
        make_image_dataset("celeba", "train", data_dir=root, **options)


def test_image_folder(tmp_path):
    root = fake_folder(tmp_path / "tree")
    train = make_image_dataset("imagefolder", "train", data_dir=root)
    assert train.classes == ["cat", "dog"] and train.labels.tolist() == [0, 0, 0, 1, 1]
    assert isinstance(train.images, ImageFiles) and train.images[torch.arange(0)].shape == (0, 3, 5, 6)
    images = train.images[torch.arange(5)]
    assert images.shape == (5, 3, 5, 6) and int(images[0, 1, 2, 3]) == 40
    assert (images[3:].int() - 200).abs().max() <= 2  # JPEG
    test = make_image_dataset("imagefolder", "test", data_dir=root, image_size=4)  # val/ serves as test/ here
    assert test.image_shape == (3, 4, 4) and len(test) == 5 and test.mean == STATS["imagenet"][0]
    with pytest.raises(PmoeError, match="val/ folder serves as the test split: set val_fraction > 0"):
        make_image_dataset("imagefolder", "val", data_dir=root)
    full = fake_folder(tmp_path / "full", splits=("train", "val", "test"))
    with pytest.raises(PmoeError, match="val_fraction must be 0"):
        make_image_dataset("imagefolder", "train", data_dir=full, val_fraction=0.5)


def test_image_folder_without_val_holds_one_out(tmp_path):
    root = fake_folder(tmp_path, splits=("train", "test"))
    opts = {"data_dir": root, "val_fraction": 0.5, "split_seed": 3}
    train, val = (make_image_dataset("imagefolder", s, **opts) for s in ("train", "val"))
    assert sorted(train.images.paths + val.images.paths) == sorted(
        make_image_dataset("imagefolder", "train", data_dir=root).images.paths)
    assert val.labels.tolist() == [0, 0, 1]  # round(0.5 · 3) = 2 cats, round(0.5 · 2) = 1 dog
    assert len(make_image_dataset("imagefolder", "test", **opts)) == 5


def test_image_folder_size_mismatch_names_the_file(tmp_path):
    root = fake_folder(tmp_path)
    Image.new("RGB", (9, 9)).save(root / "train" / "dog" / "odd.png")
    ds = make_image_dataset("imagefolder", "train", data_dir=root)
    with pytest.raises(PmoeError, match="odd.png is 9×9"):
        ds.images[torch.arange(len(ds))]
    (root / "train" / "cat" / "0.png").write_bytes(b"not an image")
    with pytest.raises(PmoeError, match="0.png cannot be decoded"):
        make_image_dataset("imagefolder", "train", data_dir=root, image_size=4)[0]


@pytest.mark.parametrize("name,expect", [("cifar10", "data_batch_1.*CIFAR-10 and CIFAR-100 download page"),
                                         ("cifar100", "cifar-100-python.*train, test and meta"),
                                         ("celeba", "list_attr_celeba.txt.*CelebA page"),
                                         ("mnist", "apt-get install dataset-fashion-mnist"),
                                         ("imagefolder", "no train/ folder")])
def test_missing_data_dir_says_what_is_expected(tmp_path, name, expect):
    with pytest.raises(PmoeError, match=expect):
        make_image_dataset(name, "train", data_dir=tmp_path / "nowhere")


def test_missing_cifar_batch_and_registry_errors(tmp_path):
    (fake_cifar10(tmp_path) / "data_batch_4").unlink()
    with pytest.raises(PmoeError, match="lacks data_batch_4"):
        make_image_dataset("cifar10", "test", data_dir=tmp_path)
    with pytest.raises(PmoeError, match="valid names: mnist"):
        make_image_dataset("svhn", "train")
    with pytest.raises(PmoeError, match="unknown field.*coarse.*valid: val_fraction, split_seed"):
        make_image_dataset("cifar10", "train", data_dir=tmp_path, coarse=True)
    with pytest.raises(PmoeError, match="split must be one of"):
        make_image_dataset("cifar10", "dev", data_dir=tmp_path)
    with pytest.raises(PmoeError, match="needs a data_dir"):
        make_image_dataset("imagefolder", "train")
    with pytest.raises(PmoeError, match="no val split of its own: set val_fraction"):
        make_image_dataset("cifar10", "val", data_dir=tmp_path)
    assert {"mnist", "fashion-mnist", "cifar10", "cifar100", "celeba", "imagefolder",
            "fashion-patches-image", "fashion-spurious", "celeba-spurious", "domains"} == set(IMAGE_DATASETS)


# ---------------------------------------------------------------- splits and subsets

def test_val_hold_out_is_stratified_disjoint_and_seeded(tmp_path):
    folder = fake_idx(tmp_path, gz=True, per_class=10)
    opts = {"data_dir": folder, "val_fraction": 0.2, "split_seed": 5}
    train, val = (make_image_dataset("mnist", s, **opts) for s in ("train", "val"))
    assert len(train) == 80 and len(val) == 20 and torch.bincount(val.labels).tolist() == [2] * 10
    def ids(ds: ImageDataset) -> set[int]:
        return set(ds.images[:, 0, 27, 27].tolist())

    assert not ids(train) & ids(val) and len(ids(train) | ids(val)) == 100
    assert torch.equal(make_image_dataset("mnist", "val", **opts).images, val.images)
    assert not torch.equal(make_image_dataset("mnist", "val", **{**opts, "split_seed": 6}).images, val.images)
    kept, held = stratified_split(torch.arange(10) % 2, 0.0, 0)
    assert kept.tolist() == list(range(10)) and held.numel() == 0


def test_class_subset_relabels_in_the_given_order_after_the_val_hold_out(tmp_path):
    folder = fake_idx(tmp_path, gz=False, per_class=10)  # image i of the train split has label i % 10
    opts = {"data_dir": folder, "val_fraction": 0.2}
    full_val = make_image_dataset("fashion-mnist", "val", **opts)
    val = make_image_dataset("fashion-mnist", "val", **opts, class_subset=[9, 5])
    assert val.classes == ["Ankle boot", "Sandal"] and val.meta["classes"] == [9, 5]
    expected = full_val.labels[(full_val.labels == 9) | (full_val.labels == 5)]
    assert val.labels.tolist() == [0 if c == 9 else 1 for c in expected.tolist()]  # order and hold-out kept
    assert val.mean == full_val.mean and len(make_image_dataset("fashion-mnist", "test", data_dir=folder,
                                                                class_subset=[1, 2, 3])) == 30
    for bad in ([9, 10], [3, 3], [4]):
        with pytest.raises(PmoeError, match=r"class_subset must be 2 or more distinct label indices in \[0, 10\)"):
            make_image_dataset("fashion-mnist", "test", data_dir=folder, class_subset=bad)


def test_balanced_subset():
    ds = in_memory(n_per_class=10, classes=3)
    sub = balanced_subset(ds, 8, seed=1)
    assert sorted(torch.bincount(sub.labels).tolist()) == [2, 3, 3]
    assert torch.equal(balanced_subset(ds, 8, seed=1).images, sub.images)
    bigger = balanced_subset(ds, 20, seed=1)
    assert set(sub.images[:, 0, 0, 0].tolist()) <= set(bigger.images[:, 0, 0, 0].tolist())  # nested
    assert balanced_subset(ds, 30).labels.tolist() == ds.labels.tolist()
    with pytest.raises(PmoeError, match="needs 9 samples of class 'k2' but the data set has 7"):  # 10, 10, 7
        balanced_subset(ds.subset(torch.cat([torch.nonzero(ds.labels < 2)[:, 0], torch.arange(2, 23, 3)])), 27)
    with pytest.raises(PmoeError, match="num_samples must lie in"):
        balanced_subset(ds, 31)


def test_subset_keeps_groups_attributes_and_files(tmp_path):
    ds = in_memory()
    ds.groups, ds.attributes["a"] = torch.arange(30) // 10, torch.arange(30) * 2
    sub = ds.subset(torch.tensor([29, 3]))
    assert sub.groups.tolist() == [2, 0] and sub.attributes["a"].tolist() == [58, 6] and sub.labels.tolist() == [2, 0]
    assert ds.subset(ds.labels == 1).images[:, 0, 0, 0].tolist() == list(range(1, 30, 3))
    files = make_image_dataset("imagefolder", "train", data_dir=fake_folder(tmp_path))
    assert files.subset(torch.tensor([4])).images.paths == [files.images.paths[4]]


def test_image_dataset_validates():
    ds = in_memory()
    with pytest.raises(PmoeError, match="labels of the image data set must lie in"):
        ImageDataset(ds.images, ds.labels + 1, ds.classes, ds.mean, ds.std)
    with pytest.raises(PmoeError, match="one entry per channel"):
        ImageDataset(ds.images, ds.labels, ds.classes, (0.5,), (0.2,))
    with pytest.raises(PmoeError, match="uint8"):
        ImageDataset(ds.images.float(), ds.labels, ds.classes, ds.mean, ds.std)


# ---------------------------------------------------------------- augmentation

def test_crop_flip_by_hand():
    img = torch.arange(12, dtype=torch.uint8).view(1, 1, 3, 4) + 1  # rows [1 2 3 4], [5 6 7 8], [9 10 11 12]
    out = crop_flip(img.expand(3, 2, 3, 4), 1, torch.tensor([0, 2, 1]), torch.tensor([0, 1, 2]),
                    torch.tensor([False, True, True]))
    assert out.shape == (3, 2, 3, 4) and out.dtype == torch.uint8 and torch.equal(out[:, 0], out[:, 1])
    assert out[0, 0].tolist() == [[0, 0, 0, 0], [0, 1, 2, 3], [0, 5, 6, 7]]  # shifted down-right by 1
    assert out[1, 0].tolist() == [[8, 7, 6, 5], [12, 11, 10, 9], [0, 0, 0, 0]]  # shifted up, mirrored
    assert out[2, 0].tolist() == [[0, 4, 3, 2], [0, 8, 7, 6], [0, 12, 11, 10]]  # shifted left, mirrored


def test_augment_batch_draws_seeded_crops_and_flips():
    x = torch.randint(0, 256, (16, 3, 5, 6), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    aug = Augment(pad=2)
    out = augment_batch(x, aug, seeded_generator(7))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out, augment_batch(x, aug, seeded_generator(7)))
    assert not torch.equal(out, augment_batch(x, aug, seeded_generator(8)))
    padded = F.pad(x, (2, 2, 2, 2))
    for b in range(16):  # each output is one window of its padded image, mirrored or not
        windows = [w for dy in range(5) for dx in range(5) for w in
                   (padded[b, :, dy:dy + 5, dx:dx + 6], padded[b, :, dy:dy + 5, dx:dx + 6].flip(-1))]
        assert any(torch.equal(out[b], w) for w in windows)
    assert torch.equal(augment_batch(x, Augment(pad=0, flip=False), seeded_generator(1)), x)


# ---------------------------------------------------------------- batches

def test_image_batches_in_memory():
    ds = in_memory()
    it = ImageBatches(ds, 8, shuffle=True, seed=3)
    assert len(it) == 4 and len(ImageBatches(ds, 8, drop_last=True)) == 3
    epoch0 = list(it)
    epoch1 = list(it)
    assert [x.shape[0] for x, _ in epoch0] == [8, 8, 8, 6] and epoch0[0][0].dtype == torch.float32
    seen = torch.cat([x[:, 0, 0, 0] for x, _ in epoch0])
    want = (ds.images[:, 0, 0, 0].float() / 255 - ds.mean[0]) / ds.std[0]
    torch.testing.assert_close(seen.sort().values, want.sort().values)
    index = ((seen * ds.std[0] + ds.mean[0]) * 255).round().long()  # image i has value i
    assert torch.equal(torch.cat([y for _, y in epoch0]), ds.labels[index])
    assert not torch.equal(seen, torch.cat([x[:, 0, 0, 0] for x, _ in epoch1]))
    again = ImageBatches(ds, 8, shuffle=True, seed=3)
    again.epoch = 1  # resume
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch1, again))
    ordered = torch.cat([y for _, y in ImageBatches(ds, 7)])
    assert torch.equal(ordered, ds.labels)
    assert sum(len(y) for _, y in ImageBatches(ds, 8, drop_last=True, shuffle=True)) == 24


def test_image_batches_on_device_match_cpu(device):
    ds = in_memory()
    opts = {"shuffle": True, "augment": Augment(pad=2), "seed": 5}
    for (x, y), (cx, cy) in zip(ImageBatches(ds, 8, device=device, **opts), ImageBatches(ds, 8, **opts)):
        assert x.device.type == y.device.type == device.type
        torch.testing.assert_close(x.cpu(), cx)
        assert torch.equal(y.cpu(), cy)


def test_image_batches_files_match_in_memory_with_workers(tmp_path):
    files = make_image_dataset("imagefolder", "train", data_dir=fake_folder(tmp_path))
    memory = ImageDataset(files.images[torch.arange(len(files))], files.labels, files.classes, files.mean, files.std)
    opts = {"shuffle": True, "augment": Augment(pad=1), "seed": 4}
    want = list(ImageBatches(memory, 2, **opts))
    for workers in (0, 2):
        got = list(ImageBatches(files, 2, num_workers=workers, **opts))
        assert len(got) == len(want) == 3
        for (x, y), (wx, wy) in zip(got, want):
            assert torch.equal(x, wx) and torch.equal(y, wy)


# ---------------------------------------------------------------- spurious correlations

def binary_with_nuisance(n: int = 200) -> ImageDataset:
    """Binary labels alternating; attribute 'z' random (seeded); images constant index."""
    ds = in_memory(n_per_class=n // 2, classes=2)
    ds.attributes["z"] = torch.rand(n, generator=torch.Generator().manual_seed(0)) < 0.5
    return ds


def group_counts(ds: ImageDataset) -> list[int]:
    return torch.bincount(ds.groups, minlength=4).tolist()


def test_make_spurious_exact_ratios():
    base = binary_with_nuisance()
    train = make_spurious(base, lambda d: d.labels, attribute("z"), 0.95, 80, seed=1)
    assert group_counts(train) == [38, 2, 2, 38] and torch.bincount(train.labels).tolist() == [40, 40]
    assert torch.equal(train.groups, 2 * train.labels + train.attributes["z"].long())
    assert torch.equal(train.attributes["nuisance"], train.attributes["z"].long())
    test = make_spurious(base, lambda d: d.labels, attribute("z"), 0.5, 80, seed=1)
    assert group_counts(test) == [20, 20, 20, 20]
    most = make_spurious(base, lambda d: d.labels, attribute("z"), 0.95)  # as many as the groups allow
    m = len(most) // 2
    agree = int(0.95 * m + 0.5)
    assert group_counts(most) == [agree, m - agree, m - agree, agree]
    pools = [[int(((base.labels == c) & (base.attributes["z"] == v)).sum()) for v in (c, 1 - c)] for c in (0, 1)]
    more = int(0.95 * (m + 1) + 0.5)
    assert any(a < more or d < m + 1 - more for a, d in pools)  # one more per class would not fit
    again = make_spurious(base, lambda d: d.labels, attribute("z"), 0.95, 80, seed=1)
    assert torch.equal(again.images, train.images)
    with pytest.raises(PmoeError, match="num_samples must be even"):
        make_spurious(base, lambda d: d.labels, attribute("z"), 0.95, 81)


def test_label_functions_and_stamp():
    ds = in_memory(n_per_class=2, classes=4, hw=6)
    assert class_sets((1, 3), (0,))(ds).tolist() == [0, 1, -1, 1] * 2
    ds.attributes.update(a=torch.tensor([1, 1, 0, 0, 1, 0, 1, 0]), b=torch.tensor([1, 0, 1, 0, 0, 0, 1, 1]))
    assert attribute_contrast("a", "b")(ds).tolist() == [-1, 1, 0, -1, 1, -1, -1, 0]
    stamped = stamp_corner(ds, size=2, value=255, seed=0)
    s = stamped.attributes["stamp"]
    assert s.sum() == 4 and (stamped.images[s, :, :2, :2] == 255).all()
    assert torch.equal(stamped.images[~s], ds.images[~s]) and torch.equal(stamped.images[s, :, 2:], ds.images[s, :, 2:])
    assert not (ds.images == 255).any()  # the base is left alone


def test_celeba_spurious(tmp_path):
    root = fake_celeba(tmp_path, n=48)
    opts = {"data_dir": root, "image_size": 4, "train_ratio": 0.75}
    # train = images i % 3 == 0 (16); Smiling = (i // 2) % 2, blond = 1 - (i // 4) % 2: 4 in each group
    assert group_counts(make_image_dataset("celeba-spurious", "train", **opts)) == [4, 1, 1, 4]
    train = make_image_dataset("celeba-spurious", "train", num_samples=8, **opts)
    assert group_counts(train) == [3, 1, 1, 3] and train.classes == ["not Smiling", "Smiling"]
    for i, (y, g) in enumerate(zip(train.labels.tolist(), train.groups.tolist())):
        k = int(Path(train.images.paths[i]).stem) - 1
        assert y == celeba_attrs(k)["Smiling"] and g == 2 * y + celeba_attrs(k)["Blond_Hair"]
    assert group_counts(make_image_dataset("celeba-spurious", "test", data_dir=root)) == [4, 4, 4, 4]


def test_fashion_spurious_and_canvas_on_fake_idx(tmp_path):
    folder = fake_idx(tmp_path, gz=False, per_class=40)
    train = make_image_dataset("fashion-spurious", "train", data_dir=folder, num_samples=40)
    assert group_counts(train) == [19, 1, 1, 19] and train.classes == ["T-shirt/top/Pullover", "Coat/Shirt"]
    stamped = train.attributes["stamp"]
    assert (train.images[stamped, 0, :4, :4] == 255).all() and not (train.images[~stamped, 0, :4, :4] == 255).any()
    original_class = (train.images[:, 0, 13, 13].long() - 1) // 20
    assert torch.equal(train.labels, torch.isin(original_class, torch.tensor([4, 6])).long())
    canvas = make_image_dataset("fashion-patches-image", "test", data_dir=folder, num_samples=6, classes=(1, 9))
    assert canvas.images.shape == (6, 1, 112, 112) and canvas.classes == ["class 9 (y=-1)", "class 1 (y=+1)"]
    pos = canvas.attributes["disc_pos"]
    patch = canvas.images[torch.arange(6), 0, pos // 4 * 28 + 3, pos % 4 * 28 + 3]  # a pixel of the class patch
    assert torch.equal((patch.long() - 6) // 20, torch.where(canvas.labels == 1, 1, 9))


# ---------------------------------------------------------------- the real Fashion-MNIST

@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="Fashion-MNIST not installed at " + FASHION_DIR)
def test_real_fashion_mnist():
    train = make_image_dataset("fashion-mnist", "train")
    test = make_image_dataset("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and len(test) == 10000
    assert torch.bincount(train.labels).tolist() == [6000] * 10 and train.classes[0] == "T-shirt/top"
    mean, std = channel_stats(train.images)
    assert abs(mean[0] - STATS["fashion-mnist"][0][0]) < 1e-4 and abs(std[0] - STATS["fashion-mnist"][1][0]) < 1e-4
    x, _ = next(iter(ImageBatches(train, 256, shuffle=True, augment=Augment())))
    assert x.shape == (256, 1, 28, 28) and abs(x.mean().item()) < 0.2 and abs(x.std().item() - 1) < 0.2
    spurious = make_image_dataset("fashion-spurious", "test")
    counts = group_counts(spurious)
    assert len(set(counts)) == 1 and counts[0] > 900
    canvas = make_image_dataset("fashion-patches-image", "train", num_samples=20)
    assert canvas.images.shape == (20, 1, 112, 112) and torch.bincount(canvas.labels).tolist() == [10, 10]
