"""pmoe.train.distributed on gloo (CPU), or on NCCL with one GPU a rank (PMOE_TEST_DEVICE=cuda), against references
computed in one process.

One spawn of 4 ranks per module (`ranks`; on CUDA one a GPU, up to 4) runs every in-process check and records each
one's outcome per rank: expert-parallel forward and backward of each routed layer at dp×ep = 1×2, 2×2 and 1×4 (those
that the ranks hold) against the layer on the whole batch; short `fit` runs (FSDP2 + EP, E³ and WRN-pMoE with EP)
against one process; wrong sizes. Three torchrun launches of `pmoe train` (2 processes, `-m pmoe`) give a run, a run
killed after its first epoch and its resumption.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import traceback
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.distributed.device_mesh import init_device_mesh
from torch.testing import assert_close

from pmoe.checkpoints import load_checkpoint
from pmoe.cli import main
from pmoe.data.vision import ImageDataset
from pmoe.train.distributed.expert_parallel import expert_params, shard_experts
from pmoe.train.distributed.grads import reduce_expert_grads
from pmoe.train.distributed.mesh import Parallel
from pmoe.errors import PmoeError
from pmoe.layers import ConvExperts, EnsembleTokenMoE, MlpExperts, PatchMoE, RoutedLayer, TokenMoE
from pmoe.models import MoEModel
from pmoe.prune.surgery import prune_layer
from pmoe.runs.images import ImageDataSpec, build_for_data
from pmoe.train import FitConfig, OptimConfig, evaluate_images, fit

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICE = torch.device(os.environ.get("PMOE_TEST_DEVICE", "cpu"))  # as conftest's `device` fixture
CUDA = DEVICE.type == "cuda"
if CUDA and torch.cuda.device_count() < 2:
    pytest.skip("the distributed tests on CUDA need 2 GPUs or more (NCCL: one GPU a rank)", allow_module_level=True)
WORLD, TOKENS = min(4, torch.cuda.device_count()) if CUDA else 4, 5
# dp × ep of the layer checks that the ranks hold (on 4 ranks: 2 runs side by side at 1×2)
MESHES = tuple(m for m in ((1, 2), (2, 2), (1, 4)) if m[0] * m[1] <= WORLD)
# torchrun runs against one process: on CUDA their convolutions run in TF32 (cuDNN's default), so less close
TORCHRUN_TOL = dict(rtol=1e-3, atol=1e-4) if CUDA else dict(rtol=1e-4, atol=1e-5)
if CUDA:  # the in-process references of this module are float32 through and through
    torch.backends.cudnn.allow_tf32 = False


def pruned(layer: RoutedLayer, kept: list[int]) -> RoutedLayer:
    prune_layer(layer, kept, "zero")
    return layer


LAYERS: dict[str, Callable[[], RoutedLayer]] = {
    "patch": lambda: PatchMoE(MlpExperts(8, 6, 10), l=2),
    "patch-dense": lambda: PatchMoE(MlpExperts(8, 6, 10), l=2, dispatch="dense"),
    "token": lambda: TokenMoE(MlpExperts(8, 6, 10), num_selected=2, noise_std=0.0),
    "e3": lambda: EnsembleTokenMoE(MlpExperts(8, 6, 10), ensemble_size=2, noise_std=0.0),
    # routing groups of 2 images: a rank's 2 samples form a group, as in the whole batch
    "token-groups": lambda: TokenMoE(MlpExperts(8, 6, 10), num_selected=2, noise_std=0.0, capacity_factor=0.5,
                                     group_images=2),
    "e3-groups": lambda: EnsembleTokenMoE(MlpExperts(8, 6, 10), ensemble_size=2, noise_std=0.0, capacity_factor=0.5,
                                          group_images=2),
    "patch-pruned": lambda: pruned(PatchMoE(MlpExperts(8, 6, 10), l=2), [0, 2, 5, 7]),
    "token-pruned": lambda: pruned(TokenMoE(MlpExperts(8, 6, 10), num_selected=2, noise_std=0.0), [1, 2, 4, 6]),
    "wrn-conv": lambda: PatchMoE(ConvExperts(4, 2, 3, (2, 2), preact=True), l=2, combine="concat"),
}
# (layer, dp, ep); expert BN takes its batch statistics over the EP group, so WRN's conv experts only at dp = 1
CASES = [(name, dp, ep) for dp, ep in MESHES for name in LAYERS if not (name == "wrn-conv" and dp > 1)]


class Holder(MoEModel):
    """A model of one routed layer (what `shard_experts` takes: the `moe_layers` contract)."""

    def __init__(self, layer: RoutedLayer) -> None:
        super().__init__()
        self.layer = layer


def images(n: int, classes: int = 4, side: int = 16, seed: int = 0) -> ImageDataset:
    """Random 1-channel images, labels cycling through the classes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, side, side), generator=g, dtype=torch.uint8)
    return ImageDataset(x, torch.arange(n) % classes, [str(c) for c in range(classes)], (0.5,), (0.25,))


# ---- in the 4 spawned ranks ----------------------------------------------------------------------------------------

def ep_matches_whole_batch(make: Callable[[], RoutedLayer], par: Parallel) -> None:
    """The layer's output rows, router and expert gradients of this rank under EP == the whole batch's in one layer."""
    torch.manual_seed(0)
    whole = make().to(par.device).train()
    mine = Holder(copy.deepcopy(whole))
    rows = 2 * whole.groups  # 2 samples per rank (E³: their M copies)
    x = torch.randn(par.world * rows, TOKENS, whole.in_features).to(par.device)
    y = whole(x).output
    probe = torch.randn(y.shape).to(par.device)
    ((y * probe).sum() / par.world).backward()  # the run's loss: the mean of the ranks' losses

    shard_experts(mine, par.group("ep"))
    own = slice(par.rank * rows, (par.rank + 1) * rows)
    y_mine = mine.layer(x[own]).output
    (y_mine * probe[own]).sum().backward()
    reduce_expert_grads(expert_params(mine, par.ep), par)
    router = mine.layer.router.weight.grad
    for dim in ("dp", "ep"):  # what DDP does: the mean over the run
        dist.all_reduce(router, group=par.group(dim))
    assert_close(y_mine, y[own], rtol=1e-5, atol=1e-6)
    assert_close(router / par.world, whole.router.weight.grad, rtol=1e-4, atol=1e-6)
    e = par.mesh.get_coordinate()[1]
    for (name, p), ref in zip(mine.layer.experts.named_parameters(), whole.experts.parameters()):
        assert_close(p.grad, ref.grad.chunk(par.ep)[e], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def fit_run(tmp: Path, name: str, preset: str, cfg: FitConfig, overrides: dict, **kwargs: object) -> None:
    """`fit` of `preset` on 64 random images; rank 0 saves the trained model's state and the history."""
    torch.manual_seed(0)
    model = build_for_data(preset, images(64), overrides)
    history = fit(model, images(64), images(30, seed=1), cfg, progress=False, **kwargs)
    if dist.get_rank() == 0:
        torch.save({"model": model.state_dict(), "history": history}, tmp / f"{name}.pt")


RUN = FitConfig(epochs=1, batch_size=16, device=DEVICE.type, augment=False, bf16=False,
                optim=OptimConfig("adamw", lr=1e-3, weight_decay=0.05, clip_norm=1.0))
FITS = {  # name: (preset, config, model overrides)
    "fsdp-ep": ("vit-moe-tiny", replace(RUN, expert_parallel=2, fsdp=True), {"router": "patch"}),
    "e3-ep": ("e3-tiny", replace(RUN, expert_parallel=2), {}),
    "wrn-ep": ("wrn-pmoe-tiny", replace(RUN, expert_parallel=WORLD, optim=OptimConfig("sgd", lr=0.05)), {}),
}
TWO_EPOCHS = replace(RUN, epochs=2)
ERRORS = {  # name: (preset, config, overrides), each refused on every rank before training
    "ep-not-dividing-world": ("vit-moe-tiny", replace(RUN, expert_parallel=3), {}),
    "ep-not-dividing-experts": ("vit-moe-tiny", replace(RUN, expert_parallel=WORLD), {"experts": WORLD + 1}),
    "batch-not-dividing": ("vit-moe-tiny", replace(RUN, batch_size=4 * WORLD + 1), {}),
}


def checks(tmp: Path) -> dict[str, Callable[[], object]]:
    out = {}
    for dp, ep in MESHES:
        mesh = init_device_mesh(DEVICE.type, (WORLD // (dp * ep), dp, ep), mesh_dim_names=("rep", "dp", "ep"))
        par = Parallel(mesh["dp", "ep"], rank_device(dist.get_rank()))
        for name in [c[0] for c in CASES if c[1:] == (dp, ep)]:
            out[f"{name}@{dp}x{ep}"] = lambda make=LAYERS[name], par=par: ep_matches_whole_batch(make, par)
        out[f"pruned-3-of-8@{dp}x{ep}"] = lambda par=par: shard_experts(
            Holder(pruned(PatchMoE(MlpExperts(8, 6, 10), l=2), [0, 1, 2])), par.group("ep"))
    out.update({name: lambda n=name, a=args: fit_run(tmp, n, *a) for name, args in {**FITS, **ERRORS}.items()})
    out["resume-one-process"] = lambda: fit_run(tmp, "resume-one-process", "vit-moe-tiny",
                                                replace(TWO_EPOCHS, expert_parallel=2, fsdp=True), {"router": "patch"},
                                                out_dir=tmp / "one-process", resume=True)
    return out


def rank_device(rank: int) -> torch.device:
    """This rank's device: its own GPU on CUDA (NCCL takes one a rank), else the CPU."""
    return torch.device("cuda", rank) if CUDA else DEVICE


def worker(rank: int, tmp: Path) -> None:
    torch.set_num_threads(1)
    if CUDA:  # what torchrun gives a rank
        os.environ["LOCAL_RANK"] = str(rank)
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if CUDA else "gloo", init_method=f"file://{tmp}/store", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=120),
                            device_id=rank_device(rank) if CUDA else None)
    results = {}
    for name, check in checks(tmp).items():
        try:
            check()
            results[name] = None
        except Exception as e:  # noqa: BLE001 (recorded for the test that owns the check)
            results[name] = f"{type(e).__name__}: {e}" if isinstance(e, PmoeError) else traceback.format_exc()
    (tmp / f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


# ---- in pytest -----------------------------------------------------------------------------------------------------

class Killed(Exception):
    pass


def kill(record: dict) -> None:
    raise Killed


def one_process_run(**kwargs: object) -> torch.nn.Module:
    """vit-moe-tiny (patch router) trained 2 epochs in this process."""
    torch.manual_seed(0)
    model = build_for_data("vit-moe-tiny", images(64), {"router": "patch"})
    fit(model, images(64), images(30, seed=1), TWO_EPOCHS, progress=False, **kwargs)
    return model


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    """(folder, each rank's {check: None or its error}) of one spawn of 4 ranks running every check; one-process/ is
    a run of this process killed after its first epoch, for the ranks to resume."""
    tmp = tmp_path_factory.mktemp("ranks")
    with pytest.raises(Killed):
        one_process_run(out_dir=tmp / "one-process", on_epoch=kill)
    mp.start_processes(worker, args=(tmp,), nprocs=WORLD, start_method="spawn")
    return tmp, [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.parametrize("layer,dp,ep", CASES)
def test_expert_parallel_forward_and_backward_equal_the_whole_batch(ranks, layer, dp, ep):
    assert [r[f"{layer}@{dp}x{ep}"] for r in ranks[1]] == [None] * WORLD


@pytest.mark.parametrize("dp,ep", MESHES)
def test_expert_counts_that_ep_does_not_divide_are_refused(ranks, dp, ep):
    errors = [r[f"pruned-3-of-8@{dp}x{ep}"] for r in ranks[1]]
    assert all("MoE layer 0 has 3 experts kept (of 8) by zero-mode pruning" in e and f"--expert-parallel {ep} must "
               "divide" in e for e in errors), errors


@pytest.mark.parametrize("name,words", [
    ("ep-not-dividing-world", f"--expert-parallel 3 must divide the number of processes, {WORLD}"),
    ("ep-not-dividing-experts", f"MoE layer 0 has {WORLD + 1} experts; --expert-parallel {WORLD} must divide"),
    ("batch-not-dividing", f"the batch size {4 * WORLD + 1} must be a multiple of the {WORLD} processes"),
])
def test_wrong_sizes_are_refused_on_every_rank(ranks, name, words):
    errors = [r[name] for r in ranks[1]]
    assert all(e is not None and e.startswith("PmoeError") and words in e for e in errors), errors


def one_process(name: str) -> tuple[torch.nn.Module, list[dict]]:
    preset, cfg, overrides = FITS[name]
    torch.manual_seed(0)
    model = build_for_data(preset, images(64), overrides)
    return model, fit(model, images(64), images(30, seed=1), replace(cfg, expert_parallel=1, fsdp=False),
                      progress=False)


def test_fsdp_with_expert_parallelism_trains_the_weights_of_one_process(ranks):
    assert [r["fsdp-ep"] for r in ranks[1]] == [None] * WORLD
    saved = torch.load(ranks[0] / "fsdp-ep.pt")
    model, history = one_process("fsdp-ep")
    assert_close(saved["model"], model.state_dict(), rtol=1e-4, atol=1e-5)
    for key in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy"):
        assert saved["history"][-1][key] == pytest.approx(history[-1][key], rel=1e-4)


@pytest.mark.parametrize("name", ["e3-ep", "wrn-ep"])
def test_a_model_trained_with_ep_evaluates_in_one_process_as_the_ranks_did(ranks, name):
    """E³ (routing noise, per-rank streams) and WRN-pMoE (BN inside the experts, averaged over the ranks)."""
    assert [r[name] for r in ranks[1]] == [None] * WORLD
    saved = torch.load(ranks[0] / f"{name}.pt")
    preset, _, overrides = FITS[name]
    model = build_for_data(preset, images(64), overrides)
    model.load_state_dict(saved["model"])
    ev = evaluate_images(model.to(DEVICE), images(30, seed=1))
    assert ev["accuracy"] == saved["history"][-1]["eval_accuracy"]
    assert ev["loss"] == pytest.approx(saved["history"][-1]["eval_loss"], rel=1e-5)


def test_a_run_of_one_process_resumes_on_four_ranks_with_fsdp_and_ep(ranks):
    assert [r["resume-one-process"] for r in ranks[1]] == [None] * WORLD
    saved = torch.load(ranks[0] / "resume-one-process.pt")
    assert_close(saved["model"], one_process_run().state_dict(), rtol=1e-4, atol=1e-5)


def test_one_process_refuses_expert_parallelism_and_fsdp():
    for cfg, words in [(replace(RUN, expert_parallel=2), "--expert-parallel 2 must divide the number of processes, 1"),
                       (replace(RUN, fsdp=True), "--fsdp shards the dense weights over the processes of torchrun")]:
        with pytest.raises(PmoeError, match=words):
            fit(build_for_data("vit-moe-tiny", images(64)), images(64), None, cfg, progress=False)


@pytest.mark.parametrize("world,flags,words", [
    ("1", ["--expert-parallel", "2"], "--expert-parallel 2 must divide the number of processes, 1"),
    ("4", ["--expert-parallel", "3"], "--expert-parallel 3 must divide the number of processes, 4"),
    ("1", ["--fsdp"], "--fsdp shards the dense weights over the processes of torchrun, but this is one process"),
    ("2", ["--overwrite"], "--overwrite under torchrun: every process would stage its own copy of --out"),
    ("2", ["--compile"], "--compile trains in one process only: torchrun runs are not compiled"),
])
def test_the_cli_refuses_a_wrong_layout_before_reading_data(tmp_path, monkeypatch, capsys, world, flags, words):
    monkeypatch.setenv("WORLD_SIZE", world)  # as torchrun sets it; the process group is joined later, in fit
    assert main([*TRAIN, "--data-dir", str(tmp_path / "nothing-here"), *flags, "--out", str(tmp_path / "o")]) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "o").exists()


# ---- torchrun -m pmoe train ----------------------------------------------------------------------------------------

TRAIN = ["train", "--model", "vit-moe-tiny", "--model-opt", "router=patch", "--data", "fashion-mnist",
         "--samples", "64", "--test-samples", "30", "--batch-size", "16", "--epochs", "2", "--device", DEVICE.type,
         "--no-bf16", "--quiet"]
KILL_AFTER_EPOCH_1 = """
import os, signal, sys
import pmoe.runs.images as images
from pmoe.cli import main
fit = images.fit
images.fit = lambda *a, **kw: fit(*a, **kw, on_epoch=lambda rec: os.kill(os.getpid(), signal.SIGKILL))
sys.exit(main(sys.argv[1:]))
"""


def torchrun(*args: str) -> subprocess.CompletedProcess:
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """whole/: a 2-process EP run; killed/: the same run killed after its first epoch (SIGKILL on both ranks);
    resumed/: killed/ resumed on 2 processes."""
    tmp = tmp_path_factory.mktemp("runs")
    done = torchrun("-m", "pmoe", *TRAIN, "--expert-parallel", "2", "--out", str(tmp / "whole"))
    assert done.returncode == 0, done.stderr[-3000:]
    (tmp / "kill.py").write_text(KILL_AFTER_EPOCH_1)
    killed = torchrun(str(tmp / "kill.py"), *TRAIN, "--expert-parallel", "2", "--out", str(tmp / "killed"))
    assert killed.returncode != 0 and (tmp / "killed" / "train_state").is_dir(), killed.stderr[-3000:]
    shutil.copytree(tmp / "killed", tmp / "resumed")
    resumed = torchrun("-m", "pmoe", *TRAIN, "--expert-parallel", "2", "--out", str(tmp / "resumed"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return tmp


def test_torchrun_training_ends_with_the_weights_of_one_process(runs, tmp_path):
    assert main([*TRAIN, "--out", str(tmp_path / "one")]) == 0
    assert_close(load_file(runs / "whole" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors"),
                 **TORCHRUN_TOL)


def test_a_two_rank_checkpoint_evaluates_in_one_process_as_the_ranks_did(runs):
    model, cfg = load_checkpoint(runs / "whole")
    last = json.loads((runs / "whole" / "metrics.jsonl").read_text().splitlines()[-1])
    ev = evaluate_images(model.to(DEVICE), ImageDataSpec(**cfg["data"]).make("test"))
    assert ev["accuracy"] == last["eval_accuracy"] and ev["loss"] == pytest.approx(last["eval_loss"], rel=1e-5)
    assert cfg["result"]["test_accuracy"] == last["eval_accuracy"]


def test_a_killed_run_resumes_bit_for_bit_on_the_same_world_size(runs):
    """Bit for bit on CPU; on CUDA two runs differ in the last bits anyway (atomic float sums add in any order)."""
    whole, resumed = load_file(runs / "whole" / "model.safetensors"), load_file(runs / "resumed" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    drop = lambda rec: {k: v for k, v in rec.items() if k not in ("seconds", "images_per_second")}  # noqa: E731
    lines = [[drop(json.loads(r)) for r in (runs / d / "metrics.jsonl").read_text().splitlines()]
             for d in ("whole", "resumed")]
    assert len(lines[0]) == len(lines[1]) == 2
    if CUDA:
        assert_close(resumed, whole, **TORCHRUN_TOL)
        assert all(a == pytest.approx(b, rel=1e-4) for a, b in zip(*lines))
    else:
        assert all(torch.equal(whole[k], resumed[k]) for k in whole) and lines[0] == lines[1]


def test_a_killed_run_resumes_in_one_process(runs, tmp_path):
    shutil.copytree(runs / "killed", tmp_path / "one")
    assert main([*TRAIN, "--out", str(tmp_path / "one"), "--resume"]) == 0
    assert_close(load_file(runs / "whole" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors"),
                 **TORCHRUN_TOL)
