import os
import stat

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
