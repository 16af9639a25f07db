"""Stopping a command: SIGTERM ends it with one line and exit status 143, removing its unfinished output and its
worker processes; a failed item stops a parallel sweep's other items at once; the workers of a command killed with
SIGKILL (which it cannot handle) end themselves."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pmoe.cli import main
from pmoe.experiments.runner import parallel_map

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
HERE = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE)])}
THEORY = ["--model", "pmoe", "-l", "2", "--experts", "4", "--data", "synthetic", "--samples", "40", "--n", "6",
          "--d", "12"]


def nap(seconds: float) -> dict:
    """A parallel item: says its process id, then sleeps (or fails at once for a negative time)."""
    if seconds < 0:
        raise ValueError("this item fails")
    print(os.getpid(), flush=True)
    time.sleep(seconds)
    return {}


def running(pid: int) -> bool:
    """Whether process `pid` exists and is no zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wait_until(condition, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_a_failed_item_stops_the_running_ones_at_once():
    start = time.monotonic()
    with pytest.raises(ValueError, match="this item fails"):
        parallel_map(nap, [-1, 120, 120], workers=2, progress=False)
    assert time.monotonic() - start < 60  # the sleeping items were ended, not waited for (120 s)


def test_sigterm_ends_a_sweep_with_one_line_and_no_worker_left(tmp_path):
    out = tmp_path / "sweep"
    args = ["experiment", "sample-complexity", "--data", "synthetic", "--samples", "400", "--epochs", "100000",
            "--models", "cnn", "pmoe", "--seeds", "1", "--workers", "2", "--quiet", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "pmoe.cli", *args], env=ENV, stderr=subprocess.PIPE, text=True)
    assert wait_until(lambda: len(children(proc.pid)) >= 3)  # two workers and multiprocessing's resource tracker
    time.sleep(3)  # the workers are training
    spawned = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert proc.stderr.read().strip() == "pmoe experiment: terminated"
    assert wait_until(lambda: not any(running(c) for c in spawned), 30)
    assert not out.exists() or list(out.iterdir()) == []  # no result


def test_sigterm_ends_a_training_run_and_removes_its_unfinished_output(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "pmoe.cli", "train", *THEORY, "--epochs", "100000", "--out",
                             str(tmp_path / "run")], env=ENV, stderr=subprocess.PIPE, text=True)
    assert wait_until(lambda: list(tmp_path.glob(".run.pmoe-tmp-*")) or proc.poll() is not None)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert proc.stderr.read().strip().splitlines()[-1] == "pmoe train: terminated"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig,status,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_while_the_commands_are_imported_is_one_line(monkeypatch, capsys, sig, status, word):
    def importing():  # the sub-commands' modules (torch) take a second or more to import
        os.kill(os.getpid(), sig)
        time.sleep(5)
    monkeypatch.setattr("pmoe.cli.build_parser", importing)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job inherits SIGINT ignored
    try:
        assert main(["train"]) == status
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err == f"pmoe: {word}\n"


def test_the_console_script_exits_with_the_commands_status(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pmoe", "eval", str(tmp_path / "missing")], env=ENV,
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("pmoe eval: error: checkpoint folder")
