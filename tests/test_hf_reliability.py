"""`pmoe hf-prune` never loses a user's checkpoint (issue 13): outputs overlapping the inputs, used outputs and
--overwrite, malformed shard indexes, unreadable files, integer tensors, OS errors, and a killed run. Each case checks
the exit status, the one `error:` line and the state of the disk afterwards, on hand-made checkpoints (no
transformers)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_hf_layouts import DS, GROWN
from test_hf_layouts import pair as layout_pair
from test_hf_units import fake_checkpoint, load_folder
from test_reliability import fails, snapshot

import pmoe.hf.checkpoint
import pmoe.hf.disk
from pmoe.cli import main

INDEX = "model.safetensors.index.json"


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    """(base, fine-tuned): Mixtral-layout checkpoints, the fine-tuned one in 2 shards with an index."""
    fake_checkpoint(tmp_path / "base", seed=0)
    fake_checkpoint(tmp_path / "ft", seed=1, shards=2)
    return tmp_path / "base", tmp_path / "ft"


def hf_prune(pair: tuple[Path, Path], out: Path, *more: str) -> list:
    return ["hf-prune", "--base", pair[0], "--finetuned", pair[1], "--keep", "3", "--quiet", *more, "--out", out]


@pytest.mark.parametrize("where, words", [
    ("ft", "is the input"), ("base", "is the input"), ("ft/pruned", "is inside the input"),
    ("base/sub/pruned", "is inside the input"), (".", "contains the input")])
def test_outputs_overlapping_an_input_are_refused_even_with_overwrite(tmp_path, pair, capsys, where, words):
    before = snapshot(tmp_path)
    fails(capsys, hf_prune(pair, tmp_path / where, "--overwrite"), "--out", words)
    assert snapshot(tmp_path) == before and not (pair[1] / "pruned").exists()


def test_a_used_output_is_refused_unless_overwrite_then_replaced_once_complete(tmp_path, pair, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is taken
    assert main([str(a) for a in hf_prune(pair, out)]) == 0
    before = snapshot(out)
    fails(capsys, hf_prune(pair, out), "already holds files", "--overwrite")
    fails(capsys, hf_prune(pair, out, "--keep", "9", "--overwrite"), "keep 9 is outside 1..5")  # fails: old stays
    with monkeypatch.context() as m:  # the disk fills up after the first new shard: the old output stays
        write = pmoe.hf.disk.write_safetensors

        def full(path, *args, **kwargs):
            if path.name.startswith("model-00002"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return write(path, *args, **kwargs)
        m.setattr(pmoe.hf.disk, "write_safetensors", full)
        fails(capsys, hf_prune(pair, out, "--keep", "2", "--overwrite"), "No space left on device", "model-00002")
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["base", "ft", "out"]
    (out / "notes.txt").write_text("old")
    assert main([str(a) for a in hf_prune(pair, out, "--keep", "2", "--overwrite")]) == 0
    assert json.loads((out / "prune_report.json").read_text())["keep"] == 2 and not (out / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ft", "out"]  # no temporary left beside it


@pytest.mark.parametrize("index, words", [
    ([1, 2], ["holds [1, 2], not a JSON object"]),
    ({"metadata": {}}, ["weight_map is null", "expected an object of tensor name -> shard file name"]),
    ({"weight_map": ["model.safetensors"]}, ["weight_map is [\"model.safetensors\"]"]),
    ({"weight_map": {"model.embed_tokens.weight": 3}}, ["puts model.embed_tokens.weight in shard 3"]),
    ({"weight_map": {"model.embed_tokens.weight": "/etc/passwd"}}, ["in shard \"/etc/passwd\"", "inside the"]),
    ({"weight_map": {"model.embed_tokens.weight": "../base/model.safetensors"}}, ["\"../base/model.safetensors\""]),
    ({"metadata": [], "weight_map": {}}, ["metadata is []"]),
])
def test_a_malformed_shard_index_is_one_error_naming_it(tmp_path, pair, capsys, index, words):
    (pair[1] / INDEX).write_text(json.dumps(index))
    fails(capsys, hf_prune(pair, tmp_path / "out"), f"{pair[1] / INDEX}", *words)
    assert not (tmp_path / "out").exists()


def test_a_config_json_that_is_no_object_is_refused(tmp_path, pair, capsys):
    (pair[0] / "config.json").write_text("null")
    fails(capsys, hf_prune(pair, tmp_path / "out"), f"{pair[0] / 'config.json'} holds null, not a JSON object")


def unreadable(monkeypatch, path: Path) -> None:
    """Take read permission from `path`; as root (whom permissions never stop) refuse it as the OS refuses others:
    `open` with PermissionError, and safetensors' `safe_open` with FileNotFoundError, which is what it raises for an
    unreadable file (measured as root without CAP_DAC_OVERRIDE: `test_unreadable_files_without_root_powers`)."""
    path.chmod(0)
    if os.geteuid() != 0:
        return
    real_open, real_safe_open = open, pmoe.hf.checkpoint.safe_open

    def denied(p) -> bool:
        return Path(p).resolve() == path.resolve()

    def fake_open(p, *args, **kwargs):
        if denied(p):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))
        return real_open(p, *args, **kwargs)

    def fake_safe_open(p, *args, **kwargs):
        if denied(p):
            raise FileNotFoundError(f"No such file or directory: {p}")
        return real_safe_open(p, *args, **kwargs)
    monkeypatch.setattr(pmoe.hf.checkpoint, "open", fake_open, raising=False)
    monkeypatch.setattr(pmoe.hf.checkpoint, "safe_open", fake_safe_open)


@pytest.mark.parametrize("file", ["model-00002-of-00002.safetensors", "config.json", INDEX])
def test_an_unreadable_file_is_reported_as_such(tmp_path, pair, capsys, monkeypatch, file):
    unreadable(monkeypatch, pair[1] / file)
    err = fails(capsys, hf_prune(pair, tmp_path / "out"), f"cannot read {file}: Permission denied: {pair[1] / file}")
    assert "No such file" not in err and not (tmp_path / "out").exists()


def test_unreadable_files_without_root_powers(tmp_path, pair):
    """The same, for real: as root without the capabilities that let it read any file (or as a plain user)."""
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    if drop and (not shutil.which("setpriv") or subprocess.run([*drop, "true"]).returncode != 0):
        pytest.skip("cannot drop root's file capabilities here")
    shard = pair[1] / "model-00002-of-00002.safetensors"
    shard.chmod(0)
    cmd = [*drop, sys.executable, "-m", "pmoe.cli", *map(str, hf_prune(pair, tmp_path / "out"))]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        f"pmoe hf-prune: error: cannot read {shard.name}: Permission denied: {shard}"]


def test_integer_tensors_are_copied_and_sliced_bit_exact_and_integer_routers_refused(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)

    def raw(dtype: torch.dtype, *shape: int) -> torch.Tensor:  # random bit patterns, most not exact in any float
        if dtype == torch.bool:
            return torch.rand(*shape, generator=g) < 0.5
        n = torch.empty((), dtype=dtype).element_size()
        return torch.randint(0, 256, (*shape[:-1], shape[-1] * n), dtype=torch.uint8, generator=g).view(dtype)
    dtypes = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32, torch.uint32, torch.int64,
              torch.uint64]
    extra = {}
    for dt in dtypes:
        name = str(dt).removeprefix("torch.")
        extra[f"model.layers.0.mlp.{name}_table"] = raw(dt, 5, 3)  # copied whole
        extra[f"model.layers.1.mlp.experts.{name}_ids"] = raw(dt, 8, 3)  # fused: sliced on the expert axis
    base, ft = layout_pair(tmp_path, DS, GROWN, extra=extra)
    assert main(["hf-prune", "--base", str(base), "--finetuned", str(ft), "--keep", "4", "--quiet", "--json",
                 "--out", str(tmp_path / "out")]) == 0
    kept = json.loads(capsys.readouterr().out)["layers"][0]["kept"]
    out = load_file(tmp_path / "out" / "model.safetensors")
    for key, t in extra.items():
        sliced = ".experts." in key
        assert out[key].dtype == t.dtype and out[key].shape == ((len(kept), 3) if sliced else t.shape), key
        want = t.view(torch.uint8)[kept] if sliced else t.view(torch.uint8)  # (bytes: no integer arithmetic)
        assert out[key].view(torch.uint8).equal(want), key
    router = "model.layers.1.mlp.gate.weight"
    tensors = load_file(ft / "model.safetensors")
    save_file({**tensors, router: (tensors[router] * 100).to(torch.int32)}, ft / "model.safetensors")
    fails(capsys, ["hf-prune", "--base", base, "--finetuned", ft, "--keep", "4", "--out", tmp_path / "o2"],
          f"fine-tuned router {router} has dtype torch.int32; expected a floating-point router")
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("case", ["file", "under a file", "unwritable"])
def test_os_errors_on_the_output_are_one_line(tmp_path, pair, capsys, monkeypatch, case):
    (tmp_path / "file").write_text("x")
    out = {"file": tmp_path / "file", "under a file": tmp_path / "file" / "out", "unwritable": tmp_path / "ro" / "out"}
    words = {"file": "is an existing file", "under a file": "a file, not a folder",
             "unwritable": "Permission denied"}
    if case == "unwritable":
        (tmp_path / "ro").mkdir(mode=0o500)
        if os.geteuid() == 0:  # root writes anywhere: refuse as the OS would
            def refuse(*_, dir=None, **__):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), dir)
            monkeypatch.setattr("pmoe.io.tempfile.mkdtemp", refuse)
    before = snapshot(tmp_path)
    fails(capsys, hf_prune(pair, out[case]), "--out", words[case])
    assert snapshot(tmp_path) == before and not (tmp_path / "ro" / "out").exists()


SLOW_WRITER = """
import sys, time
import pmoe.hf.disk as disk
from pmoe.cli import main
write = disk.write_safetensors
def slow(*args, **kwargs):  # the first shard is written, then the run is killed while it waits
    size = write(*args, **kwargs)
    time.sleep(60)
    return size
disk.write_safetensors = slow
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_run_leaves_only_a_hidden_temporary_that_the_next_run_removes(tmp_path, pair):
    args = [str(a) for a in hf_prune(pair, tmp_path / "out")]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.pmoe-tmp-*/*.safetensors")) and time.monotonic() < deadline:
        assert proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("base", "ft"))
    assert len(left) == 1 and left[0].startswith(".out.pmoe-tmp-")  # a partial shard, hidden: no result
    (tmp_path / ".other.pmoe-tmp-1").mkdir()  # another output's: never touched
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pmoe-tmp-1", "base", "ft", "out"]
    assert len(load_folder(tmp_path / "out")) == len(load_folder(pair[1])) - 2 * 3 * 3  # 3 of 6 experts dropped
