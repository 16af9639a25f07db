"""A user's first run: every preset with its default recipe on a CIFAR-10-format folder, beside its dense twin.

Writes Fashion-MNIST (from its IDX folder) as the python-pickle batches of the official CIFAR-10 archive
(`cifar-10-batches-py/`: 28x28 images zero-padded to 32x32, grey in all 3 channels; a balanced subset), then runs
`pmoe train --model PRESET --data cifar10 --data-dir DIR --epochs E --seed S` with no other flag for every preset and
seed, in parallel (`--data-dir`: your own CIFAR-10-format folder instead), and tabulates test accuracy, eval-mode accuracy on the training set and the last epoch's running
train-mode accuracy (the two agree when eval mode computes what training did).

    python examples/first_run.py --out reports/first-run [--presets wrn-tiny wrn-pmoe-tiny ...] [--epochs 2]
"""
from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pmoe.data import DEFAULT_DATA_DIR, load_idx_dataset

PRESETS = ["wrn-tiny", "wrn-pmoe-tiny", "vit-tiny", "vit-moe-tiny", "e3-tiny"]
CLASSES = [b"t-shirt", b"trouser", b"pullover", b"dress", b"coat", b"sandal", b"shirt", b"sneaker", b"bag", b"boot"]


def write_cifar10(idx_dir: str, out: Path, train: int, test: int, seed: int = 0) -> Path:
    """`out`/cifar-10-batches-py with `train` / `test` balanced Fashion-MNIST images as 32x32x3 CIFAR rows."""
    folder = out / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=False)
    rng = np.random.default_rng(seed)
    for split, count, files in (("train", train, [f"data_batch_{i}" for i in range(1, 6)]),
                                ("test", test, ["test_batch"])):
        images, labels = load_idx_dataset(idx_dir, split)  # (M, 28, 28), (M,)
        pick = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:count // 10] for c in range(10)])
        pick = rng.permutation(pick)
        rows = np.pad(images[pick], ((0, 0), (2, 2), (2, 2)))[:, None].repeat(3, axis=1).reshape(len(pick), -1)
        for part, name in zip(np.array_split(np.arange(len(pick)), len(files)), files):
            with open(folder / name, "wb") as f:
                pickle.dump({b"data": rows[part], b"labels": labels[pick][part].tolist()}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": CLASSES}, f, protocol=2)
    return out


def train(spec: str, seed: int, data: Path, epochs: int, out: Path) -> dict:
    """`pmoe train` of `spec` (a preset, or PRESET:KEY=VALUE,... for --model-opt) with its default recipe."""
    preset, _, opts = spec.partition(":")
    run_dir = out / "runs" / f"{spec.replace(':', '-').replace(',', '-').replace('=', '')}-seed{seed}"
    cmd = [sys.executable, "-m", "pmoe.cli", "train", "--model", preset, "--data", "cifar10", "--data-dir", str(data),
           "--epochs", str(epochs), "--seed", str(seed), "--out", str(run_dir), "--json", "--quiet"]
    cmd += [a for o in filter(None, opts.split(",")) for a in ("--model-opt", o)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: {' '.join(cmd)} failed: {done.stderr.strip().splitlines()[-1]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return {"preset": spec, "seed": seed, "test_accuracy": result["test_accuracy"],
            "eval_mode_train_accuracy": result["train_accuracy"], "train_mode_accuracy": last["train_accuracy"],
            "seconds": result["seconds"], "device": result["device"], "cmd": " ".join(cmd[2:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--presets", nargs="+", default=PRESETS)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--idx-dir", default=DEFAULT_DATA_DIR, help="Fashion-MNIST IDX folder to write the CIFAR folder from")
    p.add_argument("--data-dir", type=Path, help="an existing CIFAR-10 folder (parent of cifar-10-batches-py) instead")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"error: --out {args.out} is not empty")
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data_dir or write_cifar10(args.idx_dir, args.out / "data", args.train, args.test)
    jobs = [(pr, s) for pr in args.presets for s in range(args.seeds)]
    with ThreadPoolExecutor(args.workers) as pool:
        rows = list(pool.map(lambda j: train(*j, data, args.epochs, args.out), jobs))
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| preset | seed | test acc | eval-mode acc on train | train-mode acc (last epoch) | s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['seed']} | {r['test_accuracy']:.3f} | {r['eval_mode_train_accuracy']:.3f} | "
              f"{r['train_mode_accuracy']:.3f} | {r['seconds']:.0f} |" for r in rows]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
