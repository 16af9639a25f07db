"""Theory data from a user's .npz file (`--data file:PATH`, `DataSpec.from_file`, `save_patch_file`) and
`--classes`/`--grid` of the patch canvases: train, eval, route, finetune and prune from them; every bad file refused."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from test_data import fake_mnist, identify

from pmoe.checkpoints import load_checkpoint
from pmoe.cli import main
from pmoe.data import PatchDataset, PatchFileConfig, load_patch_file, make_dataset, save_patch_file
from pmoe.errors import PmoeError
from pmoe.runs import DataSpec, run
from pmoe.train import TrainConfig

N, N_TEST, n, d = 40, 30, 6, 12
TRAIN = ["--model", "pmoe", "-l", "2", "--epochs", "2", "--quiet"]


def synthetic() -> tuple[PatchDataset, PatchDataset]:
    return (make_dataset("synthetic", "train", N, 0, n=n, d=d), make_dataset("synthetic", "test", N_TEST, 0, n=n, d=d))


def arrays(ds: PatchDataset, suffix: str = "") -> dict[str, np.ndarray]:
    return {"x" + suffix: ds.x.numpy(), "y" + suffix: ds.y.numpy(), "disc_pos" + suffix: ds.disc_pos.numpy()}


def two_splits() -> dict[str, np.ndarray]:
    train, test = synthetic()
    return {**arrays(train, "_train"), **arrays(test, "_test")}


def images_of(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (count, 6, 8) float32, y, disc_pos) for the grid (2, 4): n = 8 patches of 3×2."""
    g = np.random.default_rng(seed)
    return (g.normal(size=(count, 6, 8)).astype(np.float32), np.where(np.arange(count) % 2 == 0, 1, -1),
            g.integers(0, 8, size=count))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def error_line(capsys, args: list[str]) -> str:
    """The one stderr line of a command that must fail with status 2."""
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    return lines[0]


def direct_accuracy(model: torch.nn.Module, ds: PatchDataset) -> float:
    with torch.no_grad():
        f = model(ds.x)
    return (torch.where(f > 0, 1.0, -1.0) == ds.y).float().mean().item()  # a logit of 0 predicts -1


def direct_hits(model: torch.nn.Module, ds: PatchDataset) -> list[float]:
    """Per expert: the share of samples whose disc_pos is among the l top router scores <w_s, x_j>."""
    with torch.no_grad():
        scores = torch.einsum("Njd,sd->Nsj", ds.x, model.moe.router.weight)  # (N, k, n)
    top = scores.topk(model.moe.l, dim=-1).indices  # (N, k, l)
    return (top == ds.disc_pos.view(-1, 1, 1)).any(-1).float().mean(0).tolist()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(a two-split patch file, a pmoe checkpoint trained on it through the CLI)."""
    root = tmp_path_factory.mktemp("file")
    train, test = synthetic()
    save_patch_file(root / "data.npz", train, test)
    digest = sha(root / "data.npz")
    assert main(["train", *TRAIN, "--data", f"file:{root / 'data.npz'}", "--out", str(root / "ck")]) == 0
    assert sha(root / "data.npz") == digest, "training must not write into its input"
    return root / "data.npz", root / "ck"


def test_save_and_load_round_trip_in_both_forms(tmp_path):
    train, test = synthetic()
    spec = DataSpec.from_file(save_patch_file(tmp_path / "a.npz", train, test))
    for made, ds in zip(spec.make(), (train, test)):
        assert torch.equal(made.x, ds.x) and torch.equal(made.y, ds.y) and torch.equal(made.disc_pos, ds.disc_pos)
    with pytest.raises(PmoeError, match="exists; pass overwrite=True"):
        save_patch_file(tmp_path / "a.npz", train)
    save_patch_file(tmp_path / "a.npz", test, overwrite=True)  # one split
    assert sorted(np.load(tmp_path / "a.npz")) == ["disc_pos", "x", "y"]
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"], "no temporary file left behind"
    # image patches (grid + 2-D patch_shape) are saved as images + grid, and cut back into the same patches
    canvases = PatchDataset(train.x[:, :4], train.y, train.disc_pos % 4, grid=(2, 2), patch_shape=(3, 4))
    save_patch_file(tmp_path / "c.npz", canvases, canvases)
    with np.load(tmp_path / "c.npz") as f:
        assert sorted(f) == ["disc_pos_test", "disc_pos_train", "grid", "images_test", "images_train", "y_test",
                             "y_train"] and f["images_train"].shape == (N, 6, 8)
    made = DataSpec.from_file(tmp_path / "c.npz").make()[0]
    assert torch.equal(made.x, canvases.x) and made.grid == (2, 2) and made.patch_shape == (3, 4)


def test_images_are_cut_row_major_by_the_grid(tmp_path):
    images, y, pos = images_of(10, 0)
    np.savez(tmp_path / "img.npz", images=images, grid=np.array([2, 4]), y=y, disc_pos=pos)
    np.savez(tmp_path / "u8.npz", images=(np.arange(10 * 48) % 256).astype(np.uint8).reshape(10, 6, 8),
             grid=np.array([2, 4]), y=y)
    train, test = DataSpec.from_file(tmp_path / "img.npz", tmp_path / "u8.npz").make()
    assert train.x.shape == (10, 8, 6) and train.grid == (2, 4) and train.patch_shape == (3, 2)
    for i in range(10):
        for j in range(8):
            r, c = divmod(j, 4)
            np.testing.assert_array_equal(train.x[i, j].numpy(), images[i, 3 * r:3 * r + 3, 2 * c:2 * c + 2].ravel())
    assert test.disc_pos is None and test.x.max() <= 1 and test.x[0, 0, 1].item() == pytest.approx(1 / 255)
    np.testing.assert_array_equal(train.y.numpy(), y)


def test_train_eval_route_on_a_file_agree_with_a_direct_computation(trained, capsys):
    path, ck = trained
    cfg = json.loads((ck / "config.json").read_text())
    assert cfg["data"]["name"] == "file" and cfg["data"]["options"] == {"path": str(path.resolve()),
                                                                        "sha256": sha(path)}
    assert cfg["result"]["samples"] == N
    model, _ = load_checkpoint(ck)
    train, test = synthetic()
    assert main(["eval", str(ck), "--json"]) == 0
    r = last_json(capsys)
    assert r["test_accuracy"] == pytest.approx(direct_accuracy(model, test))
    assert r["train_accuracy"] == pytest.approx(direct_accuracy(model, train))
    assert main(["route", str(ck), "--json"]) == 0
    assert last_json(capsys)["per_expert"] == pytest.approx(direct_hits(model, test))


def test_finetune_and_prune_rebuild_the_file_data(trained, tmp_path, capsys):
    path, ck = trained
    ft, pruned = tmp_path / "ft", tmp_path / "pruned"
    assert main(["finetune", str(ck), "--data", f"file:{path}", "--samples", "20", "--epochs", "1", "--out", str(ft),
                 "--quiet"]) == 0
    assert json.loads((ft / "config.json").read_text())["data"]["samples"] == 20
    assert main(["prune", str(ft), "--pretrained", str(ck), "--keep", "4", "--out", str(pruned), "--json"]) == 0
    r = last_json(capsys)
    model, _ = load_checkpoint(pruned)
    assert r["test_accuracy_after"] == pytest.approx(direct_accuracy(model, synthetic()[1]))


def test_separate_test_file_without_disc_pos_trains_and_evaluates_but_cannot_route(tmp_path, capsys):
    images, y, pos = images_of(24, 0)
    test_images, test_y, _ = images_of(16, 1)
    np.savez(tmp_path / "train.npz", images=images, grid=np.array([2, 4]), y=y, disc_pos=pos)
    np.savez(tmp_path / "test.npz", images=test_images, grid=np.array([2, 4]), y=test_y.astype(np.float64))
    ck = tmp_path / "ck"
    assert main(["train", *TRAIN, "--data", f"file:{tmp_path / 'train.npz'}", "--test-data",
                 f"file:{tmp_path / 'test.npz'}", "--out", str(ck), "--json"]) == 0
    assert "routing" not in last_json(capsys)
    options = json.loads((ck / "config.json").read_text())["data"]["options"]
    assert options["test_path"] == str((tmp_path / "test.npz").resolve())
    assert options["test_sha256"] == sha(tmp_path / "test.npz")
    assert main(["eval", str(ck), "--json"]) == 0
    model, _ = load_checkpoint(ck)
    _, test = DataSpec.from_file(tmp_path / "train.npz", tmp_path / "test.npz").make()
    assert last_json(capsys)["test_accuracy"] == pytest.approx(direct_accuracy(model, test))
    assert "test.npz (x|images) does not record" in error_line(capsys, ["route", str(ck)])


def test_samples_take_a_seeded_balanced_subset(tmp_path):
    train, _ = synthetic()
    y = torch.where(torch.arange(N) < 30, 1.0, -1.0)  # 30 of +1, 10 of -1
    save_patch_file(tmp_path / "a.npz", PatchDataset(train.x, y, train.disc_pos))
    cfg = PatchFileConfig(**DataSpec.from_file(tmp_path / "a.npz", tmp_path / "a.npz").options)

    def rows(count: int, seed: int) -> list[int]:
        """The file rows of the subset, in its order."""
        ds = load_patch_file(cfg, "train", count, seed)
        return [int(torch.nonzero((train.x == ds.x[i]).all(-1).all(-1))) for i in range(len(ds))]

    assert [int((y[rows(20, s)] > 0).sum()) for s in (0, 1)] == [10, 10]
    assert int((y[rows(36, 0)] > 0).sum()) == 26, "all 10 of -1, the rest of +1"
    first = rows(20, 0)
    assert first == sorted(first) == rows(20, 0) and first != rows(20, 1)
    assert rows(N, 3) == list(range(N))


def test_changed_or_moved_file_is_refused(tmp_path, capsys):
    save_patch_file(tmp_path / "data.npz", *synthetic())
    ck = tmp_path / "ck"
    assert main(["train", *TRAIN, "--model", "cnn", "--data", f"file:{tmp_path / 'data.npz'}", "--out", str(ck)]) == 0
    old = sha(tmp_path / "data.npz")
    train, test = synthetic()
    save_patch_file(tmp_path / "data.npz", train.subset(torch.arange(N - 1)), test, overwrite=True)
    line = error_line(capsys, ["eval", str(ck)])
    assert "has changed" in line and old in line and sha(tmp_path / "data.npz") in line
    (tmp_path / "data.npz").rename(tmp_path / "moved.npz")
    line = error_line(capsys, ["route", str(ck)])
    assert "does not exist" in line and old in line and "moved" in line


def test_python_api_run_records_the_file_for_the_cli(tmp_path, capsys):
    save_patch_file(tmp_path / "mine.npz", *synthetic())
    result = run("pmoe", DataSpec.from_file(tmp_path / "mine.npz"), TrainConfig(epochs=1), {"l": 2},
                 tmp_path / "ck", progress=False)
    assert main(["eval", str(tmp_path / "ck"), "--json"]) == 0
    assert last_json(capsys)["test_accuracy"] == result["test_accuracy"]
    with pytest.raises(PmoeError, match="DataSpec.from_file"):
        DataSpec("file", options={"path": str(tmp_path / "mine.npz")}).make()


def test_classes_and_grid_of_the_patch_canvases(tmp_path, capsys):
    folder = fake_mnist(tmp_path / "idx")
    ck = tmp_path / "ck"
    assert main(["train", *TRAIN, "--model", "cnn", "--data", "fashion-patches", "--data-dir", str(folder),
                 "--classes", "7", "5", "--grid", "3", "--samples", "40", "--test-samples", "20", "--out",
                 str(ck)]) == 0
    cfg = json.loads((ck / "config.json").read_text())
    assert cfg["data"]["options"] == {"classes": [7, 5], "grid": 3, "data_dir": str(folder)}
    for ds in DataSpec(**cfg["data"]).make():
        cls, _ = identify(ds.x)  # (N, 9) class of every patch
        rows = np.arange(len(ds))
        np.testing.assert_array_equal(cls[rows, ds.disc_pos.numpy()], np.where(ds.y.numpy() > 0, 7, 5))
        assert (np.isin(cls, [5, 7]).sum(1) == 1).all() and ds.n == 9
    assert "class 42 has no image" in error_line(capsys, ["train", *TRAIN, "--data", "fashion-patches", "--data-dir",
                                                          str(folder), "--classes", "7", "42", "--out",
                                                          str(tmp_path / "x")])


def _drop(key: str) -> Callable[[dict], None]:
    return lambda a: a.pop(key)


def _set(key: str, value: Callable[[dict], np.ndarray]) -> Callable[[dict], None]:
    return lambda a: a.update({key: value(a)})


def _images(a: dict) -> None:
    for split in ("train", "test"):
        a.pop(f"x_{split}"), a.pop(f"disc_pos_{split}")
        a[f"images_{split}"] = images_of(len(a[f"y_{split}"]), 0)[0]
    a["grid"] = np.array([2, 4])


def _one_split(a: dict) -> None:
    for k in [k for k in a if k.endswith("_test")]:
        a.pop(k)
    for k in [k for k in a if k.endswith("_train")]:
        a[k[:-len("_train")]] = a.pop(k)


def _no_test(a: dict) -> None:
    for k in [k for k in a if k.endswith("_test")]:
        a.pop(k)


def _images_grid(grid: list[int] | None) -> Callable[[dict], None]:
    def change(a: dict) -> None:
        _images(a)
        if grid is None:
            a.pop("grid")
        else:
            a["grid"] = np.array(grid)
    return change


def _nan(a: dict) -> None:
    a["x_train"] = a["x_train"].copy()
    a["x_train"][3, 0, 0] = np.nan


def _inf(a: dict) -> None:
    _images(a)
    a["images_test"][2, 1, 1] = np.inf


BAD = {  # case: (change to the good two-split arrays, extra flags, expected part of the error)
    "not npz": (None, [], "is not a numpy .npz archive"),
    "npy": (None, [], "is a single .npy array"),
    "missing": (None, [], "does not exist"),
    "pickle": (_set("y_train", lambda a: np.array([{"y": 1}] * N, dtype=object)), [], "'y_train' cannot be read"),
    "unknown key": (_set("labels_train", lambda a: a["y_train"]), [], "unexpected array(s) ['labels_train']"),
    "no y": (_drop("y_train"), [], "has no y_train"),
    "x and images": (_set("images_train", lambda a: a["x_train"]), [], "exactly one of x_train"),
    "x 2-D": (_set("x_train", lambda a: a["x_train"][:, 0]), [], "x_train must have shape (N, n, d)"),
    "x int": (_set("x_train", lambda a: a["x_train"].astype(np.int64)), [], "x_train must be a float array"),
    "nan": (_nan, [], "x_train must be finite (as float32), sample(s) [3]"),
    "inf": (_inf, [], "images_test must be finite (as float32), sample(s) [2]"),
    "labels 0/1": (_set("y_train", lambda a: (a["y_train"] > 0).astype(np.int64)), [], "save 2*y - 1"),
    "labels 2": (_set("y_train", lambda a: a["y_train"] * 2), [], "y_train must hold only +1 and -1"),
    "y length": (_set("y_train", lambda a: a["y_train"][1:]), [], f"y_train must be an int or float array ({N},)"),
    "disc_pos range": (_set("disc_pos_train", lambda a: a["disc_pos_train"] + n), [],
                       f"disc_pos_train must lie in [0, {n})"),
    "disc_pos float": (_set("disc_pos_train", lambda a: a["disc_pos_train"] * 1.0), [],
                       "disc_pos_train must be an int array"),
    "d differs": (_set("x_test", lambda a: a["x_test"][:, :, :-1]), [], f"n={n} patches of d={d - 1}"),
    "no grid": (_images_grid(None), [], "images_train needs a grid"),
    "grid with x": (_set("grid", lambda a: np.array([2, 3])), [], "grid applies to images_train only"),
    "grid bad": (_images_grid([0, 4]), [], "grid must be two ints >= 1"),
    "grid no tiling": (_images_grid([4, 4]), [], "grid (4, 4) does not tile"),
    "one split": (_one_split, [], "holds one split"),
    "mixed": (_set("y", lambda a: a["y_train"]), [], "mixes unsuffixed arrays"),
    "no test split": (_no_test, [], "has no test split"),
    "too many": (None, ["--samples", "500"], f"holds {N} train samples (y_train); asked for 500"),
    "synthetic flag": (None, ["--n", "4"], "--n applies to --data synthetic only"),
    "canvas flag": (None, ["--classes", "7", "5"], "--classes applies to --data fashion-patches only"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_files_and_flags_are_one_clear_error(tmp_path, capsys, case):
    change, flags, message = BAD[case]
    path = tmp_path / "bad.npz"
    a = two_splits()
    if case == "not npz":
        path.write_text("x,y\n1,2\n")
    elif case == "npy":
        with path.open("wb") as f:
            np.save(f, a["x_train"])
    elif case != "missing":
        if change is not None:
            change(a)
        np.savez(path, **a)
    line = error_line(capsys, ["train", *TRAIN, "--data", f"file:{path}", *flags, "--out", str(tmp_path / "o")])
    assert message in line and (case in ("synthetic flag", "canvas flag") or str(path) in line), line
    assert not (tmp_path / "o").exists()


def test_file_flags_outside_file_data_are_refused(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    assert "--test-data applies to --data file:PATH only" in error_line(
        capsys, ["train", *TRAIN, "--data", "synthetic", "--test-data", "file:t.npz", *out])
    assert "takes an image data set" in error_line(capsys, ["train", "--model", "wrn-tiny", "--data", "file:a.npz",
                                                            *out])
