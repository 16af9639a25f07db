import errno
import os
import stat
import time
from pathlib import Path

import pytest

from pmoe.io import atomic_path, write_json


def test_atomic_file_replaces_and_gets_the_usual_mode(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"x": 1})
    write_json(target, {"x": 2})
    assert target.read_text().strip().endswith("}") and '"x": 2' in target.read_text()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left


def test_a_failed_write_leaves_neither_target_nor_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "folder", is_dir=True) as tmp:
            (tmp / "part").write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_appears_whole(tmp_path):
    with atomic_path(tmp_path / "out", is_dir=True) as tmp:
        (tmp / "f").write_text("ok")
        assert not (tmp_path / "out").exists()
    assert (tmp_path / "out" / "f").read_text() == "ok"


def test_temporaries_are_named_after_their_output_and_stale_ones_removed_by_its_next_write(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.json") as tmp:
            assert tmp.name.startswith(".a.json.pmoe-tmp-")
            raise RuntimeError("killed")
    stale, other = tmp_path / ".a.json.pmoe-tmp-dead", tmp_path / ".a.jsonl.pmoe-tmp-dead"
    stale.write_text("half")
    other.write_text("another output's")
    write_json(tmp_path / "a.json", {"x": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.jsonl.pmoe-tmp-dead", "a.json"]


def test_an_unchanged_file_is_not_rewritten(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    before = (tmp_path / "a.json").stat().st_mtime_ns
    time.sleep(0.01)
    write_json(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").stat().st_mtime_ns == before


def test_an_output_a_kill_left_moved_aside_is_put_back(tmp_path):
    aside = tmp_path / ".out.pmoe-tmp-x" / "out"
    aside.mkdir(parents=True)
    (aside / "model.safetensors").write_text("weights")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out", is_dir=True):
            raise RuntimeError("failed")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("failing", ["moving the old folder aside", "moving the new folder in"])
def test_a_failed_replacement_keeps_the_old_folder_and_leaves_no_temporary(tmp_path, monkeypatch, failing):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real = os.rename

    def rename(src, dst):  # EBUSY: the output is a mount point (moving it aside) or the new one cannot move in
        src, dst = Path(src), Path(dst)
        aside, new_in = src == out, dst == out and src.parent == tmp_path  # (putting the old one back: neither)
        if aside if failing == "moving the old folder aside" else new_in:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(src))
        real(src, dst)
    monkeypatch.setattr("pmoe.io.os.rename", rename)
    with pytest.raises(OSError, match="busy"):
        with atomic_path(out, is_dir=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["old.txt"]
