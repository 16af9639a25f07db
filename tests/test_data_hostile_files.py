"""Hostile data files: .npz members that are not .npy arrays, whose .npy header lies about their size or declares more
than the machine's memory, and IDX files (gzip bombs) declaring more data than the machine holds or than they should.
Each is one PmoeError naming the file (and member), read without running out of memory."""
from __future__ import annotations

import gzip
import io
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import pmoe.data.files as files
import pmoe.data.idx as idx
from pmoe.cli import main
from pmoe.data import PatchFileConfig, file_options, load_patch_file, read_idx
from pmoe.errors import PmoeError

N, n, d = 10, 4, 6
HUGE = (100_000_000_000, 16, 64)  # 381,470 GiB of float32


def npy(a: np.ndarray) -> bytes:
    """`a` as the bytes of a .npy file."""
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def npy_header(shape: tuple[int, ...], descr: str = "<f4", version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy header alone, declaring `shape` of `descr`."""
    buf = io.BytesIO()
    header = {"shape": shape, "fortran_order": False, "descr": descr}
    (np.lib.format.write_array_header_1_0 if version == (1, 0) else np.lib.format.write_array_header_2_0)(buf, header)
    return buf.getvalue()


def good(count: int = N) -> dict[str, bytes]:
    """The members of a valid two-split file: x (count, n, d) float32 and y of both splits."""
    y = np.where(np.arange(count) % 2 == 0, 1, -1).astype(np.int8)
    x = np.random.default_rng(0).normal(size=(count, n, d)).astype(np.float32)
    return {"x_train.npy": npy(x), "y_train.npy": npy(y), "x_test.npy": npy(x), "y_test.npy": npy(y)}


def write_npz(path: Path, members: dict[str, bytes] | list[tuple[str, bytes]], stored: bool = False) -> Path:
    """A zip archive of `members` (name -> bytes), deflated unless `stored`."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as z:
        for name, data in (members.items() if isinstance(members, dict) else members):
            z.writestr(name, data)
    return path


def load(path: Path) -> None:
    load_patch_file(PatchFileConfig(**file_options(path)), "train", None, 0)


def refused(path: Path, *parts: str) -> str:
    """The message of loading `path`, which must be refused naming the file and each of `parts`."""
    with pytest.raises(PmoeError) as e:
        load(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg, msg
    for part in parts:
        assert part in msg, msg
    return msg


def memory(monkeypatch, nbytes: int) -> None:
    """Make pmoe see a machine of `nbytes` of memory."""
    monkeypatch.setattr(files, "machine_memory", lambda: nbytes)
    monkeypatch.setattr(idx, "machine_memory", lambda: nbytes)


def test_valid_hand_made_file_loads(tmp_path):
    ds = load_patch_file(PatchFileConfig(**file_options(write_npz(tmp_path / "ok.npz", good()))), "test", None, 0)
    assert (len(ds), ds.n, ds.d) == (N, n, d)


# ---------------------------------------------------------------- .npz members

def test_cli_member_not_npy_is_one_error_line(tmp_path, capsys):
    path = write_npz(tmp_path / "bad.npz", {"x_train.npy": b"not npy", "y_train.npy": good()["y_train.npy"]})
    assert main(["train", "--model", "pmoe", "--data", f"file:{path}", "--epochs", "1", "--batch-size", "10",
                 "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in err and "zip member 'x_train.npy'" in err and "not a .npy array" in err, err
    assert not (tmp_path / "o").exists()


def test_cli_huge_declared_shape_is_refused_as_truncated(tmp_path, capsys):
    members = {**good(), "x_train.npy": npy_header(HUGE) + bytes(64)}
    path = write_npz(tmp_path / "huge.npz", members)
    assert main(["train", "--model", "pmoe", "--data", f"file:{path}", "--epochs", "1", "--batch-size", "10",
                 "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(s in err for s in (str(path), "'x_train.npy'", str(HUGE), "float32", "64 bytes", "truncated")), err


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_member_shorter_than_its_header_is_truncated(tmp_path, version):
    x = np.ones((N, n, d), np.float32)
    members = {**good(), "x_test.npy": npy_header(x.shape, version=version) + x.tobytes()[:-4]}
    refused(write_npz(tmp_path / "short.npz", members), "'x_test.npy'", str(x.shape), "truncated")


def test_member_longer_than_its_header_is_refused(tmp_path):
    members = {**good(), "y_train.npy": good()["y_train.npy"] + b"\0" * 8}
    refused(write_npz(tmp_path / "long.npz", members), "'y_train.npy'", f"({N},)", "trailing bytes")


def test_member_larger_than_memory_is_refused_before_reading(tmp_path, monkeypatch):
    members = {**good(), "x_train.npy": npy(np.zeros((1000, n, d), np.float32))}  # 96,000 bytes, deflated to ~100
    path = write_npz(tmp_path / "big.npz", members)
    memory(monkeypatch, 50_000)
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: pytest.fail("read a member"))
    refused(path, "'x_train.npy'", f"(1000, {n}, {d})", "96,000 bytes", "more than this machine's memory")


def test_members_larger_than_memory_together_are_refused(tmp_path, monkeypatch):
    zeros = npy(np.zeros((1000, n, d), np.float32))  # 96,000 bytes each
    path = write_npz(tmp_path / "two.npz", {**good(), "x_train.npy": zeros, "x_test.npy": zeros})
    memory(monkeypatch, 150_000)
    refused(path, "declares arrays of", "in all", "x_train 96,000 bytes", "x_test 96,000 bytes")


def test_file_larger_than_memory_is_refused(tmp_path, monkeypatch):
    path = write_npz(tmp_path / "file.npz", good())
    memory(monkeypatch, 100)
    refused(path, "more than this machine's memory")


@pytest.mark.parametrize("case", ["bad dict", "negative shape", "short header", "version 3"])
def test_bad_npy_headers_are_refused(tmp_path, case):
    header = {"bad dict": npy_header((N,), "<i8").replace(b"'shape'", b"'shapo'"),
              "negative shape": npy_header((-5,), "<i8"),
              "short header": npy_header((N,), "<i8")[:9],
              "version 3": npy_header((N,), "<i8", version=(2, 0)).replace(b"\x02\x00", b"\x03\x00", 1)}[case]
    why = {"bad dict": "bad .npy header", "negative shape": "negative shape (-5,)", "short header": "bad .npy header",
           "version 3": "version 3.0 is not supported"}[case]
    members = {**good(), "y_train.npy": header + np.ones(N, np.int64).tobytes()}
    refused(write_npz(tmp_path / "header.npz", members), "'y_train.npy'", why)


def test_object_member_is_refused_unread(tmp_path, monkeypatch):
    members = {**good(), "y_train.npy": npy_header((N,), "|O") + bytes(8 * N)}
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: pytest.fail("read a member"))
    refused(write_npz(tmp_path / "obj.npz", members), "'y_train.npy'", "Python objects")


def test_corrupt_member_data_is_refused(tmp_path):
    path = write_npz(tmp_path / "crc.npz", good(), stored=True)
    raw = bytearray(path.read_bytes())
    at = raw.index(good()["x_train.npy"][-8:])  # inside x_train's data (stored, not deflated)
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    refused(path, "'x_train.npy'", "Bad CRC-32")


def test_memory_error_while_reading_a_member_is_refused(tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 90.0 GiB")
    monkeypatch.setattr(np.lib.format, "read_array", no_memory)
    refused(write_npz(tmp_path / "mem.npz", good()), "'x_train.npy'", "free memory")


def test_unknown_and_duplicate_members_are_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(np.lib.format, "read_magic", lambda *a, **k: pytest.fail("read a member"))
    refused(write_npz(tmp_path / "junk.npz", {**good(), "junk": b"\0" * 100}), "unexpected array(s) ['junk']")
    path = write_npz(tmp_path / "dup.npz", [*good().items(), ("y_train", good()["y_train.npy"])])
    refused(path, "two zip members for array 'y_train'", "'y_train.npy'")


# ---------------------------------------------------------------- IDX files

def idx_header(shape: tuple[int, ...], type_byte: int = 0x08) -> bytes:
    return bytes([0, 0, type_byte, len(shape)]) + np.array(shape, ">u4").tobytes()


def read_refused(path: Path, *parts: str) -> str:
    with pytest.raises(PmoeError) as e:
        read_idx(path)
    msg = str(e.value)
    assert str(path) in msg and all(p in msg for p in parts), msg
    return msg


def peak_bytes_reading(path: Path) -> int:
    """The peak memory that read_idx(path) allocates (it must refuse the file)."""
    tracemalloc.start()
    try:
        with pytest.raises(PmoeError):
            read_idx(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_declaring_more_than_memory_is_refused_unread(tmp_path, monkeypatch, gz):
    data = idx_header((100, 28, 28)) + bytes(100 * 28 * 28)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gz else data)
    memory(monkeypatch, 10_000)
    monkeypatch.setattr(idx, "_read_upto", lambda *a: pytest.fail("read the data"))
    read_refused(path, "(100, 28, 28) of uint8", "more than this machine's memory")


def test_idx_gzip_bomb_of_trailing_data_is_refused_without_decompressing_it(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:  # 6 labels, then 64 MiB of zeros (64 KiB compressed)
        f.write(idx_header((6,)) + bytes(6))
        for _ in range(64):
            f.write(bytes(2**20))
    assert path.stat().st_size < 2**20
    assert peak_bytes_reading(path) < 8 * 2**20
    read_refused(path, "(6,) of uint8", "trailing bytes")


def test_idx_truncated_file_declaring_a_lot_takes_little_memory(tmp_path, monkeypatch):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header((60000, 200, 200)) + bytes(1000)))  # declares 2.2 GiB, holds 1,000
    memory(monkeypatch, 2**40)
    assert peak_bytes_reading(path) < 64 * 2**20
    read_refused(path, "(60000, 200, 200) of uint8", "holds 1016 bytes", "truncated")


def test_idx_exact_file_still_reads(tmp_path):
    arr = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    path = tmp_path / "a.idx.gz"
    path.write_bytes(gzip.compress(idx_header(arr.shape, 0x0C) + arr.tobytes()))
    out = read_idx(path)
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)
