"""Hostile image files and ImageFolder trees: corrupt, huge, 16-bit, hidden, empty, nested, linked, odd suffixes,
ImageNet-style val/ without test/; each is read right or refused with one PmoeError naming the culprit."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pmoe.cli import main
from pmoe.data.vision import ImageFiles, ImageFolderConfig, make_image_dataset
from pmoe.errors import PmoeError


def save(path: Path, value: int = 40, size: tuple[int, int] = (6, 5)) -> Path:
    """A constant grey RGB image file of `size` (W×H); the suffix picks the format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value,) * 3).save(path)
    return path


def tree(root: Path, splits: tuple[str, ...] = ("train",), per_class: int = 2, size: tuple[int, int] = (6, 5)) -> Path:
    """root/<split>/{cat,dog}/<k>.png: `per_class` PNGs each, constant 40 (cat) and 200 (dog)."""
    for split in splits:
        for cls, value in (("cat", 40), ("dog", 200)):
            for k in range(per_class):
                save(root / split / cls / f"{k}.png", value, size)
    return root


def folder(root: Path, split: str = "train", **options) -> list[str]:
    """The paths, relative to `root`, of split `split` of the tree at `root`."""
    ds = make_image_dataset("imagefolder", split, data_dir=root, **options)
    return [os.path.relpath(p, root) for p in ds.images.paths]


def grey(path: Path) -> list[int]:
    """The decoded file's red channel, row-major, after checking that it is grey (R = G = B)."""
    img = ImageFiles([str(path)])[0]
    assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2])
    return img[0].flatten().tolist()


def forged_bmp(path: Path, width: int, height: int) -> Path:
    """A 4×4 BMP whose header claims width × height."""
    Image.new("L", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    data[18:26] = struct.pack("<ii", width, height)
    path.write_bytes(bytes(data))
    return path


# ---------------------------------------------------------------- decoding

@pytest.mark.parametrize("case,match", [("idat", r"bad.png cannot be decoded as an image: SyntaxError: broken PNG"),
                                        ("truncated", "bad.png cannot be decoded as an image"),
                                        ("text", "bad.png cannot be decoded as an image"),
                                        ("folder", "bad.png cannot be read: Is a directory"),
                                        ("missing", "bad.png does not exist")])
def test_undecodable_files_are_one_error_naming_the_file(tmp_path, case, match):
    path = tmp_path / "bad.png"
    if case == "folder":
        path.mkdir()
    elif case != "missing":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
        data = bytearray(path.read_bytes())
        if case == "idat":  # the IDAT chunk's length field
            i = data.index(b"IDAT") - 4
            data[i:i + 4] = struct.pack(">I", 5)
        elif case == "truncated":
            data = data[: len(data) // 2]
        path.write_bytes(b"not an image" if case == "text" else bytes(data))
    with pytest.raises(PmoeError, match=match):
        ImageFiles([str(path)])[0]


@pytest.mark.filterwarnings("error")  # Pillow's DecompressionBombWarning must not leak either
def test_too_large_images_name_their_pixel_count_and_the_limit(tmp_path, monkeypatch):
    expect = f"huge.bmp is too large: 10,000,000,000 pixels, more than the limit of {Image.MAX_IMAGE_PIXELS:,} pixels"
    with pytest.raises(PmoeError, match=expect):
        ImageFiles([str(forged_bmp(tmp_path / "huge.bmp", 100000, 100000))])[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(PmoeError, match="a.png is too large: 400 pixels, more than the limit of 100 pixels"):
        ImageFiles([str(save(tmp_path / "a.png", size=(20, 20)))])[0]  # over twice the limit: Pillow's error
    with pytest.raises(PmoeError, match="b.png is too large: 144 pixels, more than the limit of 100 pixels"):
        ImageFiles([str(save(tmp_path / "b.png", size=(12, 12)))])[0]  # between: Pillow only warns
    assert ImageFiles([str(save(tmp_path / "c.png", size=(10, 10)))])[0].shape == (3, 10, 10)


SIXTEEN = np.array([[0, 128, 129, 1000], [25700, 32896, 65406, 65535]], np.uint16)
EIGHT = [0, 0, 1, 4, 100, 128, 254, 255]  # round(v / 257)


@pytest.mark.parametrize("suffix,modes", [(".png", ("I;16", "I")), (".tif", ("I;16", "I")), (".pgm", ("I",))])
def test_16_bit_grey_is_scaled_to_8_bits(tmp_path, suffix, modes):
    path = tmp_path / f"g{suffix}"
    Image.fromarray(SIXTEEN).save(path)
    with Image.open(path) as im:
        assert im.mode in modes
    assert grey(path) == EIGHT


def test_32_bit_integer_and_float_images(tmp_path):
    Image.fromarray(SIXTEEN.astype(np.int32)).save(tmp_path / "i.tif")
    assert grey(tmp_path / "i.tif") == EIGHT  # mode I within 0..65535: 16-bit values
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(PmoeError, match=r"wide.tif has 32-bit integer pixels \(mode I\) in 0..70000"):
        grey(tmp_path / "wide.tif")
    Image.fromarray(np.array([[0.0, 0.5]], np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(PmoeError, match=r"f.tif has 32-bit float pixels \(mode F\)"):
        grey(tmp_path / "f.tif")


def test_every_torchvision_suffix_and_gif_in_any_case(tmp_path):
    cat = tmp_path / "train" / "cat"
    lossless = ["a.tif", "b.TIFF", "d.ppm", "e.pgm", "h.bmp", "i.PNG"]
    for name in lossless:
        save(cat / name, 40)
    Image.new("RGB", (6, 5), (40,) * 3).save(cat / "f.webp", lossless=True)
    save(cat / "g.JPEG", 40)
    Image.new("L", (6, 5), 40).save(cat / "c.gif", save_all=True, append_images=[Image.new("L", (6, 5), 90)])
    (cat / "notes.txt").write_text("not an image")
    save(tmp_path / "train" / "dog" / "0.png", 200)
    paths = folder(tmp_path)
    assert paths == [f"train/cat/{n}" for n in sorted(lossless + ["c.gif", "f.webp", "g.JPEG"])] + ["train/dog/0.png"]
    images = make_image_dataset("imagefolder", "train", data_dir=tmp_path).images
    for i, path in enumerate(paths[:-1]):
        assert (images[i].int() - 40).abs().max() <= (2 if path.endswith("JPEG") else 0), path  # the GIF's 1st frame


# ---------------------------------------------------------------- ImageFolder trees

def test_hidden_entries_are_ignored_at_every_level(tmp_path):
    root = tree(tmp_path, ("train", "test"))
    save(root / "train" / ".ipynb_checkpoints" / "x.png")
    save(root / "test" / ".ipynb_checkpoints" / "x.png")
    (root / "train" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    save(root / "train" / "dog" / ".cache" / "z.png")
    save(root / "train" / "dog" / ".hidden.png")
    ds = make_image_dataset("imagefolder", "train", data_dir=root)
    assert ds.classes == ["cat", "dog"] and folder(root) == ["train/cat/0.png", "train/cat/1.png", "train/dog/0.png",
                                                             "train/dog/1.png"]
    assert ds.images[torch.arange(4)].shape == (4, 3, 5, 6)
    assert len(make_image_dataset("imagefolder", "test", data_dir=root)) == 4


@pytest.mark.parametrize("case,match", [("empty", "class folder .*train/bird holds no image file"),
                                        ("no images", "class folder .*train/bird holds no image file .*tif, tiff"),
                                        ("one class", r"train has 1 class folder\(s\) \['cat'\]; a classifier needs 2"),
                                        ("no class", r"train has 0 class folder\(s\)"),
                                        ("empty in test", "class folder .*test/dog holds no image file")])
def test_empty_class_folders_and_fewer_than_2_classes_are_refused(tmp_path, case, match):
    root = tree(tmp_path, ("train", "test"))
    if case in ("empty", "no images"):
        (root / "train" / "bird").mkdir()
        if case == "no images":
            (root / "train" / "bird" / "readme.txt").write_text("birds")
            save(root / "train" / "bird" / ".0.png")
    elif case in ("one class", "no class"):
        for cls in ("dog", "cat")[: 1 if case == "one class" else 2]:
            (root / "train" / cls).rename(root / f"{cls}.moved")
    else:
        for f in (root / "test" / "dog").iterdir():
            f.unlink()
    with pytest.raises(PmoeError, match=match):
        make_image_dataset("imagefolder", "test" if case == "empty in test" else "train", data_dir=root)


def test_images_at_any_depth_each_real_folder_once(tmp_path):
    root = tree(tmp_path)
    dog = root / "train" / "dog"
    save(dog / "part1" / "a.png", 200)
    save(dog / "part1" / "deeper" / "b.png", 200)
    (dog / "part1" / "loop").symlink_to("..")  # a loop back to dog/
    (dog / "again").symlink_to("part1")  # the same real folder as part1
    save(tmp_path / "elsewhere" / "c.png", 40)
    (root / "train" / "cat" / "more").symlink_to(tmp_path / "elsewhere")  # links to folders are followed
    ds = make_image_dataset("imagefolder", "train", data_dir=root)
    assert folder(root) == ["train/cat/0.png", "train/cat/1.png", "train/cat/more/c.png", "train/dog/0.png",
                            "train/dog/1.png", "train/dog/part1/a.png", "train/dog/part1/deeper/b.png"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("target", ["missing.png", "gone.png"])  # a dangling link; a link to itself
def test_broken_links_are_refused(tmp_path, target):
    root = tree(tmp_path)
    (root / "train" / "dog" / "gone.png").symlink_to(target)
    with pytest.raises(PmoeError, match="train/dog/gone.png is a broken link: its target .* does not exist"):
        make_image_dataset("imagefolder", "train", data_dir=root)


def test_val_folder_serves_as_test_when_test_is_absent(tmp_path):
    root = tree(tmp_path, ("train",), per_class=4)
    for k, cls in enumerate(("cat", "dog")):
        save(root / "val" / cls / f"v{k}.png", 40)
    assert folder(root, "test") == ["val/cat/v0.png", "val/dog/v1.png"]
    with pytest.raises(PmoeError, match="val/ folder serves as the test split: set val_fraction > 0"):
        folder(root, "val")
    opts = {"val_fraction": 0.5, "split_seed": 1}
    train, val = folder(root, "train", **opts), folder(root, "val", **opts)
    assert len(train) == len(val) == 4 and sorted(train + val) == folder(root, "train")
    assert all(p.startswith("train/") for p in val) and folder(root, "test", **opts) == folder(root, "test")
    test = make_image_dataset("imagefolder", "test", data_dir=root, class_subset=(1, 0))
    assert test.classes == ["dog", "cat"] and test.labels.tolist() == [1, 0]


def test_val_and_test_folders_keep_their_splits(tmp_path):
    root = tree(tmp_path, ("train", "val", "test"), per_class=1)
    save(root / "test" / "dog" / "t.png", 200)
    assert folder(root, "val") == ["val/cat/0.png", "val/dog/0.png"]
    assert folder(root, "test") == ["test/cat/0.png", "test/dog/0.png", "test/dog/t.png"]
    with pytest.raises(PmoeError, match="has its own val/ split: val_fraction must be 0"):
        folder(root, "train", val_fraction=0.5)
    val = make_image_dataset("imagefolder", "val", data_dir=root, class_subset=(1, 0))
    assert val.classes == ["dog", "cat"] and val.labels.tolist() == [1, 0]  # class_subset applies here too


@pytest.mark.parametrize("case,match", [("missing", r"nowhere does not exist, so it has no train/ folder"),
                                        ("file", r"nowhere is a file, not a folder"),
                                        ("no test", r"has no test/ folder \(nor a val/ folder"),
                                        ("test file", r"test is a file, not a folder")])
def test_tree_layout_errors(tmp_path, case, match):
    root = tree(tmp_path / "tree")
    if case == "file":
        (tmp_path / "nowhere").write_text("")
    elif case == "test file":
        (root / "test").write_text("")
    with pytest.raises(PmoeError, match=match):
        make_image_dataset("imagefolder", "test", data_dir=tmp_path / ("tree" if "test" in case else "nowhere"))


# ---------------------------------------------------------------- sizes

def test_mixed_sizes_name_the_option_and_image_size_is_bounded(tmp_path):
    root = tree(tmp_path)
    save(root / "train" / "dog" / "odd.png", size=(9, 9))
    ds = make_image_dataset("imagefolder", "train", data_dir=root)
    with pytest.raises(PmoeError, match=r"odd.png is 9×9 .*--data-opt image_size=N"):
        ds.images[torch.arange(len(ds))]
    for bad in (0, 4097, 100000):
        with pytest.raises(PmoeError, match=f"image_size must be None .* or an integer in 1..4096, got {bad}"):
            make_image_dataset("imagefolder", "train", data_dir=root, image_size=bad)
        with pytest.raises(PmoeError, match="in 1..4096"):
            ImageFiles([], bad)
    assert ImageFolderConfig(image_size=4096).image_size == 4096
    wide = ImageFiles([str(save(tmp_path / "wide.png", size=(4097, 2)))])
    with pytest.raises(PmoeError, match=r"wide.png is 4097×2 \(W×H\), more than 4096 px a side.*image_size=N"):
        wide.shape
    assert ImageFiles(wide.paths, 4)[0].shape == (3, 4, 4)


# ---------------------------------------------------------------- the command line

@pytest.mark.usefixtures("one_thread")
def test_pmoe_train_on_an_imagenet_style_tree_and_on_a_corrupt_one(tmp_path, capsys):
    root = tree(tmp_path / "tree", ("train", "val"), per_class=6, size=(8, 8))
    save(root / "train" / "cat" / "part1" / "x.tif", 40, (8, 8))
    save(root / "train" / ".ipynb_checkpoints" / "x.png", size=(8, 8))
    (root / "train" / "dog" / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    args = ["train", "--model", "vit-moe-tiny", "--data", "imagefolder", "--data-dir", str(root), "--samples", "12",
            "--test-samples", "4", "--max-steps", "1", "--batch-size", "6", "--device", "cpu", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    for png in root.rglob("[0-9].png"):
        data = bytearray(png.read_bytes())
        data[data.index(b"IDAT") - 4: data.index(b"IDAT")] = struct.pack(">I", 5)
        png.write_bytes(bytes(data))
    assert main([*args, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "cannot be decoded as an image: SyntaxError: broken PNG" in err and "Traceback" not in err
