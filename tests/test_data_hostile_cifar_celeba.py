"""Hostile and real-world inputs of the CIFAR and CelebA loaders: labels, class names, pickles of numpy 1.x and 2.x,
code-running pickles, duplicate annotation rows, missing images, Kaggle's CSV layout."""
from __future__ import annotations

import base64
import copyreg
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from test_vision_data import CELEBA_ATTRS, celeba_attrs, cifar_rows, dump, fake_celeba, fake_cifar10, fake_cifar100

from pmoe.cli import main
from pmoe.data.vision import make_image_dataset
from pmoe.data.vision.cifar import unpickle
from pmoe.errors import PmoeError

# ---------------------------------------------------------------- CIFAR labels and class names


def write_batch(tmp_path: Path, labels: object, name: str = "data_batch_3", protocol: int = 2) -> None:
    """fake_cifar10 with batch `name` holding 2 images and `labels`."""
    folder = fake_cifar10(tmp_path)
    dump(folder / name, {b"data": cifar_rows(2, 0), b"labels": labels}, protocol)


@pytest.mark.parametrize("labels", [[b"cat", b"dog"], ["3", "4"], [0.7, 1.7], [1.0, 2.0], np.array([0.7, 1.7]),
                                    [np.float32(1), 2], [True, False], np.array([True, False]), [[1], [2]],
                                    np.array([[1], [2]]), np.array([b"a", b"b"]), [1, None], {b"a": 1}, b"\x01\x02"])
def test_cifar_refuses_labels_that_are_not_integers(tmp_path, labels):
    write_batch(tmp_path, labels)
    with pytest.raises(PmoeError, match=r"data_batch_3: b'labels' must .*(integer labels|1-d array)"):
        make_image_dataset("cifar10", "train", data_dir=tmp_path)


@pytest.mark.parametrize("labels", [[3, 7], (3, 7), list(np.array([3, 7])), [np.uint8(3), 7], np.array([3, 7]),
                                    np.array([3, 7], np.uint8), np.array([3, 7], np.int32)])
def test_cifar_accepts_integer_labels_of_any_integer_type(tmp_path, labels):
    write_batch(tmp_path, labels)
    ds = make_image_dataset("cifar10", "train", data_dir=tmp_path)
    assert ds.labels.dtype == torch.int64 and ds.labels[4:6].tolist() == [3, 7] and len(ds) == 10


@pytest.mark.parametrize("labels,bad", [([0, 10], "10 at position 1"), ([-1, 0], "-1 at position 0"),
                                        (np.array([5, 255], np.uint8), "255 at position 1"),
                                        ([0, 10 ** 30], f"{10 ** 30} at position 1")])
def test_cifar_names_the_file_and_first_label_out_of_range(tmp_path, labels, bad):
    write_batch(tmp_path, labels)
    with pytest.raises(PmoeError, match=rf"data_batch_3: b'labels' must hold labels in \[0, 10\).*got {bad}$"):
        make_image_dataset("cifar10", "train", data_dir=tmp_path)


def test_cifar100_checks_fine_and_coarse_labels_against_their_class_counts(tmp_path):
    folder = fake_cifar100(tmp_path)
    dump(folder / "test", {b"data": cifar_rows(2, 0), b"fine_labels": [99, 50], b"coarse_labels": [19, 20]})
    assert make_image_dataset("cifar100", "test", data_dir=tmp_path).labels.tolist() == [99, 50]
    with pytest.raises(PmoeError, match=r"test: b'coarse_labels' must hold labels in \[0, 20\).*got 20 at position 1"):
        make_image_dataset("cifar100", "test", data_dir=tmp_path, coarse=True)


@pytest.mark.parametrize("protocol", [2, 3, 5])
def test_cifar_meta_names_may_be_bytes_or_str(tmp_path, protocol):
    folder = fake_cifar10(tmp_path)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    dump(folder / "batches.meta", {b"label_names": names}, protocol)  # what Python 3 writes
    assert make_image_dataset("cifar10", "test", data_dir=tmp_path).classes == names
    dump(folder / "batches.meta", {b"label_names": [n.encode() for n in names[:5]] + names[5:]}, protocol)
    assert make_image_dataset("cifar10", "test", data_dir=tmp_path).classes == names


@pytest.mark.parametrize("names,match", [(list(range(10)), "bytes or str, got int 0 at position 0"),
                                         ([b"a"] * 9 + [None], "bytes or str, got NoneType None at position 9"),
                                         ([f"c{i}" for i in range(9)], "must list 10 class names, got 9"),
                                         ([b"\xff"] * 10, "not UTF-8"), ("abcdefghij", "list or 1-d array"),
                                         (np.zeros((10, 1)), "1-d array")])
def test_cifar_refuses_bad_class_names_naming_the_meta_file(tmp_path, names, match):
    dump(fake_cifar10(tmp_path) / "batches.meta", {b"label_names": names})
    with pytest.raises(PmoeError, match=f"batches.meta: b'label_names'.*{match}"):
        make_image_dataset("cifar10", "test", data_dir=tmp_path)


@pytest.mark.parametrize("data", [[[0] * 3072] * 2, np.zeros((2, 3072), np.int64), "x"])
def test_cifar_data_must_be_a_uint8_array(tmp_path, data):
    dump(fake_cifar10(tmp_path) / "data_batch_2", {b"data": data, b"labels": [0, 1]})
    with pytest.raises(PmoeError, match=r"data_batch_2: b'data' must be a numpy array of uint8 rows"):
        make_image_dataset("cifar10", "train", data_dir=tmp_path)


def test_cifar_missing_key_of_a_python3_pickle_lists_its_keys(tmp_path):
    dump(fake_cifar10(tmp_path) / "data_batch_2", {"data": cifar_rows(2, 0), b"x": 1, 3: 4})  # keys of mixed types
    with pytest.raises(PmoeError, match=r"data_batch_2 lacks key\(s\) \[b'data', b'labels'\]; it has"):
        make_image_dataset("cifar10", "train", data_dir=tmp_path)


def test_cli_reports_non_integer_cifar_labels_without_traceback(tmp_path, capsys):
    write_batch(tmp_path / "data", [b"cat"] * 2, name="test_batch")
    args = ["train", "--model", "vit-moe-tiny", "--data", "cifar10", "--data-dir", str(tmp_path / "data"),
            "--samples", "8",
            "--test-samples", "2", "--max-steps", "1", "--batch-size", "2", "--device", "cpu", "--quiet",
            "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "test_batch: b'labels' must hold integer labels, got bytes b'cat' at position 0" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- pickles: real-world ones load, code does not run

# {b'data': np.arange(6, dtype=np.uint8).reshape(2, 3), b'labels': list(np.array([3, 9])),
#  b'fine': np.array([1, 2]), b'batch_label': b''} pickled by numpy 1.26.4 (numpy.core.* names), protocols 2 and 5
NUMPY1_PICKLES = {
    2: (
        "gAJ9cQAoY19jb2RlY3MKZW5jb2RlCnEBWAQAAABkYXRhcQJYBgAAAGxhdGluMXEDhnEEUnEFY251bXB5LmNvcmUubXVsdGlhcnJheQpfcmVj"
        "b25zdHJ1Y3QKcQZjbnVtcHkKbmRhcnJheQpxB0sAhXEIaAFYAQAAAGJxCWgDhnEKUnELh3EMUnENKEsBSwJLA4ZxDmNudW1weQpkdHlwZQpx"
        "D1gCAAAAdTFxEImIh3ERUnESKEsDWAEAAAB8cRNOTk5K/////0r/////SwB0cRRiiWgBWAYAAAAAAQIDBAVxFWgDhnEWUnEXdHEYYmgBWAYA"
        "AABsYWJlbHNxGWgDhnEaUnEbXXEcKGNudW1weS5jb3JlLm11bHRpYXJyYXkKc2NhbGFyCnEdaA9YAgAAAGk4cR6JiIdxH1JxIChLA1gBAAAA"
        "PHEhTk5OSv////9K/////0sAdHEiYmgBWAgAAAADAAAAAAAAAHEjaAOGcSRScSWGcSZScSdoHWggaAFYCAAAAAkAAAAAAAAAcShoA4ZxKVJx"
        "KoZxK1JxLGVoAVgEAAAAZmluZXEtaAOGcS5ScS9oBmgHSwCFcTBoC4dxMVJxMihLAUsChXEzaCCJaAFYEAAAAAEAAAAAAAAAAgAAAAAAAABx"
        "NGgDhnE1UnE2dHE3YmgBWAsAAABiYXRjaF9sYWJlbHE4aAOGcTlScTpjX19idWlsdGluX18KYnl0ZXMKcTspUnE8dS4="
    ),
    5: (
        "gAWVPwEAAAAAAAB9lChDBGRhdGGUjBJudW1weS5jb3JlLm51bWVyaWOUjAtfZnJvbWJ1ZmZlcpSTlCiWBgAAAAAAAAAAAQIDBAWUjAVudW1w"
        "eZSMBWR0eXBllJOUjAJ1MZSJiIeUUpQoSwOMAXyUTk5OSv////9K/////0sAdJRiSwJLA4aUjAFDlHSUUpRDBmxhYmVsc5RdlCiMFW51bXB5"
        "LmNvcmUubXVsdGlhcnJheZSMBnNjYWxhcpSTlGgIjAJpOJSJiIeUUpQoSwOMATyUTk5OSv////9K/////0sAdJRiQwgDAAAAAAAAAJSGlFKU"
        "aBZoGUMICQAAAAAAAACUhpRSlGVDBGZpbmWUaAQolhAAAAAAAAAAAQAAAAAAAAACAAAAAAAAAJRoGUsChZRoD3SUUpRDC2JhdGNoX2xhYmVs"
        "lEMAlHUu"
    ),
}


@pytest.mark.parametrize("protocol", [2, 5])
def test_unpickler_loads_numpy1_pickles(tmp_path, protocol):
    path = tmp_path / "batch"
    path.write_bytes(base64.b64decode(NUMPY1_PICKLES[protocol]))
    assert b"numpy.core." in path.read_bytes() and b"numpy._core" not in path.read_bytes()
    d = unpickle(path, (b"data", b"labels"))
    assert d[b"data"].dtype == np.uint8 and d[b"data"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert d[b"labels"] == [3, 9] and all(isinstance(v, np.int64) for v in d[b"labels"])
    assert d[b"fine"].tolist() == [1, 2] and d[b"fine"].dtype == np.int64 and d[b"batch_label"] == b""


@pytest.mark.parametrize("protocol", range(6))
def test_cifar_loads_pickles_of_every_protocol_with_numpy_arrays_scalars_and_bytes(tmp_path, protocol):
    folder = fake_cifar10(tmp_path)
    for b in range(1, 6):
        rows = np.asfortranarray(cifar_rows(2, 2 * (b - 1))) if b == 2 else cifar_rows(2, 2 * (b - 1))
        labels = np.array([2 * b - 2, 2 * b - 1]) % 10
        dump(folder / f"data_batch_{b}", {b"batch_label": b"" if b % 2 else b"x\x00\xff", b"data": rows,
                                          b"labels": list(labels) if b < 4 else labels.astype(np.uint8)}, protocol)
    dump(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(9)] + [b""],
                                   b"num_vis": np.int64(3072), b"x": np.float32(0.5)}, protocol)
    train = make_image_dataset("cifar10", "train", data_dir=tmp_path)
    assert train.labels.tolist() == list(range(10)) and train.classes[9] == ""
    assert train.images[:, 0, 0, 0].tolist() == list(range(10)) and int(train.images[3, 0, 5, 7]) == 250
    assert pickle.dumps(b"", protocol=2, fix_imports=False).count(b"builtins\nbytes")  # the other spelling of b''
    path = tmp_path / "b"
    path.write_bytes(pickle.dumps({b"e": b"", b"n": np.bool_(True)}, protocol=2, fix_imports=False))
    assert unpickle(path, (b"e",)) == {b"e": b"", b"n": True}


class _Call:
    """Unpickling it calls fn(*args)."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


@pytest.mark.parametrize("case", ["posix.system", "os.system", "eval", "numpy.load", "bytes(size)", "codec",
                                  "copyreg", "getattr", "ndarray(size)", "_reconstruct(size)"])
def test_unpickler_still_refuses_everything_else(tmp_path, case):
    pwned = tmp_path / "pwned"
    payload = {
        "posix.system": lambda: pickle.dumps({b"data": _Call(os.system, f"touch {pwned}"), b"labels": []}),
        "os.system": lambda: f"(dp0\nS'data'\ncos\nsystem\n(S'touch {pwned}'\ntRsS'labels'\n(lp1\ns.".encode(),
        "eval": lambda: pickle.dumps(_Call(eval, f"open({str(pwned)!r}, 'w')")),
        "numpy.load": lambda: pickle.dumps(_Call(np.load, str(tmp_path / "x.npy"))),
        "bytes(size)": lambda: b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x7f\x85R.",  # bytes(2**31): 2 GB
        "codec": lambda: b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x06\x00\x00\x00base64\x86R.",
        "copyreg": lambda: pickle.dumps(_Call(copyreg._reconstructor, object, object, None)),
        "getattr": lambda: pickle.dumps(_Call(getattr, np.ndarray, "tofile")),
        "ndarray(size)": lambda: b"\x80\x02cnumpy\nndarray\nJ\x00\xca\x9a\x3b\x85R.",  # 1 GB, uninitialised
        "_reconstruct(size)": lambda: (b"\x80\x02cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
                                       b"J\x00\xca\x9a\x3b\x85U\x01b\x87R."),
    }[case]()
    path = fake_cifar10(tmp_path) / "data_batch_3"
    path.write_bytes(payload)
    why = {"posix.system": "refers to posix.system", "os.system": "refers to os.system",
           "eval": "refers to builtins.eval", "numpy.load": r"refers to numpy[.a-z_]*\.load,",
           "bytes(size)": r"calls bytes\(2130706432,\)", "codec": "calls _codecs.encode with codec 'base64'",
           "copyreg": "refers to copyreg._reconstructor", "getattr": "refers to builtins.getattr",
           "ndarray(size)": "calls numpy.ndarray",
           "_reconstruct(size)": r"calls numpy's _reconstruct with .*1000000000"}[case]
    with pytest.raises(PmoeError, match=f"data_batch_3 is not a readable pickle: UnpicklingError: it {why}"):
        make_image_dataset("cifar10", "train", data_dir=tmp_path)
    assert not pwned.exists()


# ---------------------------------------------------------------- CelebA


def test_celeba_refuses_an_image_listed_twice(tmp_path):
    root = fake_celeba(tmp_path / "a")
    attr = root / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    attr.write_text("\n".join(["13", *lines[1:], lines[5]]) + "\n")  # 000004.png again, as line 15
    with pytest.raises(PmoeError, match=r"list_attr_celeba.txt lists image 000004.png twice \(lines 6 and 15\)"):
        make_image_dataset("celeba", "test", data_dir=root)
    root = fake_celeba(tmp_path / "b")
    part = root / "list_eval_partition.txt"
    part.write_text(part.read_text() + "000002.png 2\n")
    with pytest.raises(PmoeError, match=r"list_eval_partition.txt lists image 000002.png twice \(lines 2 and 13\)"):
        make_image_dataset("celeba", "test", data_dir=root)


@pytest.mark.parametrize("case,match", [
    ("extra", r"list_eval_partition.txt lists image 999999.png, which .*list_attr_celeba.txt does not list"),
    ("malformed", r"list_eval_partition.txt, line 4: expected a file name and its partition 0, 1 or 2.*'000004.png'"),
    ("partition 3", r"list_eval_partition.txt, line 1: .*got '000001.png 3'"),
    ("count", r"list_attr_celeba.txt must start with a count line"),
    ("duplicate attribute", r"list_attr_celeba.txt must name distinct attributes, got 'Smiling' twice"),
    ("binary", r"list_attr_celeba.txt is not a text file"),
    ("path", r"list_attr_celeba.txt lists '/etc/passwd', not the name of a file in img_align_celeba/"),
])
def test_celeba_txt_annotation_errors(tmp_path, case, match):
    root = fake_celeba(tmp_path)
    attr, part = root / "list_attr_celeba.txt", root / "list_eval_partition.txt"
    lines = attr.read_text().splitlines()
    if case == "extra":
        part.write_text(part.read_text() + "999999.png 0\n")
    elif case == "malformed":
        part.write_text(part.read_text().replace("000004.png 0", "000004.png"))
    elif case == "partition 3":
        part.write_text(part.read_text().replace("000001.png 0", "000001.png 3"))
    elif case == "count":
        attr.write_text("\n".join(["\u00b2"] + lines[1:]))  # a digit to str.isdigit, not to int()
    elif case == "duplicate attribute":
        attr.write_text("\n".join(lines[:1] + [lines[1].replace("Black_Hair", "Smiling")] + lines[2:]))
    elif case == "binary":
        attr.write_bytes(b"\xff\xfe\x00garbage")
    else:  # an absolute name would replace the image folder in a joined path
        attr.write_text(attr.read_text().replace("000002.png", "/etc/passwd"))
        part.write_text(part.read_text().replace("000002.png", "/etc/passwd"))
    with pytest.raises(PmoeError, match=match):
        make_image_dataset("celeba", "train", data_dir=root)


@pytest.mark.parametrize("how,why", [("delete", "does not exist"), ("empty", "empty"), ("folder", "not a file")])
def test_celeba_checks_the_image_files_of_the_split_when_it_is_loaded(tmp_path, how, why):
    root = fake_celeba(tmp_path)
    image = root / "img_align_celeba" / "000009.png"  # image 8: partition 2, test
    image.unlink()
    if how == "empty":
        image.write_bytes(b"")
    elif how == "folder":
        image.mkdir()
    assert len(make_image_dataset("celeba", "train", data_dir=root)) == 4  # other splits need not that file
    with pytest.raises(PmoeError, match=rf"CelebA test split: 1 of its 4 images listed in .*list_attr_celeba.txt are "
                                        rf"missing or unusable, e.g. .*000009.png \({why}\)"):
        make_image_dataset("celeba", "test", data_dir=root)


def test_celeba_corrupt_image_fails_when_it_is_decoded(tmp_path):
    root = fake_celeba(tmp_path)
    (root / "img_align_celeba" / "000003.png").write_bytes(b"not an image")
    test = make_image_dataset("celeba", "test", data_dir=root)  # a stat only: decoding waits for first use
    with pytest.raises(PmoeError, match="000003.png cannot be decoded"):
        test[0]


def kaggle_celeba(root: Path, n: int = 12, newline: str = "\r\n") -> Path:
    """fake_celeba's images and annotations in Kaggle's layout: nested image folder, .csv files with headers."""
    fake_celeba(root, n, nested=True)
    (root / "list_attr_celeba.txt").unlink()
    (root / "list_eval_partition.txt").unlink()
    names = [f"{i + 1:06d}.png" for i in range(n)]
    rows = [",".join([name, *(str(2 * celeba_attrs(i)[a] - 1) for a in CELEBA_ATTRS)]) for i, name in enumerate(names)]
    (root / "list_attr_celeba.csv").write_text(newline.join([",".join(["image_id", *CELEBA_ATTRS]), *rows]) + newline)
    (root / "list_eval_partition.csv").write_text(
        newline.join(["image_id,partition", *(f"{name},{i % 3}" for i, name in enumerate(names))]) + newline)
    return root


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_celeba_reads_kaggles_csv_layout_like_the_original(tmp_path, newline):
    original = make_image_dataset("celeba", "test", data_dir=fake_celeba(tmp_path / "txt"), image_size=8)
    kaggle = make_image_dataset("celeba", "test", data_dir=kaggle_celeba(tmp_path / "k" / "celeba", newline=newline),
                                image_size=8)
    want = [2 * celeba_attrs(i)["Smiling"] + celeba_attrs(i)["Eyeglasses"] for i in (2, 5, 8, 11)]
    assert kaggle.labels.tolist() == original.labels.tolist() == want
    assert kaggle.attributes.keys() == original.attributes.keys()
    assert all(torch.equal(kaggle.attributes[a], original.attributes[a]) for a in CELEBA_ATTRS)
    assert [Path(p).name for p in kaggle.images.paths] == ["000003.png", "000006.png", "000009.png", "000012.png"]
    assert all(Path(p).parent.parent.name == "img_align_celeba" for p in kaggle.images.paths)
    assert torch.equal(kaggle.images[torch.arange(4)], original.images[torch.arange(4)])
    assert len(make_image_dataset("celeba", "train", data_dir=tmp_path / "k")) == 4  # found in the celeba/ below


@pytest.mark.parametrize("case,match", [
    ("header", r"list_attr_celeba.csv must start with the header line 'image_id,<attributes>', got 'file,Smiling'"),
    ("part header", r"list_eval_partition.csv must start with the header line 'image_id,partition'"),
    ("value", r"list_attr_celeba.csv, line 3: expected a file name and 4 values of 1 or -1, got '000002.png 1 0"),
    ("short row", r"list_attr_celeba.csv, line 2: expected a file name and 4 values"),
    ("partition", r"list_eval_partition.csv, line 13: expected a file name and its partition 0, 1 or 2"),
    ("not partitioned", r"list_eval_partition.csv gives no partition 0, 1 or 2 for 000012.png"),
    ("extra", r"list_eval_partition.csv lists image 000099.png, which .*list_attr_celeba.csv does not list"),
    ("twice", r"list_attr_celeba.csv lists image 000001.png twice \(lines 2 and 14\)"),
    ("part twice", r"list_eval_partition.csv lists image 000005.png twice \(lines 6 and 14\)"),
    ("no partition file", r"list_eval_partition.txt does not exist; expected .*list_eval_partition.csv"),
    ("empty", r"list_attr_celeba.csv is empty"),
    ("no annotations", r"has no list_attr_celeba.txt or list_attr_celeba.csv .*CelebA page.*Kaggle"),
])
def test_celeba_csv_annotation_errors(tmp_path, case, match):
    root = kaggle_celeba(tmp_path, newline="\n")
    attr, part = root / "list_attr_celeba.csv", root / "list_eval_partition.csv"
    lines, part_lines = attr.read_text().splitlines(), part.read_text().splitlines()
    edit = {
        "header": lambda: attr.write_text("\n".join(["file,Smiling"] + lines[1:])),
        "part header": lambda: part.write_text("\n".join(["image_id,split"] + part_lines[1:])),
        "value": lambda: attr.write_text("\n".join(lines[:2] + ["000002.png,1,0,1,1"] + lines[3:])),
        "short row": lambda: attr.write_text("\n".join(lines[:1] + [lines[1].rsplit(",", 1)[0]] + lines[2:])),
        "partition": lambda: part.write_text("\n".join([*part_lines[:-1], "000012.png,test"])),
        "not partitioned": lambda: part.write_text("\n".join(part_lines[:-1])),
        "extra": lambda: part.write_text("\n".join(part_lines + ["000099.png,0"])),
        "twice": lambda: attr.write_text("\n".join(lines + [lines[1]])),
        "part twice": lambda: part.write_text("\n".join(part_lines + [part_lines[5]])),
        "no partition file": part.unlink,
        "empty": lambda: attr.write_text("\n\n"),
        "no annotations": attr.unlink,
    }[case]
    edit()
    with pytest.raises(PmoeError, match=match):
        make_image_dataset("celeba", "train", data_dir=root)
