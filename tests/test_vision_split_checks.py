"""The splits a vision run reads are checked before any training: none empty, subsets no larger than their split,
train and test images of one shape, labels in range (the message names the data set, split and folder); the data
folder is recorded absolute."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pmoe.cli import main
from pmoe.data.vision import ImageBatches, ImageDataset, make_image_dataset
from pmoe.errors import PmoeError

from test_vision_data import write_idx

pytestmark = pytest.mark.usefixtures("one_thread")
RUN = ["--model", "vit-moe-tiny", "--max-steps", "1", "--batch-size", "4", "--device", "cpu", "--quiet"]


def idx_folder(folder, train: int = 20, test: int = 10, test_side: int = 28):
    """MNIST-format files: `train` and `test` images (labels i % 10) of 28x28 and test_side x test_side."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, side in (("train", train, 28), ("t10k", test, test_side)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", np.full((n, side, side), 7), gz=False)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz=False)
    return folder


def fails(capsys, args, *words):
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words) and "Traceback" not in err, err


def test_an_empty_test_split_is_refused_before_training(tmp_path, capsys):
    data = idx_folder(tmp_path / "mnist", test=0)
    fails(capsys, ["train", *RUN, "--data", "mnist", "--data-dir", data, "--out", tmp_path / "run"],
          f"the test split of 'mnist' in {data} holds no images")
    assert not (tmp_path / "run").exists()


def test_a_subset_larger_than_its_split_names_the_flag(tmp_path, capsys):
    data = idx_folder(tmp_path / "mnist")
    fails(capsys, ["train", *RUN, "--data", "mnist", "--data-dir", data, "--test-samples", "11", "--out",
                   tmp_path / "run"], "--test-samples 11 is more than the 10 images of the test split of 'mnist'")
    fails(capsys, ["train", *RUN, "--data", "mnist", "--data-dir", data, "--samples", "21", "--out", tmp_path / "run"],
          "--samples 21 is more than the 20 images of the train split")


def test_train_and_test_images_of_other_shapes_are_refused_before_training(tmp_path, capsys):
    data = idx_folder(tmp_path / "mnist", test_side=32)
    fails(capsys, ["train", *RUN, "--data", "mnist", "--data-dir", data, "--out", tmp_path / "run"],
          "the test split of 'mnist' has images of 1x32x32 (CxHxW) but the train split 1x28x28")
    assert not (tmp_path / "run").exists()


def test_labels_out_of_range_name_the_data_set_and_the_value():
    with pytest.raises(PmoeError, match=r"labels of cifar10 test in /data/c must lie in \[0, 2\) .*got 7"):
        ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 7]), ["a", "b"], (0.5,) * 3,
                     (0.2,) * 3, meta={"name": "cifar10", "split": "test", "data_dir": "/data/c"})
    with pytest.raises(PmoeError, match=r"got -1"):
        ImageDataset(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), torch.tensor([-1]), ["a", "b"], (0.5,), (0.2,))


def test_the_data_folder_is_recorded_absolute(tmp_path, capsys, monkeypatch):
    idx_folder(tmp_path / "mnist")
    monkeypatch.chdir(tmp_path)
    assert main(["train", *RUN, "--data", "mnist", "--data-dir", "mnist", "--out", "run"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["data_dir"] == str(tmp_path / "mnist")
    monkeypatch.chdir(tmp_path / "mnist")  # where a relative "mnist" would not be found
    assert main(["eval", str(tmp_path / "run")]) == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_that_cannot_be_decoded_is_one_line_from_any_worker(tmp_path, workers):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / split / cls / "0.png")
    (tmp_path / "train" / "b" / "1.png").write_bytes(b"not a png")
    ds = make_image_dataset("imagefolder", "train", data_dir=tmp_path)
    with pytest.raises(PmoeError) as e:
        list(ImageBatches(ds, 3, num_workers=workers))
    assert str(e.value).startswith(f"image file {tmp_path / 'train' / 'b' / '1.png'} cannot be decoded")
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
