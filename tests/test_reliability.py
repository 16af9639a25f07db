"""A user's checkpoint is never lost: overlapping and used output folders, OS errors, non-finite training,
deterministic files, typed options, temporaries. Each case checks the exit status, the one `error:` line and the
state of the disk afterwards."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load

from pmoe.checkpoints import load_checkpoint, nonfinite_weights, safetensors_bytes, save_checkpoint
from pmoe.cli import main
from pmoe.outputs import DATA_ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = ["--n", "6", "--d", "12", "--samples", "40", "--test-samples", "40", "--epochs", "2", "--quiet"]
THEORY = ["--model", "pmoe", "-l", "2", "--experts", "4", *DATA]
VISION = ["--model", "vit-moe-tiny", "--data", "fashion-mnist", "--samples", "40", "--test-samples", "20",
          "--batch-size", "20", "--max-steps", "1", "--device", "cpu", "--quiet"]


def snapshot(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `root` (hidden ones too)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def fails(capsys, args: list[str], *words: str) -> str:
    """Run the CLI, expect exit status 2 and one `error:` line (no traceback) holding `words`; return it."""
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ": error: " in err[0] and "Traceback" not in err[0], err
    assert all(w in err[0] for w in words), err[0]
    return err[0]


@pytest.fixture(scope="module")
def theory(tmp_path_factory) -> tuple[Path, Path]:
    """(pretrained, fine-tuned) theory checkpoints."""
    root = tmp_path_factory.mktemp("theory")
    assert main(["train", *THEORY, "--out", str(root / "pre")]) == 0
    assert main(["finetune", str(root / "pre"), *DATA, "--data-seed", "1", "--out", str(root / "ft")]) == 0
    return root / "pre", root / "ft"


@pytest.fixture(scope="module")
def vision(tmp_path_factory) -> Path:
    """A finished one-step vision run."""
    out = tmp_path_factory.mktemp("vision") / "run"
    assert main(["train", *VISION, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("where", ["finetuned", "pretrained", "inside", "parent"])
def test_prune_never_writes_over_or_around_its_inputs(theory, capsys, where):
    pre, ft = theory
    out = {"finetuned": ft, "pretrained": pre, "inside": ft / "pruned", "parent": ft.parent}[where]
    before = snapshot(ft.parent)
    for command in ("prune", "prune-sweep"):
        size = ["--keep", "2"] if command == "prune" else ["--ratios", "0.5"]
        fails(capsys, [command, ft, "--pretrained", pre, *size, "--overwrite", "--out", out], "--out", "the input")
    assert snapshot(ft.parent) == before


@pytest.mark.parametrize("out", [DATA_ROOT, f"{DATA_ROOT}/fashion-mnist", f"{DATA_ROOT}/pmoe-never-written",
                                 str(Path(DATA_ROOT).parent)])
def test_the_shared_data_folder_is_never_written_even_when_not_named(capsys, out):
    before = snapshot(Path(DATA_ROOT)) if Path(DATA_ROOT).is_dir() else {}
    fails(capsys, ["train", *THEORY, "--overwrite", "--out", out], "--out", f"the input {DATA_ROOT}")
    assert not Path(f"{DATA_ROOT}/pmoe-never-written").exists()
    assert (snapshot(Path(DATA_ROOT)) if Path(DATA_ROOT).is_dir() else {}) == before


def test_finetune_and_train_refuse_outputs_overlapping_their_inputs(theory, tmp_path, capsys):
    pre, ft = theory
    before = snapshot(pre.parent)
    fails(capsys, ["finetune", pre, *DATA, "--overwrite", "--out", pre], "is the input")
    fails(capsys, ["finetune", pre, *DATA, "--out", pre / "child"], "is inside the input")
    fails(capsys, ["train", *VISION, "--data-dir", tmp_path / "images", "--overwrite", "--out", tmp_path],
          "contains the input")
    assert snapshot(pre.parent) == before


def test_train_refuses_a_used_folder_unless_overwrite_then_replaces_it_whole(theory, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *THEORY, "--out", str(out)]) == 0
    before = snapshot(out)
    fails(capsys, ["train", *THEORY, "--seed", "1", "--out", out], "already holds files", "--overwrite")
    fails(capsys, ["train", *VISION, "--out", out], "already holds files")
    assert snapshot(out) == before
    assert main(["train", *THEORY, "--seed", "1", "--overwrite", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary left beside it


def test_vision_overwrite_and_resume(vision, tmp_path, capsys):
    out = tmp_path / "v"
    (out / "notes").mkdir(parents=True)
    fails(capsys, ["train", *VISION, "--out", out], "already holds files")
    assert main(["train", *VISION, "--overwrite", "--out", str(out)]) == 0
    assert not (out / "notes").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]
    fails(capsys, ["train", *VISION, "--resume", "--overwrite", "--out", out], "give one")


def test_a_finished_runs_resume_writes_nothing(vision, capsys):
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in vision.iterdir()}
    assert main(["train", *VISION, "--resume", "--json", "--out", str(vision)]) == 0  # the same run: allowed
    assert json.loads(capsys.readouterr().out)["steps"] == 1
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in vision.iterdir()} == before


def test_the_same_tensors_and_metadata_give_the_same_bytes():
    tensors = {"b.weight": torch.ones(3, dtype=torch.int64), "a": torch.zeros(2)}
    files = {safetensors_bytes(tensors, {"format": "pmoe", "arch": "wrn", "z": "1"}) for _ in range(20)}
    assert len(files) == 1 and load(files.pop())["b.weight"].tolist() == [1, 1, 1]


def test_reports_refuse_another_reports_folder(tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    fails(capsys, ["experiment", "prune-theory", "--quick", "--out", out], "already holds files", "--overwrite")
    fails(capsys, ["demo", "--out", out], "already holds files")
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({"config": {"seeds": 99}}))
    fails(capsys, ["experiment", "prune-theory", "--quick", "--out", other], "config.seeds: 99 -> 4")
    fails(capsys, ["prune-combine", out, other, "--out", out / "c"], "is inside the input")
    assert snapshot(out) == {"mine.txt": hashlib.sha256(b"keep me").hexdigest()}


def test_os_errors_are_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    fails(capsys, ["train", *THEORY, "--out", tmp_path / "file"], "is an existing file")
    fails(capsys, ["train", *THEORY, "--out", tmp_path / "file" / "sub"], "a file, not a folder")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes anywhere: refuse as the OS would
        def refuse(*_, dir=None, **__):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), dir)
        monkeypatch.setattr("pmoe.io.tempfile.mkdtemp", refuse)
    fails(capsys, ["train", *THEORY, "--out", locked / "run"], "cannot write --out", "Permission denied")
    assert list(locked.iterdir()) == []


def nan_after(monkeypatch, module, name: str, calls: int) -> None:
    """Make `module.name` (a loss) return NaN from call `calls` + 1 on."""
    real, count = getattr(module, name), [0]

    def loss(*args, **kwargs):
        count[0] += 1
        out = real(*args, **kwargs)
        if count[0] <= calls:
            return out
        return (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")
    monkeypatch.setattr(module, name, loss)


def test_a_diverged_vision_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    import pmoe.train.vision as vision_module

    out = tmp_path / "run"
    nan_after(monkeypatch, vision_module, "task_loss", 2)  # 2 steps per epoch: epoch 2 diverges
    args = [a for a in VISION if a not in ("--max-steps", "1")]
    fails(capsys, ["train", *args, "--epochs", "2", "--out", out], "diverged", "step 3 (epoch 2)")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["progress"] == {"epoch": 1, "step": 2, "total_steps": 4, "finished": False}
    assert nonfinite_weights(out)[0] == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    fails(capsys, ["train", *VISION, "--out", tmp_path / "new"], "diverged")  # from step 1: nothing saved at all
    assert not (tmp_path / "new").exists()


def test_a_diverged_theory_run_or_post_pruning_fine_tune_saves_nothing(theory, tmp_path, capsys, monkeypatch):
    import pmoe.train.theory as theory_module

    pre, ft = theory
    before = snapshot(ft.parent)
    nan_after(monkeypatch, theory_module, "logistic_loss", 3)
    fails(capsys, ["train", *THEORY, "--out", tmp_path / "t"], "diverged", "step 4 (epoch 2 of train)")
    fails(capsys, ["prune", ft, "--pretrained", pre, "--keep", "2", "--finetune-steps", "3", "--out",
                   tmp_path / "p"], "diverged")
    assert list(tmp_path.iterdir()) == [] and snapshot(ft.parent) == before


def test_eval_warns_on_non_finite_weights_and_json_stays_valid(theory, tmp_path, capsys):
    model, cfg = load_checkpoint(theory[1])
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    save_checkpoint(tmp_path / "nan", model, cfg["arch"], cfg["model"],
                    **{k: v for k, v in cfg.items() if k not in ("format", "version", "arch", "model")})
    assert main(["eval", str(tmp_path / "nan"), "--json"]) == 0
    out = capsys.readouterr()
    assert "warning:" in out.err and "NaN or infinite" in out.err
    result = json.loads(out.out, parse_constant=lambda c: pytest.fail(f"bare {c} in --json output"))
    assert result["non_finite"] is True and result["test_loss"] is None


def test_diverged_checkpoints_are_refused_for_pruning_and_routing(theory, tmp_path, capsys):
    pre, ft = theory
    model, cfg = load_checkpoint(ft)
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("inf"))
    save_checkpoint(tmp_path / "inf", model, cfg["arch"], cfg["model"],
                    **{k: v for k, v in cfg.items() if k not in ("format", "version", "arch", "model")})
    bad = str(tmp_path / "inf")
    for args, use in [(["prune", bad, "--pretrained", pre, "--keep", "2"], "prune"),
                      (["prune-sweep", bad, "--pretrained", pre, "--ratios", "0.5"], "prune"), (["route", bad], "route")]:
        out = [] if args[0] == "route" else ["--out", tmp_path / "out"]
        fails(capsys, [*args, *out], "of", "are NaN or infinite (the run diverged)", f"nothing to {use}")
    assert not (tmp_path / "out").exists()


def test_theory_checkpoints_take_only_the_cpu_and_sweeps_no_repeats(theory, tmp_path, capsys):
    pre, ft = theory
    fails(capsys, ["prune", ft, "--pretrained", pre, "--keep", "2", "--device", "cuda:7", "--out", tmp_path / "o"],
          "theory models run on the CPU", "'cuda:7'")
    fails(capsys, ["prune-sweep", ft, "--pretrained", pre, "--ratios", "0.5", "0.5", "--out", tmp_path / "o"],
          "given twice: [0.5]")
    fails(capsys, ["prune-sweep", ft, "--pretrained", pre, "--methods", "random", "random", "--out", tmp_path / "o"],
          "given twice: ['random']")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,words", [
    (["--data-opt", "val_fraction=abc"], ["val_fraction must be float", "'abc' (str)"]),
    (["--model-opt", "experts=abc"], ["preset 'vit-moe-tiny': experts must be int"]),
    (["--model-opt", "moe_blocks=[1,\"x\"]"], ["moe_blocks must be list of int"]),
    (["--model-opt", "dropout=true"], ["dropout must be float, got True"]),
])
def test_options_are_checked_against_their_fields_types(tmp_path, capsys, args, words):
    fails(capsys, ["train", *VISION, *args, "--out", tmp_path / "x"], *words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,words", [
    (["--model-opt", "dropout=2"], ["dropout must be in [0, 1), got 2"]),
    (["--model-opt", "capacity_factor=0"], ["capacity_factor and eval_capacity_factor must be > 0"]),
    (["--model", "wrn-pmoe-tiny", "--model-opt", "router_std=-1"], ["router_std must be >= 0 and finite, got -1"]),
    (["--model-opt", "num_classes=1"], ["num_classes=1 does not fit the data", "10 classes"]),
    (["--model-opt", "in_channels=3"], ["in_channels=3 does not fit the data", "1 channels"]),
])
def test_option_values_out_of_range_are_refused(tmp_path, capsys, args, words):
    fails(capsys, ["train", *VISION, *args, "--out", tmp_path / "x"], *words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--seed", "--data-seed"])
@pytest.mark.parametrize("value", ["-1", str(2**63), "99999999999999999999"])
def test_seeds_outside_64_bits_are_refused(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:  # argparse: usage and one error line, exit status 2
        main(["train", *THEORY, flag, value, "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "must be an integer in 0 .. 2^63 - 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag,value", [("--epochs", "99999999999999999999"), ("--epochs", "-1"),
                                        ("--router-epochs", str(2**31)), ("--batch-size", str(2**31))])
def test_counts_outside_31_bits_are_refused(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:  # an OverflowError deep in tqdm before
        main(["train", *THEORY, flag, value, "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "must be an integer in" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["train", *VISION], ["train", *THEORY], ["eval", "ckpt"], ["route", "ckpt"],
                                     ["prune", "ckpt", "--keep", "1"]])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_device_is_refused_not_read_as_auto(tmp_path, capsys, command, value):
    out = [] if command[0] in ("eval", "route") else ["--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit) as e:
        main([*command, "--device", value, *out])
    assert e.value.code == 2 and "argument --device: must name a device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_data_larger_than_the_memory_is_refused_before_it_is_made(tmp_path, capsys):
    fails(capsys, ["train", *THEORY, "--samples", str(2 * 10**9), "--out", tmp_path / "x"],  # 536 GiB
          "2000000000 training samples of 6 patches x 12 take", "GiB of memory: ask for fewer")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("section,change,words", [
    ("model", None, ["the model section must be an object", "got None"]),
    ("model", {"n": "sixteen"}, ["n must be int, got 'sixteen'"]),
    ("data", {"samples": "many"}, ["data section of config.json", "samples must be int or None"]),
    ("data", [], ["data section of config.json must be an object"]),
])
def test_config_json_values_are_checked_against_their_fields_types(theory, tmp_path, capsys, section, change, words):
    cfg = json.loads((theory[0] / "config.json").read_text())
    cfg[section] = {**cfg[section], **change} if isinstance(change, dict) else change
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").write_bytes((theory[0] / "model.safetensors").read_bytes())
    fails(capsys, ["eval", bad], *words)


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    import pmoe.checkpoints

    def full(*_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "model.safetensors"))
    monkeypatch.setattr(pmoe.checkpoints, "safetensors_bytes", full)
    fails(capsys, ["train", *THEORY, "--out", tmp_path / "run"], "No space left on device", "model.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_run_leaves_only_a_hidden_temporary_that_the_next_run_removes(tmp_path):
    out = tmp_path / "run"
    args = [*THEORY, "--epochs", "100000"]  # killed long before the end
    proc = subprocess.Popen([sys.executable, "-m", "pmoe.cli", "train", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".run.pmoe-tmp-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name[:len(".run.pmoe-tmp-")] for p in tmp_path.iterdir()] == [".run.pmoe-tmp-"]  # no result
    (tmp_path / ".other.pmoe-tmp-1").write_text("another output's")
    assert main(["train", *THEORY, "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pmoe-tmp-1", "run"]


def test_stale_temporaries_inside_a_resumed_run_are_removed(vision, capsys):
    stale = [vision / ".train_state.pt.pmoe-tmp-k1ll3d", vision / ".model.safetensors.pmoe-tmp-x" / "part"]
    for p in stale:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"half")
    (vision / ".notes").write_text("mine")
    assert main(["train", *VISION, "--resume", "--out", str(vision)]) == 0
    assert not any(p.exists() for p in stale) and (vision / ".notes").read_text() == "mine"
    (vision / ".notes").unlink()
